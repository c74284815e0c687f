"""SQL of the follow queue (`enrichment_queue`) and the follow workers' heartbeats.

The triggers of migration 0003 mark conversations; this module claims,
locks and dequeues them. The lock order is what keeps editors and workers
out of deadlocks:

- an editor locks a conversation (or a scaffolding row), then queue rows
  (its trigger marks them);
- a worker claims queue rows in a short transaction of its own and commits,
  so it never holds a queue row while it waits for a conversation; in its
  write transaction it locks conversations, then queue rows, with
  `SKIP LOCKED` when it is the follow loop: it never waits for a lock while
  holding one. What it skips stays queued for the next pass.

A row is dequeued only if its `marks` are still those read before the
conversation was read: a mark made in between (an edit committed while the
worker enriched) leaves the row queued, so the edit is enriched too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from worker.db.checkpoints import PageCounts

# The channel the triggers NOTIFY (migration 0003 writes the same name).
CHANNEL = "reenrich_queue"


@dataclass(frozen=True, slots=True)
class Claimed:
    conversation_id: uuid.UUID
    marks: int
    marked_at: datetime


# Claimable: not claimed, or claimed longer ago than the lease (a crashed
# worker). Oldest marks first. Its own transaction: commit right after. The
# pick is a materialized CTE: as `IN (subquery)` the planner may run the
# LIMIT subquery more than once and claim more rows than asked for.
CLAIM_SQL = text("""
WITH picked AS MATERIALIZED (
    SELECT f.conversation_id
    FROM enrichment_queue f
    WHERE f.claimed_by IS NULL
       OR f.claimed_at < clock_timestamp() - make_interval(secs => :lease)
    ORDER BY f.marked_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED)
UPDATE enrichment_queue AS q
SET claimed_by = :worker,
    claimed_at = clock_timestamp()
FROM picked
WHERE q.conversation_id = picked.conversation_id
RETURNING q.conversation_id, q.marks, q.marked_at
""")

RELEASE_SQL = text("""
UPDATE enrichment_queue
SET claimed_by = NULL, claimed_at = NULL
WHERE claimed_by = :worker
  AND (CAST(:ids AS uuid[]) IS NULL OR conversation_id = ANY(CAST(:ids AS uuid[])))
""")

# Row locks on the conversations about to be written, in id order. The
# follow loop skips rows another transaction holds (an editor, another
# writer); `reenrich enrich` and the API wait for them.
LOCK_SKIP_SQL = text("""
SELECT conversation_id FROM conversations
WHERE conversation_id = ANY(CAST(:ids AS uuid[]))
ORDER BY conversation_id
FOR NO KEY UPDATE SKIP LOCKED
""")

LOCK_WAIT_SQL = text("""
SELECT conversation_id FROM conversations
WHERE conversation_id = ANY(CAST(:ids AS uuid[]))
ORDER BY conversation_id
FOR NO KEY UPDATE
""")

MARKS_SQL = text("""
SELECT conversation_id, marks FROM enrichment_queue
WHERE conversation_id = ANY(CAST(:ids AS uuid[]))
""")

# Delete the rows whose mark is still the one read; a queue row an editor is
# marking right now is skipped (it will be marked again when it commits).
# The latency is from the latest mark to this write (its transaction's
# commit follows at once).
DEQUEUE_SQL = text("""
WITH done AS (
    SELECT q.conversation_id
    FROM enrichment_queue q
    JOIN unnest(CAST(:ids AS uuid[]), CAST(:marks AS bigint[])) AS d(conversation_id, marks)
      ON d.conversation_id = q.conversation_id AND d.marks = q.marks
    ORDER BY q.conversation_id
    FOR UPDATE OF q SKIP LOCKED)
DELETE FROM enrichment_queue AS q
USING done
WHERE q.conversation_id = done.conversation_id
RETURNING q.conversation_id,
          extract(epoch FROM clock_timestamp() - q.marked_at)::float8 AS latency_seconds
""")


def claim(conn: Connection, *, worker: str, limit: int, lease_seconds: float) -> list[Claimed]:
    rows = conn.execute(CLAIM_SQL, {"worker": worker, "limit": limit, "lease": lease_seconds})
    return sorted((Claimed(*row) for row in rows), key=lambda c: c.conversation_id)


def release(conn: Connection, *, worker: str, ids: Sequence[uuid.UUID] | None = None) -> int:
    """Give back this worker's claims (all of them when `ids` is None)."""
    return conn.execute(RELEASE_SQL, {"worker": worker,
                                      "ids": None if ids is None else list(ids)}).rowcount


def lock_conversations(conn: Connection, ids: Sequence[uuid.UUID], *,
                       skip_locked: bool) -> list[uuid.UUID]:
    """Lock the conversations that exist (and, with skip_locked, are free), in id order."""
    sql = LOCK_SKIP_SQL if skip_locked else LOCK_WAIT_SQL
    return [row[0] for row in conn.execute(sql, {"ids": list(ids)})]


def current_marks(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    return {row[0]: row[1] for row in conn.execute(MARKS_SQL, {"ids": list(ids)})}


def dequeue(conn: Connection, marks: dict[uuid.UUID, int]) -> dict[uuid.UUID, float]:
    """Delete queue rows still at these marks; {conversation_id: seconds since marked}."""
    if not marks:
        return {}
    ids = sorted(marks)
    rows = conn.execute(DEQUEUE_SQL, {"ids": ids, "marks": [marks[i] for i in ids]})
    return {row[0]: float(row[1]) for row in rows}


# ------------------------------------------------------------ follow workers


def register_worker(conn: Connection, *, worker: str, host: str, pid: int,
                    heartbeat_seconds: float) -> None:
    conn.execute(text("""
        INSERT INTO follow_workers (worker_id, host, pid, heartbeat_seconds)
        VALUES (:worker, :host, :pid, :heartbeat)
        ON CONFLICT (worker_id) DO UPDATE
        SET status = 'running', heartbeat_at = now(), stopped_at = NULL"""),
        {"worker": worker, "host": host, "pid": pid, "heartbeat": heartbeat_seconds})


# In the batch's own transaction: the counts match what was committed.
def record_batch(conn: Connection, *, worker: str, counts: PageCounts) -> None:
    conn.execute(text("""
        UPDATE follow_workers
        SET batches = batches + 1,
            rows_processed = rows_processed + :processed,
            rows_enriched = rows_enriched + :enriched,
            rows_unchanged = rows_unchanged + :unchanged,
            rows_failed = rows_failed + :failed,
            last_batch_at = now(), heartbeat_at = now()
        WHERE worker_id = :worker"""),
        {"worker": worker, "processed": counts.processed, "enriched": counts.updated,
         "unchanged": counts.unchanged, "failed": counts.failed})


def heartbeat(conn: Connection, *, worker: str, error: str | None = None) -> None:
    conn.execute(text("""
        UPDATE follow_workers
        SET heartbeat_at = now(), status = 'running', stopped_at = NULL,
            last_error = COALESCE(:error, last_error)
        WHERE worker_id = :worker"""), {"worker": worker, "error": error})


def stop_worker(conn: Connection, *, worker: str) -> None:
    conn.execute(text("""
        UPDATE follow_workers
        SET status = 'stopped', stopped_at = now(), heartbeat_at = now()
        WHERE worker_id = :worker"""), {"worker": worker})


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    claimed: int
    oldest_marked_at: datetime | None


def queue_stats(conn: Connection) -> QueueStats:
    row = conn.execute(text("""
        SELECT count(*), count(claimed_by), min(marked_at) FROM enrichment_queue""")).one()
    return QueueStats(depth=int(row[0]), claimed=int(row[1]), oldest_marked_at=row[2])


def list_workers(conn: Connection) -> list[dict[str, Any]]:
    """Every follow worker, live ones first; `state` is running, lost or stopped."""
    rows = conn.execute(text("""
        SELECT worker_id, host, pid,
               CASE WHEN status = 'stopped' THEN 'stopped'
                    WHEN heartbeat_at < now() - make_interval(secs => 3 * heartbeat_seconds)
                    THEN 'lost'
                    ELSE 'running' END AS state,
               started_at, heartbeat_at, stopped_at, batches, rows_processed, rows_enriched,
               rows_unchanged, rows_failed, last_batch_at, last_error,
               (SELECT count(*) FROM enrichment_queue q
                WHERE q.claimed_by = w.worker_id) AS claimed
        FROM follow_workers w
        ORDER BY (status = 'running') DESC, heartbeat_at DESC, worker_id"""))
    return [dict(r._mapping) for r in rows]


# A row a writer could not write (its inputs changed after the read, or
# another session holds it) is marked again, so a follower finishes it.
MARK_SQL = text("""
SELECT reenrich_mark(ARRAY(SELECT conversation_id FROM conversations
                           WHERE conversation_id = ANY(CAST(:ids AS uuid[]))
                           ORDER BY conversation_id), :why)
""")


def mark(conn: Connection, ids: Sequence[uuid.UUID], *, why: str) -> None:
    if ids:
        conn.execute(MARK_SQL, {"ids": sorted(ids), "why": why})
