"""What operators look at: runs, failures, stored documents (read-only)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from worker.contract import dumps, in_contract_order
from worker.db import checkpoints, queue, repository

Out = Callable[[str | bytes], None]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def run_summary(run: checkpoints.Run, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    end = run.finished_at or (run.heartbeat_at if run.status != "running" else now)
    elapsed = max((end - run.started_at).total_seconds(), 0.0)
    rate = run.processed / elapsed if elapsed > 0 else 0.0
    remaining = max(0, (run.total or 0) - run.processed)
    eta = round(remaining / rate, 1) if rate > 0 and run.status == "running" else None
    return {
        "name": run.name,
        "status": run.status,
        "processed": run.processed,
        "updated": run.updated,
        "unchanged": run.unchanged,
        "failed": run.failed,
        "total": run.total,
        "rows_per_second": round(rate, 1),
        "eta_seconds": eta,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "heartbeat_at": _iso(run.heartbeat_at),
        "workers": run.workers,
        "enrichment_version": run.enrichment_version,
        "filters": run.filters.as_json(),
        "last_error": run.last_error,
    }


def _table(rows: list[dict[str, Any]], columns: Sequence[str], out: Out) -> None:
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_status(engine: Engine, *, as_json: bool, out: Out) -> int:
    with engine.connect() as conn:
        runs = [run_summary(r) for r in checkpoints.list_runs(conn)]
    if as_json:
        out(json.dumps(runs, ensure_ascii=False))
        return 0
    if not runs:
        out("no backfill runs yet: start one with `reenrich backfill`")
    else:
        _table(runs, ["name", "status", "processed", "total", "updated", "unchanged", "failed",
                      "rows_per_second", "eta_seconds", "started_at", "finished_at",
                      "last_error"], out)
    out("")
    _print_versions(engine, out)
    _print_follow(engine, out, live_only=True)
    return 0


def _print_versions(engine: Engine, out: Out) -> None:
    """Enriched rows per enrichment version: rows below the current one await a backfill."""
    from worker.db.dataset import version_counts
    from worker.enrich import ENRICHMENT_VERSION

    with engine.connect() as conn:
        counts = version_counts(conn)
    listed = ", ".join(f"version {k if k is not None else 'unknown'}: {v}"
                       for k, v in counts.items()) or "none"
    behind = sum(v for k, v in counts.items() if k is None or k < ENRICHMENT_VERSION)
    out(f"enriched rows by enrichment version: {listed} (current {ENRICHMENT_VERSION}; "
        f"{behind} to re-enrich with `reenrich backfill`)")


def _workers(engine: Engine) -> tuple[queue.QueueStats, list[dict[str, Any]]]:
    with engine.connect() as conn:
        stats = queue.queue_stats(conn)
        rows = queue.list_workers(conn)
    return stats, [{
        "worker_id": r["worker_id"], "host": r["host"], "pid": r["pid"], "state": r["state"],
        "started_at": _iso(r["started_at"]), "heartbeat_at": _iso(r["heartbeat_at"]),
        "stopped_at": _iso(r["stopped_at"]), "batches": r["batches"],
        "rows_processed": r["rows_processed"], "rows_enriched": r["rows_enriched"],
        "rows_unchanged": r["rows_unchanged"], "rows_failed": r["rows_failed"],
        "claimed": r["claimed"], "last_batch_at": _iso(r["last_batch_at"]),
        "last_error": r["last_error"],
    } for r in rows]


def _print_follow(engine: Engine, out: Out, *, live_only: bool) -> None:
    stats, workers = _workers(engine)
    oldest = _iso(stats.oldest_marked_at) or "-"
    out(f"follow queue: {stats.depth} conversation(s) marked, {stats.claimed} claimed, "
        f"oldest mark {oldest}")
    shown = [w for w in workers if w["state"] != "stopped"] if live_only else workers
    if not shown:
        out("no follow workers running: start one with `reenrich follow`" if live_only
            else "no follow workers yet: start one with `reenrich follow`")
        return
    _table(shown, ["worker_id", "state", "heartbeat_at", "batches", "rows_processed",
                   "rows_enriched", "rows_failed", "claimed", "started_at", "last_error"], out)


def print_workers(engine: Engine, *, as_json: bool, out: Out) -> int:
    """`reenrich workers`: the queue depth and every follow worker (--json: one object)."""
    if as_json:
        stats, workers = _workers(engine)
        out(json.dumps({"queue": {"depth": stats.depth, "claimed": stats.claimed,
                                  "oldest_marked_at": _iso(stats.oldest_marked_at)},
                        "workers": workers}, ensure_ascii=False))
        return 0
    _print_follow(engine, out, live_only=False)
    return 0


def print_failures(engine: Engine, *, run: str | None, as_json: bool, include_resolved: bool,
                   out: Out) -> int:
    with engine.connect() as conn:
        rows = checkpoints.list_failures(conn, run, include_resolved)
    items = [{
        "conversation_id": str(r["conversation_id"]),
        "error_code": r["error_code"],
        "message": r["message"],
        "run": r["run_name"],
        "attempts": r["attempts"],
        "first_seen_at": _iso(r["first_seen_at"]),
        "last_seen_at": _iso(r["last_seen_at"]),
        "resolved_at": _iso(r["resolved_at"]),
        "details": r["details"],
    } for r in rows]
    if as_json:
        out(json.dumps(items, ensure_ascii=False))
        return 0
    if not items:
        out("no failures")
        return 0
    _table(items, ["conversation_id", "error_code", "attempts", "last_seen_at", "message"], out)
    return 0


def show_documents(engine: Engine, ids: Sequence[uuid.UUID] | None, *, out: Out) -> int:
    """Stored enriched documents as JSON Lines; exit 1 if an id has none."""
    seen: set[uuid.UUID] = set()
    not_enriched: list[uuid.UUID] = []
    with engine.connect() as conn:
        for conversation_id, document in repository.stored_documents(conn, ids):
            seen.add(conversation_id)
            if document is None:
                not_enriched.append(conversation_id)
                continue
            out(dumps(in_contract_order(document)))
    missing = [i for i in ids or [] if i not in seen]
    for i in missing:
        sys.stderr.write(f"reenrich: no conversation {i}\n")
    for i in not_enriched:
        sys.stderr.write(f"reenrich: conversation {i} has no enriched document yet "
                         "(run `reenrich backfill`, or see `reenrich failures`)\n")
    return 1 if missing or not_enriched else 0
