"""Writing what was enriched: the step every writer shares (backfill, follow, enrich, API).

A page's outcome is built from a read; by the time it is written an editor,
a follower or another backfill may have changed the row. So every write is
conditional on the inputs read still being the current inputs
(`repository.write_changes`). A row found stale is enriched again at once,
under its row lock; one whose lock another session holds is left marked in
the queue for the follower. The queue marks of rows written or found
unchanged are removed when they did not change since the read.

`commit` runs one such write in a transaction of its own, with the faults a
production database throws at it handled there, once for every writer:
- a lock or statement timeout (or a cancelled query): retried after a pause;
  after the last try, the rows another session holds are left for later
  (counted as deferred, named in a warning) and the rest is written;
- a row the database refuses (a value over a limit, bad data): the page is
  written again row by row, and the refused rows become that row's failure.
Connection errors are not handled here: the loops reconnect.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TypeVar

import orjson
import psycopg
import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from worker.db import queue, repository
from worker.db.repository import Limits
from worker.enrichment.processing import (
    DEFERRED,
    FAILED,
    PageOutcome,
    Processor,
    RowResult,
    tally,
)
from worker.enrichment.rows import Failed, PageCounts, RawJsonb

log = structlog.get_logger("reenrich.write")

WRITE_FAILED = "write_failed"
LOCK_RETRIES = 3
LOCK_PAUSE_SECONDS = 1.0
T = TypeVar("T")


class Mode(Enum):
    """How a write transaction treats rows: the normal path, or one of the fault paths."""

    NORMAL = "normal"
    SKIP_LOCKED = "skip_locked"  # write what can be locked now; defer the rest
    ROW_BY_ROW = "row_by_row"  # one savepoint per row: a refused row fails alone


@dataclass
class Committed:
    """The final word on a page: one result per row read, and the counts of them."""

    results: list[RowResult] = field(default_factory=list)
    dequeued: dict[uuid.UUID, float] = field(default_factory=dict)

    @property
    def counts(self) -> PageCounts:
        return tally(self.results)

    def failed(self) -> list[RowResult]:
        return [r for r in self.results if r.outcome == FAILED]

    def deferred(self) -> list[uuid.UUID]:
        return [r.conversation_id for r in self.results if r.outcome == DEFERRED]


def _write(conn: Connection, processor: Processor, outcome: PageOutcome, *,
           run_name: str | None, mode: Mode) -> tuple[repository.Written, PageOutcome]:
    """Write `outcome` in `mode`; returns what was written and the outcome as written."""
    if mode is Mode.SKIP_LOCKED:
        wanted = [c.conversation_id for c in outcome.changed] + \
                 [f.conversation_id for f in outcome.failed]
        held = set(wanted) - set(queue.lock_conversations(conn, wanted, skip_locked=True))
        outcome = _without(outcome, held)
        written = _write(conn, processor, outcome, run_name=run_name, mode=Mode.NORMAL)[0]
        written.deferred |= held
        return written, outcome
    if mode is Mode.ROW_BY_ROW:
        return _write_row_by_row(conn, processor, outcome, run_name=run_name), outcome
    written = repository.write_changes(
        conn, changed=outcome.changed, failed=outcome.failed, resolved=outcome.resolved,
        run_name=run_name, version=processor.version)
    return written, outcome


def _without(outcome: PageOutcome, ids: set[uuid.UUID]) -> PageOutcome:
    return replace(outcome, changed=[c for c in outcome.changed if c.conversation_id not in ids],
                   failed=[f for f in outcome.failed if f.conversation_id not in ids])


def _write_row_by_row(conn: Connection, processor: Processor, outcome: PageOutcome, *,
                      run_name: str | None) -> repository.Written:
    total = repository.Written()
    refused: list[Failed] = []
    for row in outcome.changed:
        try:
            with conn.begin_nested():
                one = repository.write_changes(
                    conn, changed=[row], failed=[], run_name=run_name,
                    resolved=[row.conversation_id] if row.conversation_id in outcome.resolved
                    else [], version=processor.version)
        except DBAPIError as exc:
            if not is_row_error(exc):
                raise
            refused.append(_refused(row.conversation_id, exc, row.row_version, row.marks))
            continue
        total.updated |= one.updated
        total.stale += one.stale
    failures = repository.write_changes(conn, changed=[], failed=[*outcome.failed, *refused],
                                        resolved=[], run_name=run_name,
                                        version=processor.version)
    total.failed |= failures.failed
    total.stale += failures.stale
    total.refused = {f.conversation_id: f for f in refused}
    return total


def _refused(cid: uuid.UUID, exc: DBAPIError, row_version: str, marks: int | None) -> Failed:
    first = str(exc.orig or exc).strip().splitlines()[0]
    message = f"the database refused the document: {first}"
    return Failed(conversation_id=cid, code=WRITE_FAILED, message=message,
                  details=RawJsonb(orjson.dumps({"sqlstate": _sqlstate(exc)})),
                  report=RawJsonb(orjson.dumps({"errors": [{"code": WRITE_FAILED,
                                                            "message": message, "path": ""}],
                                                "warnings": []})),
                  rewrite_row=True, row_version=row_version, marks=marks)


def write_outcome(conn: Connection, processor: Processor, outcome: PageOutcome, *,
                  run_name: str | None, mode: Mode = Mode.NORMAL) -> Committed:
    """Write a page's outcome inside the caller's transaction, never from stale inputs."""
    written, outcome = _write(conn, processor, outcome, run_name=run_name, mode=mode)
    results = {r.conversation_id: r for r in outcome.results}
    for cid, failure in written.refused.items():
        results[cid] = RowResult(cid, FAILED, failure.code, failure.message)
    marks = dict(outcome.marks)
    left: set[uuid.UUID] = set(written.deferred)
    if written.stale:
        # Read again under the row lock (nobody else can change the row now) and
        # write once more; what another session holds is left to the follower.
        locked = queue.lock_conversations(conn, written.stale, skip_locked=True)
        retry = processor.process(repository.read_by_ids(conn, locked))
        again, retry = _write(conn, processor, retry, run_name=run_name,
                              mode=Mode.NORMAL if mode is Mode.SKIP_LOCKED else mode)
        for cid in written.stale:
            marks.pop(cid, None)
        marks.update(retry.marks)
        for r in retry.results:
            results[r.conversation_id] = r
        for cid, failure in again.refused.items():
            results[cid] = RowResult(cid, FAILED, failure.code, failure.message)
        stale_again = set(written.stale) - {r.conversation_id for r in retry.results}
        stale_again |= set(again.stale)
        queue.mark(conn, sorted(stale_again), why="stale_write")
        left |= stale_again
    for cid in left:
        marks.pop(cid, None)
        results[cid] = RowResult(cid, DEFERRED)
    dequeued = queue.dequeue(conn, marks)
    return Committed(results=list(results.values()), dequeued=dequeued)


# ------------------------------------------------------------ the transaction


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return orig.sqlstate if isinstance(orig, psycopg.Error) else None


def is_row_error(exc: DBAPIError) -> bool:
    """A value of one row was refused (data exception, integrity, a size limit)."""
    state = _sqlstate(exc) or ""
    return state.startswith(("22", "23", "54"))


def is_lock_timeout(exc: DBAPIError) -> bool:
    """A lock or statement timeout, or a query an operator cancelled: worth a retry."""
    return _sqlstate(exc) in ("55P03", "57014")


def commit(conn: Connection, work: Callable[[Connection, Mode], T], *,
           held: Callable[[], list[uuid.UUID]], limits: Limits | None = None,
           stop: threading.Event | None = None, retries: int = LOCK_RETRIES,
           pause_seconds: float = LOCK_PAUSE_SECONDS) -> T:
    """Run `work` in a write transaction of its own, through the fault paths above.

    `held()` names the rows a lock timeout may be waiting for (for the warning).
    """
    repository.prepare_connection(conn, limits)
    mode = Mode.NORMAL
    attempt = 0
    while True:
        attempt += 1
        try:
            with conn.begin():
                return work(conn, mode)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            if mode is not Mode.ROW_BY_ROW and is_row_error(exc):
                log.warning("write.row_refused", error=str(exc.orig).strip().splitlines()[0],
                            message="writing the page row by row to find the refused rows")
                mode = Mode.ROW_BY_ROW
                continue
            if not is_lock_timeout(exc) or mode is Mode.SKIP_LOCKED:
                raise
            if attempt > retries:
                mode = Mode.SKIP_LOCKED
                continue
            ids = held()
            log.warning("write.lock_timeout", attempt=attempt, retries=retries,
                        rows_held=[str(i) for i in ids[:20]], rows_held_count=len(ids),
                        retry_after_seconds=pause_seconds * attempt,
                        error=str(exc.orig).strip().splitlines()[0])
            if stop is not None and stop.wait(pause_seconds * attempt):
                raise
            if stop is None:
                time.sleep(pause_seconds * attempt)


def held_rows(conn: Connection, ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Which of `ids` another session holds right now (a probe, rolled back)."""
    try:
        free = set(queue.lock_conversations(conn, ids, skip_locked=True))
    finally:
        conn.rollback()
    return [i for i in ids if i not in free]


# ------------------------------------------------- enrich by id (follow, API)


@dataclass
class BatchResult:
    committed: Committed
    # Requested ids not locked: absent, or (skip_locked) held by another transaction.
    not_locked: list[uuid.UUID] = field(default_factory=list)

    @property
    def counts(self) -> PageCounts:
        return self.committed.counts

    @property
    def dequeued(self) -> dict[uuid.UUID, float]:
        return self.committed.dequeued

    @property
    def results(self) -> list[RowResult]:
        return self.committed.results


def enrich_batch(conn: Connection, processor: Processor, ids: Sequence[uuid.UUID], *,
                 skip_locked: bool, worker: str | None = None,
                 limits: Limits | None = None) -> BatchResult:
    """Enrich `ids` now; the connection must have no transaction open."""
    wanted = sorted(set(ids))

    def lock(conn: Connection) -> list[uuid.UUID]:
        return queue.lock_conversations(conn, wanted, skip_locked=skip_locked)

    return _enrich(conn, processor, lock, wanted, worker=worker, limits=limits)


def enrich_pending(conn: Connection, processor: Processor, *, limit: int,
                   worker: str | None = None, limits: Limits | None = None) -> BatchResult:
    """Enrich up to `limit` new conversations (status pending) no one else holds."""
    return _enrich(conn, processor, lambda conn: queue.lock_pending(conn, limit=limit), [],
                   worker=worker, limits=limits)


def _enrich(conn: Connection, processor: Processor,
            lock: Callable[[Connection], list[uuid.UUID]], wanted: list[uuid.UUID], *,
            worker: str | None, limits: Limits | None) -> BatchResult:
    def work(conn: Connection, mode: Mode) -> BatchResult:
        locked = lock(conn)
        outcome = processor.process(repository.read_by_ids(conn, locked))
        committed = write_outcome(conn, processor, outcome, run_name=None, mode=mode)
        result = BatchResult(committed=committed,
                             not_locked=sorted(set(wanted) - set(locked)))
        if worker is not None and committed.results:
            queue.record_batch(conn, worker=worker, counts=result.counts)
        return result

    return commit(conn, work, held=lambda: held_rows(conn, wanted), limits=limits)


def log_row_failures(committed: Committed, job: str) -> None:
    """One warning per failed row, one for the rows left for later."""
    for row in committed.failed():
        log.warning(f"{job}.row_failed", conversation_id=str(row.conversation_id),
                    error_code=row.code, message=row.message)
    deferred = committed.deferred()
    if deferred:
        log.warning(f"{job}.rows_deferred", rows=len(deferred),
                    conversation_ids=[str(i) for i in deferred[:20]],
                    message="not written now (their inputs changed during the write, or "
                            "another session held them); left marked for the follower "
                            "and for the next run")
