"""The backfill loop: claim a slice, page through it, enrich, commit page + checkpoint.

Reading the page after next, enriching the next one and writing the current
one overlap (a fetch thread with its own connection, an enrich thread, a
queue of one page between stages), so Python's work hides behind the
server's and the server's reads behind its writes. Each page's writes, its cursor and
its counts commit in one transaction: a process killed at any instant
resumes exactly after the last committed page.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Generic, TypeVar

import structlog
from sqlalchemy import Engine

from worker.db.checkpoints import LeaseLost, Run, Slice
from worker.db.engine import backoff_seconds, is_connection_error
from worker.db.repository import Filters, Limits
from worker.enrichment.processing import FAILED, PageOutcome, Processor, tally
from worker.enrichment.rows import PageCounts, StoredRow
from worker.errors import (
    EXIT_CANCELLED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_ROWS_FAILED,
    EXIT_RUN_BUSY,
    DatabaseError,
    ReenrichError,
)
from worker.jobs import writes as batch
from worker.jobs.follow import worker_id
from worker.jobs.pacing import Pacer
from worker.jobs.progress import Progress
from worker.jobs.run_state import FINISHED, RunStatus
from worker.jobs.store import RunStore, read_pages

log = structlog.get_logger("reenrich.backfill")
T = TypeVar("T")

SLICES_PER_WORKER = 4
UUID_SPACE = 1 << 128


class RunBusy(ReenrichError):
    """Every unfinished part of this run is held by another live process."""

    exit_code = EXIT_RUN_BUSY


class DatabaseGone(DatabaseError):
    """The database stayed unreachable longer than the reconnect budget."""


@dataclass
class BackfillOptions:
    run_name: str | None = None
    filters: Filters = field(default_factory=Filters)
    batch_size: int | None = None
    dry_run: bool = False
    restart: bool = False
    workers: int = 1
    target_page_seconds: float = 2.0
    max_rows_per_second: float | None = None
    sleep_seconds: float = 0.0
    lease_seconds: float = 120.0
    limits: Limits = field(default_factory=Limits)
    reconnect_seconds: float = 60.0  # how long a lost database is waited for
    max_pages: int | None = None  # stop after N pages (tests: deterministic interruption)
    join: bool = False  # a helper process of a --workers run: nothing left to claim is fine
    child_args: list[str] = field(default_factory=list)  # argv for --workers children


@dataclass
class BackfillResult:
    run_name: str
    status: str  # a RunStatus, or "dry_run"
    processed: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    deferred: int = 0
    exit_code: int = EXIT_OK

    def add(self, counts: PageCounts) -> None:
        self.processed += counts.processed
        self.updated += counts.updated
        self.unchanged += counts.unchanged
        self.failed += counts.failed
        self.deferred += counts.deferred


def slice_bounds(count: int) -> list[tuple[uuid.UUID | None, uuid.UUID | None]]:
    """Split the uuid key space into `count` ranges: (exclusive lower, inclusive upper)."""
    edges = [UUID_SPACE * i // count for i in range(count + 1)]
    return [(uuid.UUID(int=edges[i] - 1) if i else None,
             uuid.UUID(int=edges[i + 1] - 1) if i < count - 1 else None)
            for i in range(count)]


def new_run_name() -> str:
    return "backfill-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]




# ---------------------------------------------------------------- reading


@dataclass
class _Fetched:
    rows: list[StoredRow]
    end: bool  # the slice has no rows after this page
    read_seconds: float


@dataclass
class _Page:
    outcome: PageOutcome
    rows: int
    end: bool
    read_seconds: float  # reading and enriching it


class _Halted(Exception):
    """The consumer stopped the pipeline; the producer thread ends quietly."""


class _Ahead(threading.Thread, Generic[T]):
    """Runs a producer in its own thread, one item ahead of its consumer.

    Two of these make the backfill's pipeline: one reads pages (waiting on the
    server), one enriches them (Python), while the caller writes: each stage
    hides behind the slowest one.
    """

    def __init__(self, name: str, produce: Callable[[], Iterator[T]],
                 halt: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.produce, self.halt = produce, halt
        self.items: queue.Queue[T | BaseException] = queue.Queue(maxsize=1)

    def run(self) -> None:
        try:
            for item in self.produce():
                if not self._put(item):
                    return
        except _Halted:
            return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: T | BaseException) -> bool:
        while not self.halt.is_set():
            try:
                self.items.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> T:
        while True:
            try:
                item = self.items.get(timeout=0.2)
            except queue.Empty:
                if self.halt.is_set():
                    raise _Halted() from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item


def _fetch(engine: Engine, after: uuid.UUID | None, upper: uuid.UUID | None, filters: Filters,
           pacer: Pacer) -> Iterator[_Fetched]:
    """Pages of the key range (after, upper], in key order, sized by the pacer."""
    started = time.monotonic()
    for rows, size in read_pages(engine, after=after, upper=upper, filters=filters,
                                 next_size=pacer.next_size):
        yield _Fetched(rows, len(rows) < size, time.monotonic() - started)
        started = time.monotonic()


def _enrich(fetcher: _Ahead[_Fetched], processor: Processor) -> Iterator[_Page]:
    while True:
        fetched = fetcher.get()
        started = time.monotonic()
        outcome = processor.process(fetched.rows)
        yield _Page(outcome, len(fetched.rows), fetched.end,
                    fetched.read_seconds + time.monotonic() - started)
        if fetched.end:
            return


# ---------------------------------------------------------------- writing


class _SliceWorker:
    def __init__(self, engine: Engine, store: RunStore, processor: Processor, run: Run,
                 options: BackfillOptions, owner: str, stop: threading.Event,
                 progress: Progress, totals: BackfillResult) -> None:
        self.engine, self.store, self.processor, self.run = engine, store, processor, run
        self.options, self.owner, self.stop = options, owner, stop
        self.progress, self.totals = progress, totals
        self.pacer = Pacer(fixed_size=options.batch_size,
                           target_seconds=options.target_page_seconds,
                           max_rows_per_second=options.max_rows_per_second,
                           sleep_seconds=options.sleep_seconds)
        self.pages_done = 0
        self.cancelled = False

    def process(self, sl: Slice) -> bool:
        """Work one slice to its end; False if stopped before the end."""
        halt = threading.Event()
        fetcher = _Ahead(f"fetch-{sl.slice_no}",
                         lambda: _fetch(self.engine, sl.cursor or sl.lower_bound, sl.upper_bound,
                                        self.run.filters, self.pacer), halt)
        reader = _Ahead(f"reader-{sl.slice_no}", lambda: _enrich(fetcher, self.processor), halt)
        fetcher.start()
        reader.start()
        last_commit = time.monotonic()
        try:
            while True:
                if self.stop.is_set() or self._page_budget_spent():
                    return False
                page = reader.get()
                committed, status = self.store.commit_page(self.run.name, sl, page.outcome,
                                                           done=page.end)
                sl = replace(sl, cursor=page.outcome.last_id or sl.cursor)
                now = time.monotonic()
                self.pages_done += 1
                self._report(sl, page, committed, now - last_commit)
                pause = self.pacer.after_page(page.rows, now - last_commit)
                last_commit = now
                if page.end:
                    return True
                if status is RunStatus.CANCELLED:
                    log.warning("backfill.cancelled", message="run cancelled by an operator")
                    self.cancelled = True
                    return False
                if pause > 0 and self.stop.wait(pause):
                    return False
        finally:
            halt.set()
            reader.join(timeout=30)
            fetcher.join(timeout=30)

    def _page_budget_spent(self) -> bool:
        return self.options.max_pages is not None and self.pages_done >= self.options.max_pages

    def _report(self, sl: Slice, page: _Page, committed: batch.Committed,
                seconds: float) -> None:
        counts = committed.counts
        self.totals.add(counts)
        self.progress.clear()
        batch.log_row_failures(committed, "backfill")
        if page.outcome.scaffolded:
            log.info("backfill.scaffolding_added", rows=page.outcome.scaffolded,
                     message="Added scaffolding to training pairs")
        self.progress.done += counts.processed
        rate = self.progress.rate()
        log.info("backfill.page", slice=sl.slice_no, rows=counts.processed,
                 updated=counts.updated, unchanged=counts.unchanged, failed=counts.failed,
                 deferred=counts.deferred,
                 page_seconds=round(seconds, 3), read_seconds=round(page.read_seconds, 3),
                 batch_size=self.pacer.size, rows_per_second=round(rate, 1),
                 eta_seconds=self.progress.eta(), enriched_mb=round(
                     page.outcome.enriched_bytes / 1e6, 2))
        self.progress.draw()


# ------------------------------------------------------------------ the run


def _resolve_run(store: RunStore, options: BackfillOptions) -> tuple[Run, bool]:
    """The run this invocation works on, and whether it is already finished."""
    filters = options.filters
    name = options.run_name
    existing = store.find_run(name, filters)
    if existing is None:
        name = name or new_run_name()
        workers = max(1, options.workers)
        slices = 1 if workers == 1 else workers * SLICES_PER_WORKER
        run = store.create_run(name=name, filters=filters, workers=workers,
                               bounds=slice_bounds(slices))
        log.info("backfill.started", run=name, total=run.total, workers=workers,
                 slices=slices, filters=filters.as_json())
        return run, False
    if name is None:
        log.info("backfill.resuming", run=existing.name, status=existing.status,
                 processed=existing.processed, total=existing.total)
    if options.restart:
        restarted = store.restart_run(existing)
        if restarted is None:
            raise RunBusy(f"run {existing.name!r} is being processed by another process: "
                          "wait for it or stop it before --restart")
        log.info("backfill.restarted", run=existing.name, total=restarted.total)
        return restarted, False
    if existing.status in FINISHED:
        log.info("backfill.already_finished", run=existing.name, status=existing.status,
                 hint="pass --restart to run it again")
        return existing, True
    return existing, False


def _spawn_children(options: BackfillOptions, run: str) -> list[subprocess.Popen[bytes]]:
    children = []
    for _ in range(max(0, options.workers - 1)):
        argv = [sys.executable, "-m", "worker", "backfill", "--run", run, "--join",
                *options.child_args]
        children.append(subprocess.Popen(argv))
    return children


def run_backfill(engine: Engine, processor: Processor, options: BackfillOptions,
                 stop: threading.Event) -> BackfillResult:
    if options.dry_run:
        return dry_run(engine, processor, options, stop)
    owner = worker_id()  # named like a follow worker: host, pid, a random tag
    store = RunStore.open(engine, processor, owner=owner, lease_seconds=options.lease_seconds,
                          limits=options.limits, stop=stop)
    try:
        run, finished = _resolve_run(store, options)
        if finished:  # nothing to do: this invocation processed nothing
            return BackfillResult(run_name=run.name, status=run.status)
        with structlog.contextvars.bound_contextvars(run=run.name, worker=owner):
            children = _spawn_children(options, run.name) if options.workers > 1 else []
            result = _work_resilient(engine, store, processor, run, options, stop)
            for child in children:
                if stop.is_set():
                    child.terminate()
                code = child.wait()
                if code not in (EXIT_OK, EXIT_ROWS_FAILED, EXIT_INTERRUPTED, EXIT_CANCELLED):
                    log.error("backfill.worker_failed", pid=child.pid, exit_code=code)
                    result.exit_code = max(result.exit_code, 1)
            if children and result.exit_code != 1:
                # The helpers may have finished the run after this process ran out of slices.
                final = store.get_run(run.name)
                if final is not None:
                    result = _final_result(final, result.processed)
        return result
    finally:
        store.close()


EXIT_BY_STATUS = {
    RunStatus.SUCCEEDED: EXIT_OK,
    RunStatus.FINISHED_WITH_FAILURES: EXIT_ROWS_FAILED,
    RunStatus.INTERRUPTED: EXIT_INTERRUPTED,
    RunStatus.CANCELLED: EXIT_CANCELLED,
    RunStatus.FAILED: 1,
    RunStatus.RUNNING: EXIT_OK,  # other processes carry on with it
}


def _final_result(run: Run, this_process: int) -> BackfillResult:
    result = BackfillResult(run_name=run.name, status=run.status, processed=run.processed,
                            updated=run.updated, unchanged=run.unchanged, failed=run.failed,
                            deferred=run.deferred, exit_code=EXIT_BY_STATUS[run.status])
    log.info("backfill.workers_done", status=run.status, processed=run.processed,
             this_process=this_process)
    return result


@dataclass(frozen=True)
class Ending:
    """What a process does with the run once it has no slice left to work on."""

    move_to: RunStatus | None  # None: leave the status as it is
    busy: bool  # every unfinished slice is held by another live process: refuse


def end_of_work(*, slices_left: int, others_working: bool, claimed_any: bool,
                joining: bool, cancelled: bool) -> Ending:
    """The end-of-run decision, as a pure function (its table is tested)."""
    if slices_left == 0:
        return Ending(RunStatus.SUCCEEDED, busy=False)  # finish_run picks the exact status
    if others_working:
        return Ending(None, busy=not claimed_any and not joining)
    if cancelled:
        return Ending(None, busy=False)
    return Ending(RunStatus.INTERRUPTED, busy=False)


def _work_resilient(engine: Engine, store: RunStore, processor: Processor, run: Run,
                    options: BackfillOptions, stop: threading.Event) -> BackfillResult:
    """`_work`, reconnecting with backoff while the database is away (a restart)."""
    totals = BackfillResult(run_name=run.name, status=RunStatus.RUNNING)
    progress = Progress(total=max(0, (run.total or 0) - run.processed))
    worker = _SliceWorker(engine, store, processor, run, options, store.owner, stop, progress,
                          totals)
    lost_since: float | None = None
    attempt = 0
    while True:
        pages_before = worker.pages_done
        try:
            return _work(store, run, options, stop, worker)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            progress.clear()
            if worker.pages_done > pages_before or lost_since is None:
                lost_since, attempt = time.monotonic(), 0
            error = _one_line(exc)
            waited = time.monotonic() - lost_since
            if waited >= options.reconnect_seconds or stop.is_set():
                _record_interrupted(store, run.name, error)
                raise DatabaseGone(
                    f"lost the database and could not reconnect for {waited:.0f} s ({error}); "
                    f"run {run.name} stopped after its last committed page: resume with "
                    f"`reenrich backfill --run {run.name}` once the database is back") from exc
            attempt += 1
            delay = min(backoff_seconds(attempt), options.reconnect_seconds - waited)
            log.warning("backfill.reconnecting", attempt=attempt, delay_seconds=round(delay, 2),
                        waited_seconds=round(waited, 1), error=error)
            store.reset()
            stop.wait(max(0.0, delay))


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}"


def _record_interrupted(store: RunStore, run: str, error: str) -> None:
    """Best effort: the database may still be away (then `status` shows it running)."""
    store.reset()
    try:
        store.move_run(run, RunStatus.INTERRUPTED, f"database lost: {error}")
    except Exception as exc:
        log.debug("backfill.record_interrupted_failed", error=_one_line(exc))


def _work(store: RunStore, run: Run, options: BackfillOptions, stop: threading.Event,
          worker: _SliceWorker) -> BackfillResult:
    totals, progress = worker.totals, worker.progress
    claimed_any = False
    try:
        while not stop.is_set() and not worker._page_budget_spent():
            sl = store.claim_slice(run.name)
            if sl is None:
                break
            claimed_any = True
            log.info("backfill.slice_claimed", slice=sl.slice_no,
                     cursor=str(sl.cursor) if sl.cursor else None)
            if not worker.process(sl):
                store.release_slice(run.name, sl.slice_no)
                break
    except LeaseLost as exc:
        log.error("backfill.lease_lost", error=str(exc))
        progress.close()
        totals.status, totals.exit_code = RunStatus.RUNNING, 1
        return totals
    except Exception as exc:
        if is_connection_error(exc):
            raise
        progress.close()
        store.reset()
        error = _one_line(exc)
        store.move_run(run.name, RunStatus.FAILED, error)
        log.error("backfill.failed", error=error,
                  hint="fix the cause, then run the same command to resume")
        raise
    progress.close()
    return _end(store, run, options, totals, claimed_any=claimed_any,
                cancelled=worker.cancelled)


def _end(store: RunStore, run: Run, options: BackfillOptions, totals: BackfillResult, *,
         claimed_any: bool, cancelled: bool) -> BackfillResult:
    endings: list[Ending] = []

    def decide(slices_left: int, others: list[str]) -> RunStatus | None:
        endings.append(end_of_work(slices_left=slices_left, others_working=bool(others),
                                   claimed_any=claimed_any, joining=options.join,
                                   cancelled=cancelled))
        return endings[-1].move_to

    settled = store.settle(run.name, decide)
    ending, left, busy, final = endings[-1], settled.slices_left, settled.others, settled.run
    if ending.busy:
        log.error("backfill.run_busy", owners=busy,
                  message=f"run {run.name!r} is being processed by another process")
        raise RunBusy(f"run {run.name!r} is being processed by {', '.join(busy)}; "
                      "wait for it, or stop it first")
    totals.status = final.status
    if left and busy:
        totals.status, totals.exit_code = RunStatus.RUNNING, EXIT_OK
        return totals
    if left:
        if final.status is RunStatus.INTERRUPTED:
            log.warning("backfill.interrupted", processed=totals.processed, slices_left=left,
                        hint=f"resume with: reenrich backfill --run {run.name}")
        totals.exit_code = EXIT_BY_STATUS[final.status]
        return totals
    log.info("backfill.finished", status=final.status, processed=final.processed,
             updated=final.updated, unchanged=final.unchanged, failed=final.failed,
             deferred=final.deferred, total=final.total, this_process=totals.processed)
    totals.processed, totals.updated = final.processed, final.updated
    totals.unchanged, totals.failed = final.unchanged, final.failed
    totals.deferred = final.deferred
    totals.exit_code = EXIT_BY_STATUS[final.status]
    return totals


def dry_run(engine: Engine, processor: Processor, options: BackfillOptions,
            stop: threading.Event) -> BackfillResult:
    """Compute everything, write nothing: what a real run would change."""
    result = BackfillResult(run_name="dry-run", status="dry_run")
    pacer = Pacer(fixed_size=options.batch_size)
    for fetched in _fetch(engine, None, None, options.filters, pacer):
        outcome = processor.process(fetched.rows)
        result.add(tally(outcome.results))  # as the write would count them
        for row in outcome.results:
            if row.outcome == FAILED:
                log.warning("backfill.row_would_fail", conversation_id=str(row.conversation_id),
                            error_code=row.code, message=row.message)
        if stop.is_set():
            break
    log.info("backfill.dry_run", processed=result.processed, would_update=result.updated,
             unchanged=result.unchanged, would_fail=result.failed)
    result.exit_code = EXIT_ROWS_FAILED if result.failed else EXIT_OK
    return result
