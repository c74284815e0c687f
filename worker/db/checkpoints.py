"""SQL of the worker's own tables: backfill runs, their slices (the checkpoint), failures.

A run's key range is split into slices. A worker claims a slice with
`FOR UPDATE SKIP LOCKED`; the claim records the claiming connection's backend
pid and start time, so a claim whose connection is gone (process killed) is
free at once, and one whose lease ran out (process hung) after the lease.
Every page commit renews the lease *only if the worker still owns the slice*:
a worker that lost its slice cannot commit a stale page.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, text

from worker.db.repository import Filters
from worker.enrichment.rows import PageCounts
from worker.jobs.run_state import FINISHED, RESUMABLE, RunStatus, allowed_from


class LeaseLost(Exception):
    """Another worker took this slice over (our lease expired); the page is rolled back."""


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    status: RunStatus
    filters: Filters
    enrichment_version: int
    workers: int
    processed: int
    updated: int
    unchanged: int
    failed: int
    deferred: int
    total: int | None
    started_at: datetime
    finished_at: datetime | None
    heartbeat_at: datetime
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Slice:
    run_name: str
    slice_no: int
    lower_bound: uuid.UUID | None
    upper_bound: uuid.UUID | None
    cursor: uuid.UUID | None


def _run(row: Any) -> Run:
    m = dict(row._mapping)
    m["filters"] = Filters.from_json(m["filters"] or {})
    m["status"] = RunStatus(m["status"])
    return Run(**m)


def get_run(conn: Connection, name: str) -> Run | None:
    row = conn.execute(text("""
        SELECT name, status, filters, enrichment_version, workers, processed, updated,
               unchanged, failed, deferred, total, started_at, finished_at, heartbeat_at, last_error
        FROM backfill_runs
        WHERE name = :name"""), {"name": name}).first()
    return _run(row) if row else None


def latest_unfinished_run(conn: Connection, filters: Filters) -> Run | None:
    row = conn.execute(text("""
        SELECT name, status, filters, enrichment_version, workers, processed, updated,
               unchanged, failed, deferred, total, started_at, finished_at, heartbeat_at, last_error
        FROM backfill_runs
        WHERE status = ANY(:resumable)
          AND filters = CAST(:filters AS jsonb)
        ORDER BY started_at DESC
        LIMIT 1"""), {"filters": orjson.dumps(filters.as_json()).decode(),
                     "resumable": sorted(RESUMABLE)}).first()
    return _run(row) if row else None


def list_runs(conn: Connection) -> list[Run]:
    rows = conn.execute(text("""
        SELECT name, status, filters, enrichment_version, workers, processed, updated,
               unchanged, failed, deferred, total, started_at, finished_at, heartbeat_at, last_error
        FROM backfill_runs
        ORDER BY started_at DESC, name"""))
    return [_run(r) for r in rows]


def create_run(conn: Connection, *, name: str, filters: Filters, version: int,
               workers: int, total: int, bounds: list[tuple[uuid.UUID | None,
                                                            uuid.UUID | None]]) -> None:
    conn.execute(text("""
        INSERT INTO backfill_runs (name, status, filters, enrichment_version, workers, total)
        VALUES (:name, 'running', CAST(:filters AS jsonb), :version, :workers, :total)"""),
        {"name": name, "filters": orjson.dumps(filters.as_json()).decode(),
         "version": version, "workers": workers, "total": total})
    conn.execute(text("""
        INSERT INTO backfill_slices (run_name, slice_no, lower_bound, upper_bound)
        VALUES (:name, :no, :lower, :upper)"""),
        [{"name": name, "no": i, "lower": lo, "upper": hi} for i, (lo, hi) in enumerate(bounds)])


def restart_run(conn: Connection, *, name: str, version: int, total: int) -> bool:
    """Start a run over; False (nothing changed) while a live process works on it."""
    row = conn.execute(text("""
        UPDATE backfill_runs AS r
        SET status = 'running', processed = 0, updated = 0, unchanged = 0, failed = 0,
            deferred = 0, total = :total, enrichment_version = :version, started_at = now(),
            finished_at = NULL, heartbeat_at = now(), last_error = NULL
        WHERE r.name = :name
          AND NOT EXISTS (SELECT 1 FROM backfill_slices f
                          JOIN pg_stat_activity a
                            ON a.pid = f.owner_pid AND a.backend_start = f.owner_backend_start
                          WHERE f.run_name = r.name AND f.status <> 'done'
                            AND f.lease_expires_at >= now())
        RETURNING r.name"""), {"name": name, "version": version, "total": total}).first()
    if row is None:
        return False
    conn.execute(text("""
        UPDATE backfill_slices
        SET cursor = NULL, status = 'pending', owner = NULL, owner_pid = NULL,
            owner_backend_start = NULL, lease_expires_at = NULL, processed = 0, updated = 0,
            unchanged = 0, failed = 0, deferred = 0, updated_at = now()
        WHERE run_name = :name"""), {"name": name})
    return True


# Every status change goes through here, guarded by worker/jobs/run_state.py's table.
MOVE_SQL = text("""
UPDATE backfill_runs
SET status = :status, heartbeat_at = now(),
    last_error = COALESCE(:error, last_error),
    finished_at = CASE WHEN :status = ANY(:finished) THEN now() ELSE finished_at END
WHERE name = :name AND status = ANY(:sources)
RETURNING status
""")


def move_run(conn: Connection, name: str, status: RunStatus,
             last_error: str | None = None) -> bool:
    """Move the run to `status` if the state machine allows it from where it is."""
    row = conn.execute(MOVE_SQL, {"name": name, "status": status.value, "error": last_error,
                                  "finished": sorted(FINISHED),
                                  "sources": allowed_from(status)}).first()
    return row is not None


# The claim: one statement picks a free slice, skipping those other workers
# are claiming right now, and stamps it with this connection's identity.
CLAIM_SQL = text("""
UPDATE backfill_slices AS s
SET owner = :owner,
    owner_pid = pg_backend_pid(),
    owner_backend_start = (SELECT backend_start FROM pg_stat_activity
                           WHERE pid = pg_backend_pid()),
    status = 'running',
    lease_expires_at = now() + make_interval(secs => :lease),
    updated_at = now()
WHERE (s.run_name, s.slice_no) = (
    SELECT f.run_name, f.slice_no
    FROM backfill_slices f
    WHERE f.run_name = :run
      AND f.status <> 'done'
      AND (f.owner IS NULL
           OR f.lease_expires_at < now()
           OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                          WHERE a.pid = f.owner_pid
                            AND a.backend_start = f.owner_backend_start))
    ORDER BY f.slice_no
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING s.run_name, s.slice_no, s.lower_bound, s.upper_bound, s.cursor
""")


def claim_slice(conn: Connection, *, run: str, owner: str, lease_seconds: float) -> Slice | None:
    row = conn.execute(CLAIM_SQL, {"run": run, "owner": owner, "lease": lease_seconds}).first()
    return Slice(**row._mapping) if row else None


def slices_left(conn: Connection, run: str) -> int:
    return int(conn.execute(text(
        "SELECT count(*) FROM backfill_slices WHERE run_name = :run AND status <> 'done'"),
        {"run": run}).scalar_one())


# Advanced in the same transaction as the page's writes: a crash at any
# instant leaves cursor and counts matching what was committed.
ADVANCE_SLICE_SQL = text("""
UPDATE backfill_slices
SET cursor = :cursor,
    processed = processed + :processed, updated = updated + :updated,
    unchanged = unchanged + :unchanged, failed = failed + :failed,
    deferred = deferred + :deferred,
    lease_expires_at = now() + make_interval(secs => :lease),
    status = CASE WHEN :done THEN 'done' ELSE status END,
    owner = CASE WHEN :done THEN NULL ELSE owner END,
    updated_at = now()
WHERE run_name = :run AND slice_no = :slice_no AND owner = :owner
""")

ADVANCE_RUN_SQL = text("""
UPDATE backfill_runs
SET processed = processed + :processed, updated = updated + :updated,
    unchanged = unchanged + :unchanged, failed = failed + :failed,
    deferred = deferred + :deferred,
    status = CASE WHEN status = ANY(:resumable) THEN 'running' ELSE status END,
    heartbeat_at = now()
WHERE name = :run
RETURNING status
""")


def advance(conn: Connection, *, run: str, slice_no: int, owner: str,
            cursor: uuid.UUID | None, counts: PageCounts, done: bool,
            lease_seconds: float) -> RunStatus:
    """Commit-side checkpoint of one page; returns the run's status (an operator may cancel)."""
    params = {"run": run, "slice_no": slice_no, "owner": owner, "cursor": cursor,
              "processed": counts.processed, "updated": counts.updated,
              "unchanged": counts.unchanged, "failed": counts.failed,
              "deferred": counts.deferred, "done": done, "lease": lease_seconds,
              "resumable": allowed_from(RunStatus.RUNNING)}
    if conn.execute(ADVANCE_SLICE_SQL, params).rowcount != 1:
        raise LeaseLost(f"slice {slice_no} of run {run!r} was taken over by another worker")
    return RunStatus(conn.execute(ADVANCE_RUN_SQL, params).scalar_one())


def cancel_run(conn: Connection, name: str) -> bool:
    """Cancel an unfinished run; its workers stop after their current page."""
    return move_run(conn, name, RunStatus.CANCELLED)


def release_slice(conn: Connection, *, run: str, slice_no: int, owner: str) -> None:
    conn.execute(text("""
        UPDATE backfill_slices
        SET owner = NULL, owner_pid = NULL, owner_backend_start = NULL,
            lease_expires_at = NULL, status = 'pending', updated_at = now()
        WHERE run_name = :run AND slice_no = :slice_no AND owner = :owner
          AND status <> 'done'"""), {"run": run, "slice_no": slice_no, "owner": owner})


def live_owners(conn: Connection, run: str) -> list[str]:
    rows = conn.execute(text("""
        SELECT DISTINCT f.owner FROM backfill_slices f
        WHERE f.run_name = :run AND f.status <> 'done' AND f.owner IS NOT NULL
          AND f.lease_expires_at >= now()
          AND EXISTS (SELECT 1 FROM pg_stat_activity a
                      WHERE a.pid = f.owner_pid AND a.backend_start = f.owner_backend_start)
        """), {"run": run})
    return [r[0] for r in rows]


def finish_run(conn: Connection, run: str) -> bool:
    """End the run if every slice is done; True for the one caller that did.

    With failed rows it is `finished_with_failures`, else `succeeded`. `total`
    was the count of matching rows when the run started (progress only); at the
    end it becomes the rows actually visited, so a finished run reads N of N
    even when rows were inserted or deleted while it ran.
    """
    row = conn.execute(text("""
        UPDATE backfill_runs
        SET status = CASE WHEN failed > 0 THEN 'finished_with_failures' ELSE 'succeeded' END,
            total = processed, finished_at = now(), heartbeat_at = now()
        WHERE name = :run AND status = ANY(:sources)
          AND NOT EXISTS (SELECT 1 FROM backfill_slices
                          WHERE run_name = :run AND status <> 'done')
        RETURNING name"""), {"run": run, "sources": allowed_from(RunStatus.SUCCEEDED)}).first()
    return row is not None


# ------------------------------------------------------------------ failures


def list_failures(conn: Connection, run: str | None,
                  include_resolved: bool = False) -> list[dict[str, Any]]:
    rows = conn.execute(text("""
        SELECT conversation_id, run_name, error_code, message, details, attempts,
               first_seen_at, last_seen_at, resolved_at
        FROM enrichment_failures
        WHERE (CAST(:run AS text) IS NULL OR run_name = :run)
          AND (:all OR resolved_at IS NULL)
        ORDER BY last_seen_at DESC, conversation_id"""), {"run": run, "all": include_resolved})
    return [dict(r._mapping) for r in rows]
