"""Enrich a set of conversations by id, in one transaction.

The step shared by `reenrich follow`, `reenrich enrich` and the Python API:
lock the conversations, read the queue marks, read and enrich the rows,
write through the backfill's write path (same validation, same failure
records), dequeue the rows whose mark did not change meanwhile, and (for a
follow worker) add the batch to its counters. All of it commits together.

`skip_locked` is the follow loop's mode: a conversation another transaction
holds is left for a later pass instead of waited for, so the loop never
waits for a lock while it holds others (no deadlock with an editor).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection

from worker.db import queue, repository
from worker.db.checkpoints import PageCounts
from worker.processing import PageOutcome, Processor


@dataclass
class BatchResult:
    outcome: PageOutcome
    written: int = 0
    # Requested ids not locked: absent, or (skip_locked) held by another transaction.
    not_locked: list[uuid.UUID] = field(default_factory=list)
    # Dequeued ids -> seconds from their latest mark to this write.
    dequeued: dict[uuid.UUID, float] = field(default_factory=dict)

    @property
    def counts(self) -> PageCounts:
        return self.outcome.counts(self.written)


def enrich_batch(conn: Connection, processor: Processor, ids: Sequence[uuid.UUID], *,
                 skip_locked: bool, worker: str | None = None) -> BatchResult:
    """Enrich `ids` now; the connection must have no transaction open."""
    wanted = sorted(set(ids))
    repository.prepare_connection(conn)
    with conn.begin():
        locked = queue.lock_conversations(conn, wanted, skip_locked=skip_locked)
        # Marks first, rows second: a mark committed after this read means the
        # row read may be stale, and the changed mark keeps it queued.
        marks = queue.current_marks(conn, locked)
        rows = repository.read_by_ids(conn, locked)
        outcome = processor.process(rows)
        written = repository.write_changes(
            conn, changed=outcome.changed, failed=outcome.failed, resolved=outcome.resolved,
            run_name=None, version=processor.version)
        result = BatchResult(outcome=outcome, written=written,
                             not_locked=sorted(set(wanted) - set(locked)))
        result.dequeued = queue.dequeue(conn, marks)
        if worker is not None:
            queue.record_batch(conn, worker=worker, counts=result.counts)
    return result
