"""What `reenrich export` takes from the stored near-duplicate clusters.

`--dedup` keeps each cluster's representative and every conversation in no
cluster; splits put a cluster on one side whenever clusters exist. Clusters
are those of the last `reenrich dedup` run: conversations added since then
are in none (the report counts them, so a stale dedup is visible).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Connection

log = structlog.get_logger("reenrich.export")

NEAR_DUPLICATE = "near_duplicate"  # the removal reason of `export --dedup`


@dataclass
class ExportClusters:
    cluster_of: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    representatives: set[uuid.UUID] = field(default_factory=set)
    last_run: dict[str, Any] | None = None
    unsigned: int = 0

    @classmethod
    def load(cls, conn: Connection) -> ExportClusters:
        from worker.db import dedup as db

        found = cls()
        for cid, (cluster, is_rep) in db.membership(conn).items():
            found.cluster_of[cid] = cluster
            if is_rep:
                found.representatives.add(cid)
        found.last_run = db.last_run(conn)
        found.unsigned = db.unsigned_conversations(conn) if found.last_run else 0
        return found

    def is_duplicate(self, conversation_id: uuid.UUID) -> bool:
        return (conversation_id in self.cluster_of
                and conversation_id not in self.representatives)

    def report(self, dedup: bool) -> dict[str, Any]:
        run = self.last_run
        if dedup and run is None:
            log.warning("export.dedup_not_computed", message="--dedup removed nothing: no "
                        "clusters are stored; run `reenrich dedup` first")
        elif dedup and self.unsigned:
            log.warning("export.dedup_stale", conversations=self.unsigned,
                        message="conversations arrived since the last `reenrich dedup` and "
                                "are in no cluster: run it again before exporting")
        return {
            "applied": dedup,
            "clusters": len(set(self.cluster_of.values())),
            "conversations_in_clusters": len(self.cluster_of),
            "threshold": run["threshold"] if run else None,
            "scope": run["scope"] if run else None,
            "run_finished_at": run["finished_at"].isoformat() if run else None,
            "conversations_without_signature": self.unsigned,
            "cluster_aware_split": bool(self.cluster_of),
        }
