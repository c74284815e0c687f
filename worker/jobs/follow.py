"""`reenrich follow`: a long-running worker that enriches what the triggers mark.

The loop, per (re)connection:
  connect, LISTEN on the queue channel, then loop: drain (claim a batch,
  enrich it, until nothing is claimable) -> wait for a notification, the
  poll interval or a stop request, whichever comes first.

Notifications only make the wait short: the queue table is the truth, so a
missed notification (or a worker that was down) only delays work until the
next poll or start. Claims are short transactions of their own; a claim
older than the lease is taken over (a crashed worker). A lost connection is
retried forever with capped exponential backoff, logged at each attempt.
SIGTERM/SIGINT finish the current batch, then the loop returns.
"""

from __future__ import annotations

import contextvars
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from sqlalchemy import Engine

from worker.db import queue
from worker.db.engine import backoff_seconds, connect_args, is_connection_error, libpq_url
from worker.db.repository import Limits
from worker.enrichment.processing import Processor
from worker.jobs.store import QueueStore
from worker.jobs.writes import BatchResult, log_row_failures

log = structlog.get_logger("reenrich.follow")

DEFAULT_BATCH_SIZE = 200
APPLICATION_NAME = "reenrich-follow"
WAIT_SLICE_SECONDS = 0.5  # how often a wait looks at the stop request


@dataclass
class FollowOptions:
    poll_interval: float = 5.0
    batch_size: int = DEFAULT_BATCH_SIZE
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 30.0
    limits: Limits = field(default_factory=Limits)
    # Lanes drain side by side, each on its own connection: one enriches (Python)
    # while another's batch is written (the server), as the backfill's reader
    # overlaps its writer. Row locks (SKIP LOCKED) keep them off each other's rows.
    lanes: int = 2


@dataclass
class FollowTotals:
    batches: int = 0
    processed: int = 0
    updated: int = 0  # logged and stored as rows_enriched (stable names for monitoring)
    unchanged: int = 0
    failed: int = 0
    reconnects: int = 0
    latencies: list[float] = field(default_factory=list)  # this heartbeat period only


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class Follower:
    def __init__(self, engine: Engine, url: str, processor: Processor, options: FollowOptions,
                 stop: threading.Event, *, check_schema: Callable[[], None] | None = None
                 ) -> None:
        self.engine, self.url, self.processor = engine, url, processor
        self.options, self.stop = options, stop
        self.check_schema = check_schema
        self.worker = worker_id()
        self.totals = FollowTotals()
        self.registered = False
        self.connected = False  # the current session got as far as LISTEN and registration
        self.next_heartbeat = 0.0
        self.lock = threading.Lock()  # the lanes share the totals
        self.last_batches = 0

    # ----------------------------------------------------------- the service

    def run(self) -> FollowTotals:
        with structlog.contextvars.bound_contextvars(worker=self.worker):
            return self._run()

    def _run(self) -> FollowTotals:
        attempt = 0
        while not self.stop.is_set():
            try:
                self._session()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                # A session that had connected starts the count again.
                attempt = 1 if self.connected else attempt + 1
                self.totals.reconnects += 1
                delay = backoff_seconds(attempt)
                log.warning("follow.reconnecting", attempt=attempt, delay_seconds=delay,
                            error=f"{type(exc).__name__}: {str(exc).strip()}")
                self.stop.wait(delay)
        self._shutdown()
        return self.totals

    def _store(self) -> AbstractContextManager[QueueStore]:
        """A lane's store, on a connection of its own."""
        return QueueStore.connect(self.engine, self.processor, worker=self.worker,
                                  lease_seconds=self.options.lease_seconds,
                                  limits=self.options.limits)

    def _listen(self) -> psycopg.Connection[Any]:
        listener = psycopg.connect(libpq_url(self.url), autocommit=True, connect_timeout=10,
                                   **connect_args(self.url, APPLICATION_NAME))
        queue.listen(listener)
        return listener

    def _session(self) -> None:
        self.connected = False
        with closing(self._listen()) as listener, self._store() as store:
            if not self.registered:
                if self.check_schema is not None:
                    self.check_schema()
                store.register(host=socket.gethostname(), pid=os.getpid(),
                               heartbeat_seconds=self.options.heartbeat_seconds)
                self.registered = True
                log.info("follow.started", channel=queue.CHANNEL,
                         poll_interval=self.options.poll_interval,
                         batch_size=self.options.batch_size)
            else:
                # A batch cut off by the lost connection was rolled back: its
                # claims are free again now, not when the lease ends.
                released = store.rejoin()
                log.info("follow.reconnected", channel=queue.CHANNEL, released=released)
            self.connected = True
            # Whatever was marked while this worker was away (or before the
            # LISTEN took effect) is drained before waiting.
            why = "start"
            while not self.stop.is_set():
                self._drain(store, why)
                self._heartbeat_if_due(store)
                why = self._wait(listener, store)

    def _wait(self, listener: psycopg.Connection[Any], store: QueueStore) -> str:
        """'notify', 'poll' or 'stop': whichever comes first."""
        deadline = time.monotonic() + self.options.poll_interval
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "poll"
            woken = False
            for _ in listener.notifies(timeout=min(remaining, WAIT_SLICE_SECONDS), stop_after=1):
                woken = True
            if woken:
                # One drain serves every notification already here.
                for _ in listener.notifies(timeout=0):
                    pass
                return "notify"
            self._heartbeat_if_due(store)
        return "stop"

    # -------------------------------------------------------------- the work

    def _drain(self, store: QueueStore, why: str) -> None:
        """Work until nothing is left, in every lane: queue marks, new rows, edits."""
        errors: list[BaseException] = []
        done: list[int] = []
        lanes: list[threading.Thread] = []

        def start_lanes() -> None:
            # Only for a burst (a full batch): one new row needs no thread or connection.
            # A thread starts with an empty context: each lane runs in a copy of
            # this one, so its log lines carry the worker id too.
            lanes.extend(threading.Thread(target=contextvars.copy_context().run,
                                          args=(self._lane, errors, done), daemon=True,
                                          name=f"follow-lane-{i}")
                         for i in range(1, max(1, self.options.lanes)))
            for lane in lanes:
                lane.start()

        rows = self._drain_lane(store, on_burst=start_lanes)
        for lane in lanes:
            lane.join()
        rows += sum(done)
        if errors:
            raise errors[0]  # a lost connection: the session reconnects
        if why == "poll" and rows:
            log.info("follow.poll_found_work", rows=rows,
                     message="rows were found by polling, not by a notification")
        elif why == "start" and rows:
            log.info("follow.backlog_drained", rows=rows,
                     message="rows marked while no worker listened")

    def _lane(self, errors: list[BaseException], done: list[int]) -> None:
        try:
            with self._store() as store:
                done.append(self._drain_lane(store))
        except Exception as exc:
            errors.append(exc)

    def _drain_lane(self, store: QueueStore,
                    on_burst: Callable[[], None] | None = None) -> int:
        rows = 0
        while not self.stop.is_set():
            try:
                done = self._marked(store) + self._pending(store) + self._expansions(store)
            except Exception as exc:
                if is_connection_error(exc):
                    raise
                # A statement the database refused: claims stay until the lease
                # ends, so these rows are tried again then, not in a hot loop.
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                log.error("follow.batch_failed", error=error,
                          retry_after_seconds=self.options.lease_seconds)
                store.record_error(error)
                break
            if not done:
                break
            rows += done
            if on_burst is not None and done >= self.options.batch_size:
                on_burst()
                on_burst = None
        return rows

    def _marked(self, store: QueueStore) -> int:
        """One batch of queue marks (edited conversations, logs, reviews); rows done."""
        ids = store.claim_batch(self.options.batch_size)
        if not ids:
            return 0
        result = store.enrich_ids(ids)
        left = [i for i in ids if i not in result.dequeued]
        if left:
            # Held by another transaction, or marked again meanwhile: free the
            # claim so the next pass (any worker) takes them.
            store.release(left)
        self._report(result, len(ids), len(left))
        self._heartbeat_if_due(store)
        return len(result.dequeued)  # 0: what is left is held by others; next wake

    def _pending(self, store: QueueStore) -> int:
        """One batch of new conversations (their status is the mark); rows done."""
        result = store.enrich_pending(self.options.batch_size)
        if result.results:
            self._report(result, len(result.results), 0)
            self._heartbeat_if_due(store)
        return len(result.results)

    def _expansions(self, store: QueueStore) -> int:
        """Expand one scaffolding edit into its conversations, page by page; rows done."""
        edit = store.claim_edit()
        if edit is None:
            return 0
        log.info("follow.expansion_started", kind=edit.kind, scaffold_id=str(edit.scaffold_id),
                 edits=edit.edits, cursor=str(edit.cursor) if edit.cursor else None)
        rows, after = 0, edit.cursor
        while not self.stop.is_set():
            ids = store.edit_users(edit, after=after, limit=self.options.batch_size)
            if ids:
                result = store.enrich_ids(ids)
                if result.not_locked:  # held right now: the queue finishes them
                    store.mark(result.not_locked, why=edit.kind)
                self._report(result, len(ids), len(result.not_locked))
                rows += len(ids)
            if len(ids) < self.options.batch_size:
                finished = store.finish_edit(edit)
                log.info("follow.expansion_finished", kind=edit.kind, rows=rows,
                         scaffold_id=str(edit.scaffold_id), restarted=not finished)
                return rows or 1
            after = ids[-1]
            if not store.advance_edit(edit, after):
                log.info("follow.expansion_restarted", kind=edit.kind, rows=rows,
                         scaffold_id=str(edit.scaffold_id),
                         message="edited again while expanding: starting over")
                return rows or 1
            self._heartbeat_if_due(store)
        store.release_edit(edit)
        return rows

    def _report(self, result: BatchResult, claimed: int, left: int) -> None:
        with self.lock:
            self._report_locked(result, claimed, left)

    def _report_locked(self, result: BatchResult, claimed: int, left: int) -> None:
        counts = result.counts
        t = self.totals
        t.batches += 1
        t.processed += counts.processed
        t.updated += counts.updated
        t.unchanged += counts.unchanged
        t.failed += counts.failed
        latencies = sorted(result.dequeued.values())
        t.latencies.extend(latencies)
        log_row_failures(result.committed, "follow")
        log.info("follow.batch", rows=claimed, enriched=counts.updated,
                 unchanged=counts.unchanged, failed=counts.failed, dequeued=len(latencies),
                 requeued=left,
                 mark_to_write_ms_median=_ms(statistics.median(latencies)) if latencies else None,
                 mark_to_write_ms_max=_ms(latencies[-1]) if latencies else None)

    def _heartbeat_if_due(self, store: QueueStore) -> None:
        # Any lane may beat (on its own connection); the lock makes it one per period.
        with self.lock:
            now = time.monotonic()
            if now < self.next_heartbeat:
                return
            self.next_heartbeat = now + self.options.heartbeat_seconds
            t = self.totals
            period = {"batches": t.batches, "batches_since_last": t.batches - self.last_batches,
                      "rows_processed": t.processed, "rows_enriched": t.updated,
                      "mark_to_write_ms_p95": _ms(statistics.quantiles(t.latencies, n=20)[-1])
                      if len(t.latencies) >= 2 else None}
            self.last_batches = t.batches
            t.latencies.clear()
        stats = store.heartbeat()
        log.info("follow.heartbeat", queue_depth=stats.depth, queue_claimed=stats.claimed,
                 **period)

    def _shutdown(self) -> None:
        if not self.registered:
            return
        try:
            with self._store() as store:
                store.stop()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning("follow.stop_unrecorded", error=f"{type(exc).__name__}: {exc}",
                        message="the database is unreachable: this worker stays listed as "
                                "running until its heartbeat is stale")
        t = self.totals
        log.info("follow.stopped", batches=t.batches, rows_processed=t.processed,
                 rows_enriched=t.updated, rows_unchanged=t.unchanged, rows_failed=t.failed,
                 reconnects=t.reconnects)


def run_follow(engine: Engine, url: str, processor: Processor, options: FollowOptions,
               stop: threading.Event, *, check_schema: Callable[[], None] | None = None
               ) -> FollowTotals:
    return Follower(engine, url, processor, options, stop, check_schema=check_schema).run()
