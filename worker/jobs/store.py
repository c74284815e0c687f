"""The loops' stores: every transaction a backfill process or a follow lane makes,
one method each, and the paged read of the backfill's fetch stage.

The loops ask for steps (claim a slice, commit a page, claim a batch, enrich
these ids) and never hold a connection or order statements themselves, as a
queue worker never sees SQL. Each method is one transaction on the store's connection;
`commit_page` keeps a page's writes and its checkpoint in one, which is what
lets a killed process resume exactly after its last committed page. The SQL is
in `worker/db/` (checkpoints, repository, queue); the write path's fault handling in
`worker/jobs/writes.py`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection, Engine

from worker.db import checkpoints, queue, repository
from worker.db.checkpoints import Run, Slice
from worker.db.repository import Filters, Limits
from worker.enrichment.processing import PageOutcome, Processor
from worker.enrichment.rows import StoredRow
from worker.jobs import writes
from worker.jobs.run_state import RunStatus

log = structlog.get_logger("reenrich.backfill")


def read_pages(engine: Engine, *, after: uuid.UUID | None, upper: uuid.UUID | None,
               filters: Filters, next_size: Callable[[], int]
               ) -> Iterator[tuple[list[StoredRow], int]]:
    """(rows, page size asked) of the key range (after, upper], on a connection of its own.

    Each page is its own read transaction: no snapshot is held between pages.
    The last page is the first one shorter than asked.
    """
    with engine.connect() as conn:
        while True:
            size = next_size()
            rows = repository.read_page(conn, after=after, upper=upper, filters=filters,
                                        limit=size)
            conn.rollback()
            yield rows, size
            if len(rows) < size:
                return
            after = rows[-1].conversation_id


@dataclass(frozen=True)
class Settled:
    """The run as a process leaves it: slices left, who else holds one, the stored run."""

    slices_left: int
    others: list[str]
    run: Run


class RunStore:
    """One backfill process's transactions on its own connection."""

    def __init__(self, conn: Connection, processor: Processor, *, owner: str,
                 lease_seconds: float, limits: Limits, stop: threading.Event) -> None:
        self.conn, self.processor, self.owner = conn, processor, owner
        self.lease_seconds, self.limits, self.stop = lease_seconds, limits, stop

    @classmethod
    def open(cls, engine: Engine, processor: Processor, *, owner: str, lease_seconds: float,
             limits: Limits, stop: threading.Event) -> RunStore:
        return cls(engine.connect(), processor, owner=owner, lease_seconds=lease_seconds,
                   limits=limits, stop=stop)

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ the run

    def find_run(self, name: str | None, filters: Filters) -> Run | None:
        """The named run, or the latest unfinished one with these filters."""
        with self.conn.begin():
            return checkpoints.get_run(self.conn, name) if name else \
                checkpoints.latest_unfinished_run(self.conn, filters)

    def create_run(self, *, name: str, filters: Filters, workers: int,
                   bounds: list[tuple[uuid.UUID | None, uuid.UUID | None]]) -> Run:
        with self.conn.begin():
            total = repository.count_rows(self.conn, filters=filters)
            checkpoints.create_run(self.conn, name=name, filters=filters,
                                   version=self.processor.version, workers=workers,
                                   total=total, bounds=bounds)
            run = checkpoints.get_run(self.conn, name)
        assert run is not None
        return run

    def restart_run(self, run: Run) -> Run | None:
        """The run from its start again; None while a live process holds a slice."""
        with self.conn.begin():
            total = repository.count_rows(self.conn, filters=run.filters)
            if not checkpoints.restart_run(self.conn, name=run.name,
                                           version=self.processor.version, total=total):
                return None
            return checkpoints.get_run(self.conn, run.name)

    def get_run(self, name: str) -> Run | None:
        with self.conn.begin():
            return checkpoints.get_run(self.conn, name)

    def move_run(self, name: str, to: RunStatus, error: str | None = None) -> None:
        with self.conn.begin():
            checkpoints.move_run(self.conn, name, to, error)

    def settle(self, name: str, decide: Callable[[int, list[str]], RunStatus | None]
               ) -> Settled:
        """Apply `decide(slices_left, other owners)` to the run, in one transaction."""
        with self.conn.begin():
            left = checkpoints.slices_left(self.conn, name)
            others = checkpoints.live_owners(self.conn, name) if left else []
            move_to = decide(left, others)
            if move_to is RunStatus.SUCCEEDED:
                checkpoints.finish_run(self.conn, name)  # picks the exact final status
            elif move_to is not None:
                checkpoints.move_run(self.conn, name, move_to)
            run = checkpoints.get_run(self.conn, name)
        assert run is not None
        return Settled(left, others, run)

    # ---------------------------------------------------------- the slices

    def claim_slice(self, run: str) -> Slice | None:
        with self.conn.begin():
            return checkpoints.claim_slice(self.conn, run=run, owner=self.owner,
                                           lease_seconds=self.lease_seconds)

    def release_slice(self, run: str, slice_no: int) -> None:
        with self.conn.begin():
            checkpoints.release_slice(self.conn, run=run, slice_no=slice_no, owner=self.owner)

    def commit_page(self, run: str, sl: Slice, outcome: PageOutcome, *, done: bool
                    ) -> tuple[writes.Committed, RunStatus]:
        """A page's writes and its checkpoint, in one transaction (retried on lock timeouts)."""
        cursor = outcome.last_id or sl.cursor or sl.lower_bound

        def work(conn: Connection, mode: writes.Mode) -> tuple[writes.Committed, RunStatus]:
            committed = writes.write_outcome(conn, self.processor, outcome, run_name=run,
                                             mode=mode)
            status = checkpoints.advance(
                conn, run=run, slice_no=sl.slice_no, owner=self.owner, cursor=cursor,
                counts=committed.counts, done=done, lease_seconds=self.lease_seconds)
            return committed, status

        ids = [c.conversation_id for c in outcome.changed] + \
              [f.conversation_id for f in outcome.failed]
        return writes.commit(self.conn, work, held=lambda: writes.held_rows(self.conn, ids),
                             limits=self.limits, stop=self.stop)

    # ------------------------------------------------------- the connection

    def reset(self) -> None:
        """Drop a broken connection so the next step opens a new one."""
        for step in (self.conn.invalidate, self.conn.rollback):
            try:
                step()
            except Exception as exc:  # it is broken already; the next use reconnects
                log.debug("backfill.reset_error", error=f"{type(exc).__name__}: {exc}")


class QueueStore:
    """One follow lane's transactions on its own connection (each method one transaction).

    The follower asks for steps (claim a batch, enrich these ids, expand an
    edit a page further) and holds no connection or statement order itself.
    """

    def __init__(self, conn: Connection, processor: Processor, *, worker: str,
                 lease_seconds: float, limits: Limits) -> None:
        self.conn, self.processor, self.worker = conn, processor, worker
        self.lease_seconds, self.limits = lease_seconds, limits

    @classmethod
    @contextmanager
    def connect(cls, engine: Engine, processor: Processor, *, worker: str,
                lease_seconds: float, limits: Limits) -> Iterator[QueueStore]:
        with engine.connect() as conn:
            yield cls(conn, processor, worker=worker, lease_seconds=lease_seconds,
                      limits=limits)

    # ------------------------------------------------------------ the worker

    def register(self, *, host: str, pid: int, heartbeat_seconds: float) -> None:
        with self.conn.begin():
            queue.register_worker(self.conn, worker=self.worker, host=host, pid=pid,
                                  heartbeat_seconds=heartbeat_seconds)

    def rejoin(self) -> int:
        """After a reconnect: alive again, and the claims a cut-off batch held freed now."""
        with self.conn.begin():
            queue.heartbeat(self.conn, worker=self.worker)
            return queue.release(self.conn, worker=self.worker)

    def heartbeat(self) -> queue.QueueStats:
        with self.conn.begin():
            queue.heartbeat(self.conn, worker=self.worker)
            return queue.queue_stats(self.conn)

    def record_error(self, error: str) -> None:
        """A statement the database refused: roll it back, say so in the worker's row."""
        self.conn.rollback()
        with self.conn.begin():
            queue.heartbeat(self.conn, worker=self.worker, error=error)

    def stop(self) -> None:
        with self.conn.begin():
            queue.release(self.conn, worker=self.worker)
            queue.stop_worker(self.conn, worker=self.worker)

    # ------------------------------------------------------ marks and rows

    def claim_batch(self, limit: int) -> list[uuid.UUID]:
        """Up to `limit` queue marks, claimed for this worker's lease."""
        with self.conn.begin():
            claimed = queue.claim(self.conn, worker=self.worker, limit=limit,
                                  lease_seconds=self.lease_seconds)
        return [c.conversation_id for c in claimed]

    def release(self, ids: list[uuid.UUID]) -> None:
        with self.conn.begin():
            queue.release(self.conn, worker=self.worker, ids=ids)

    def enrich_ids(self, ids: list[uuid.UUID]) -> writes.BatchResult:
        """Enrich these rows through the conditional write, skipping rows others hold."""
        return writes.enrich_batch(self.conn, self.processor, ids, skip_locked=True,
                                   worker=self.worker, limits=self.limits)

    def enrich_pending(self, limit: int) -> writes.BatchResult:
        """Up to `limit` new conversations (their status is the mark)."""
        return writes.enrich_pending(self.conn, self.processor, limit=limit,
                                     worker=self.worker, limits=self.limits)

    def mark(self, ids: list[uuid.UUID], why: str) -> None:
        with self.conn.begin():
            queue.mark(self.conn, ids, why=why)

    # ---------------------------------------------------- scaffolding edits

    def claim_edit(self) -> queue.Edit | None:
        with self.conn.begin():
            return queue.claim_edit(self.conn, worker=self.worker,
                                    lease_seconds=self.lease_seconds)

    def edit_users(self, edit: queue.Edit, *, after: uuid.UUID | None,
                   limit: int) -> list[uuid.UUID]:
        """The next page of the conversations an edit touches (keyset on its foreign key)."""
        with self.conn.begin():
            return queue.edit_users(self.conn, edit, after=after, limit=limit)

    def finish_edit(self, edit: queue.Edit) -> bool:
        """Done with it; False when it was edited again meanwhile (it starts over)."""
        with self.conn.begin():
            return queue.finish_edit(self.conn, edit)

    def advance_edit(self, edit: queue.Edit, cursor: uuid.UUID) -> bool:
        """Record the expansion's cursor; False when it was edited again meanwhile."""
        with self.conn.begin():
            return queue.advance_edit(self.conn, edit, worker=self.worker, cursor=cursor)

    def release_edit(self, edit: queue.Edit) -> None:
        with self.conn.begin():
            queue.release_edit(self.conn, edit, worker=self.worker)
