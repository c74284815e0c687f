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

import psycopg
from sqlalchemy import Connection, text

from worker.enrichment.rows import PageCounts

# The channel the triggers NOTIFY (migration 0003 writes the same name).
CHANNEL = "reenrich_queue"
# The channel the triggers notify (migrations); LISTEN takes no parameter.
LISTEN_SQL = "LISTEN reenrich_queue"


def listen(listener: psycopg.Connection[Any]) -> None:
    """Subscribe an autocommit connection to the queue's notifications."""
    listener.execute(LISTEN_SQL)


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
    WHERE (f.claimed_by IS NULL
           OR f.claimed_at < clock_timestamp() - make_interval(secs => :lease))
      -- a new row is enriched as pending (its mark is removed then), not twice
      AND NOT EXISTS (SELECT 1 FROM conversations c
                      WHERE c.conversation_id = f.conversation_id
                        AND c.enrichment_status = 'pending')
    ORDER BY f.marked_at
    LIMIT :limit
    FOR UPDATE OF f SKIP LOCKED)
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
    depth: int  # marked rows
    claimed: int
    oldest_marked_at: datetime | None
    pending: int = 0  # new rows not enriched yet (their status is the mark)
    edits: int = 0  # scaffolding edits still being expanded


def queue_stats(conn: Connection) -> QueueStats:
    row = conn.execute(text("""
        SELECT (SELECT count(*) FROM enrichment_queue),
               (SELECT count(claimed_by) FROM enrichment_queue),
               (SELECT min(marked_at) FROM enrichment_queue),
               (SELECT count(*) FROM conversations WHERE enrichment_status = 'pending'),
               (SELECT count(*) FROM scaffolding_edits)""")).one()
    return QueueStats(depth=int(row[0]), claimed=int(row[1]), oldest_marked_at=row[2],
                      pending=int(row[3]), edits=int(row[4]))


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


# ------------------------------------------------------- new rows: pending

# A new conversation is its own mark (migration 0009): status 'pending',
# found through a partial index. Locked in the write transaction, skipping
# rows another worker (or an editor) holds, so no row is enriched twice.
LOCK_PENDING_SQL = text("""
SELECT conversation_id FROM conversations
WHERE enrichment_status = 'pending'
ORDER BY conversation_id
LIMIT :limit
FOR NO KEY UPDATE SKIP LOCKED
""")


def lock_pending(conn: Connection, *, limit: int) -> list[uuid.UUID]:
    return [row[0] for row in conn.execute(LOCK_PENDING_SQL, {"limit": limit})]


# ------------------------------------------- scaffolding edits: expansions


@dataclass(frozen=True, slots=True)
class Edit:
    """One edited scaffolding row whose conversations are being re-enriched."""

    kind: str
    scaffold_id: uuid.UUID
    edits: int
    cursor: uuid.UUID | None


CLAIM_EDIT_SQL = text("""
WITH picked AS MATERIALIZED (
    SELECT kind, scaffold_id FROM scaffolding_edits
    WHERE claimed_by IS NULL
       OR claimed_at < clock_timestamp() - make_interval(secs => :lease)
    ORDER BY marked_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
UPDATE scaffolding_edits AS e
SET claimed_by = :worker, claimed_at = clock_timestamp()
FROM picked
WHERE (e.kind, e.scaffold_id) = (picked.kind, picked.scaffold_id)
RETURNING e.kind, e.scaffold_id, e.edits, e.cursor
""")

# One page of the edited row's conversations, keyset over (fk, conversation_id).
USERS_SQL = {
    "persona": text("""
        SELECT conversation_id FROM conversations
        WHERE persona_id = :id AND (CAST(:after AS uuid) IS NULL OR conversation_id > :after)
        ORDER BY persona_id, conversation_id LIMIT :limit"""),
    "emotional_arc": text("""
        SELECT conversation_id FROM conversations
        WHERE emotional_arc_id = :id
          AND (CAST(:after AS uuid) IS NULL OR conversation_id > :after)
        ORDER BY emotional_arc_id, conversation_id LIMIT :limit"""),
    "training_topic": text("""
        SELECT conversation_id FROM conversations
        WHERE training_topic_id = :id
          AND (CAST(:after AS uuid) IS NULL OR conversation_id > :after)
        ORDER BY training_topic_id, conversation_id LIMIT :limit"""),
    "prompt_template": text("""
        SELECT conversation_id FROM conversations
        WHERE template_id = :id AND (CAST(:after AS uuid) IS NULL OR conversation_id > :after)
        ORDER BY template_id, conversation_id LIMIT :limit"""),
}

# The cursor moves (and the claim is renewed) only while no new edit came in;
# a new edit reset the cursor, and the expansion starts over.
ADVANCE_EDIT_SQL = text("""
UPDATE scaffolding_edits
SET cursor = :cursor, claimed_at = clock_timestamp()
WHERE kind = :kind AND scaffold_id = :id AND edits = :edits AND claimed_by = :worker
""")

FINISH_EDIT_SQL = text("""
DELETE FROM scaffolding_edits
WHERE kind = :kind AND scaffold_id = :id AND edits = :edits
""")

RELEASE_EDIT_SQL = text("""
UPDATE scaffolding_edits SET claimed_by = NULL, claimed_at = NULL
WHERE kind = :kind AND scaffold_id = :id AND claimed_by = :worker
""")


def claim_edit(conn: Connection, *, worker: str, lease_seconds: float) -> Edit | None:
    row = conn.execute(CLAIM_EDIT_SQL, {"worker": worker, "lease": lease_seconds}).first()
    return Edit(*row) if row else None


def edit_users(conn: Connection, edit: Edit, *, after: uuid.UUID | None,
               limit: int) -> list[uuid.UUID]:
    rows = conn.execute(USERS_SQL[edit.kind], {"id": edit.scaffold_id, "after": after,
                                               "limit": limit})
    return [row[0] for row in rows]


def advance_edit(conn: Connection, edit: Edit, *, worker: str, cursor: uuid.UUID) -> bool:
    """False when a newer edit restarted the expansion."""
    return conn.execute(ADVANCE_EDIT_SQL, {"kind": edit.kind, "id": edit.scaffold_id,
                                           "edits": edit.edits, "worker": worker,
                                           "cursor": cursor}).rowcount == 1


def finish_edit(conn: Connection, edit: Edit) -> bool:
    """Delete the edit once expanded; False when a newer edit keeps it."""
    return conn.execute(FINISH_EDIT_SQL, {"kind": edit.kind, "id": edit.scaffold_id,
                                          "edits": edit.edits}).rowcount == 1


def release_edit(conn: Connection, edit: Edit, *, worker: str) -> None:
    conn.execute(RELEASE_EDIT_SQL, {"kind": edit.kind, "id": edit.scaffold_id,
                                    "worker": worker})
