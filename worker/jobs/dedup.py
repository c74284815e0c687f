"""`reenrich dedup`: bring signatures, verified pairs and clusters up to date.

One run, four steps, each committed as it goes so an interrupted run loses
nothing it finished:
1. signatures: the table in id order, windows of WINDOW rows. A row not
   updated since it was signed (same xmin) costs nothing; for an updated
   row PostgreSQL hashes its turns, and only rows with no signature of this
   method or changed turns are sent here. A row whose turns changed but
   whose text did not (an emotion label edited) keeps its signature.
2. buckets: if the threshold asks for another banding, every distinct
   text's buckets are rebuilt from its stored signature (no text is read).
3. candidates: text pairs sharing a bucket with a pending text, not verified
   yet, are verified with the exact Jaccard index and stored.
4. clusters: the connected components of the pairs at or above the
   threshold (and of identical texts), rewritten in one transaction.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, Engine

from worker.dataset import dedup
from worker.dataset.dedup import Scope, Source
from worker.dataset.dedup_stats import report
from worker.db import dedup as db
from worker.errors import ReenrichError

log = structlog.get_logger("reenrich.dedup")

WINDOW = 1000  # rows scanned per transaction in step 1
ANALYZE_SHARE = 0.1  # refresh statistics when more of the table than this was signed
SHINGLE_CACHE = 512  # texts whose shingle sets are kept while verifying
TOP_CELLS = 10


class DedupError(ReenrichError):
    """Dedup cannot run now; the message says why and what to do."""


@dataclass
class Counts:
    conversations: int = 0
    signatures_computed: int = 0
    signatures_reused: int = 0
    texts_rebucketed: int = 0
    candidate_pairs: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------ step 1


def _parse(turns: str) -> Any:
    try:
        return orjson.loads(turns)
    except orjson.JSONDecodeError:  # jsonb text is always JSON; kept for safety
        return None


@dataclass(frozen=True)
class _Read:
    """One window as read: its updated rows and the turns of those whose turns changed."""

    scanned: int
    touched: list[db.Seen]  # updated, same turns
    changed: list[tuple[db.Seen, str]]  # updated, turns changed (JSON text)


@dataclass(frozen=True)
class _Signed:
    scanned: int
    sketches: list[dedup.Sketch]
    touched: list[db.Seen]  # updated, same turns
    retouched: list[tuple[db.Seen, tuple[tuple[bytes, str], ...]]]  # other turns, same text
    replaced: list[bytes]  # text hashes the new signatures replace


def _sign_read(read: _Read) -> _Signed:
    """The pure part of step 1 (runs in a worker process with --workers > 1)."""
    fresh: list[tuple[Source, str]] = []
    retouched = []
    for seen, turns in read.changed:
        source = Source(seen.conversation_id, seen.row_xmin, seen.source_hash, _parse(turns),
                        seen.old_text_hash)
        body = source.text
        if seen.old_text_hash is not None and seen.old_text_hash == dedup.text_hash(body):
            retouched.append((seen, dedup.responses(source.turns)))  # e.g. an emotion label
        else:
            fresh.append((source, body))
    return _Signed(scanned=read.scanned, sketches=dedup.sketch_page(fresh),
                   touched=read.touched, retouched=retouched,
                   replaced=[s.old_text_hash for s, _ in fresh if s.old_text_hash is not None])


def _read_window(engine: Engine, after: uuid.UUID | None) -> tuple[_Read, uuid.UUID | None]:
    with engine.begin() as conn:
        window = db.read_window(conn, after, WINDOW, dedup.METHOD)
        changed = [seen for seen in window.updated if seen.turns_changed]
        turns = db.turns_of(conn, [seen.conversation_id for seen in changed])
    read = _Read(scanned=window.scanned,
                 touched=[seen for seen in window.updated if not seen.turns_changed],
                 changed=[(seen, turns.get(seen.conversation_id, "null")) for seen in changed])
    return read, window.last


def _write_signed(engine: Engine, signed: _Signed, layout: dedup.Layout, counts: Counts) -> None:
    with engine.begin() as conn:
        db.write_sketches(conn, signed.sketches, dedup.METHOD, layout)
        db.touch(conn, signed.touched)
        db.retouch(conn, [seen for seen, _ in signed.retouched],
                   [found for _, found in signed.retouched])
        db.drop_orphans(conn, signed.replaced)
    counts.signatures_computed += len(signed.sketches)
    counts.signatures_reused += signed.scanned - len(signed.sketches)
    counts.conversations += signed.scanned
    log.debug("dedup.signed", scanned=counts.conversations,
              computed=counts.signatures_computed)


def _windows(engine: Engine) -> Iterator[_Read]:
    after: uuid.UUID | None = None
    while True:
        read, after = _read_window(engine, after)
        if not read.scanned:
            return
        yield read


def _sign(engine: Engine, layout: dedup.Layout, counts: Counts, workers: int) -> None:
    if workers <= 1:
        for read in _windows(engine):
            _write_signed(engine, _sign_read(read), layout, counts)
    else:
        _sign_in_pool(engine, layout, counts, workers)
    if counts.signatures_computed > ANALYZE_SHARE * counts.conversations:
        with engine.begin() as conn:
            db.analyze(conn)  # autovacuum would, later: the next step needs the sizes now


def _sign_in_pool(engine: Engine, layout: dedup.Layout, counts: Counts, workers: int) -> None:
    """Windows signed by `workers` processes while this one reads and writes; at most
    `workers` + 1 windows are held at a time, so memory stays flat."""
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    pending: deque[Future[_Signed]] = deque()
    context = multiprocessing.get_context("spawn")  # no copy of this process's connections
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for read in _windows(engine):
            pending.append(pool.submit(_sign_read, read))
            while len(pending) > workers or (pending and pending[0].done()):
                _write_signed(engine, pending.popleft().result(), layout, counts)
        while pending:
            _write_signed(engine, pending.popleft().result(), layout, counts)


# ------------------------------------------------------------ steps 2 and 3


def _rebucket(engine: Engine, layout: dedup.Layout, counts: Counts) -> None:
    while True:
        with engine.begin() as conn:
            stale = db.stale_layout(conn, layout.name, WINDOW)
            if not stale:
                return
            db.rebucket(conn, stale, layout)
        counts.texts_rebucketed += len(stale)


class _Shingles:
    """Shingle sets of texts by hash, read as needed, a bounded number kept."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sets: dict[bytes, set[str]] = {}

    def load(self, hashes: set[bytes]) -> None:
        missing = [h for h in hashes if h not in self.sets]
        if len(self.sets) + len(missing) > SHINGLE_CACHE:
            self.sets = {h: s for h, s in self.sets.items() if h in hashes}
        for h, turns in db.turns_of_texts(self.conn, missing).items():
            self.sets[h] = dedup.shingles(dedup.conversation_text(
                dedup.turn_contents(_parse(turns))))


def _verify_batches(batches: Iterator[list[tuple[bytes, bytes]]], shingles: _Shingles,
                    write: Callable[[list[tuple[bytes, bytes, float]]], None]) -> int:
    found = 0
    for batch in batches:
        for start in range(0, len(batch), SHINGLE_CACHE // 2):
            part = batch[start:start + SHINGLE_CACHE // 2]
            shingles.load({h for pair in part for h in pair})
            verified = [(a, b, dedup.jaccard(shingles.sets[a], shingles.sets[b]))
                        for a, b in part if a in shingles.sets and b in shingles.sets]
            write(verified)
            found += len(part)
    return found


def _verify(engine: Engine, counts: Counts) -> None:
    with engine.connect() as reader, engine.connect() as writer:
        def write(pairs: list[tuple[bytes, bytes, float]]) -> None:
            db.insert_pairs(writer, pairs)
            writer.commit()

        with reader.begin():
            counts.candidate_pairs = _verify_batches(db.candidates(reader), _Shingles(writer),
                                                     write)
        db.clear_pending(writer)
        writer.commit()


# ------------------------------------------------------------ step 4 and the run


def _cluster(engine: Engine, run_id: int, threshold: float, scope: Scope
             ) -> tuple[list[dedup.Cluster], int]:
    with engine.begin() as conn:
        db.no_jit(conn)
        members = db.members(conn, threshold)
        near = db.near_pairs(conn, threshold)
        clusters = dedup.make_clusters(members, near, scope)
        whole = clusters if scope is Scope.TABLE else dedup.make_clusters(
            members, near, Scope.TABLE)
        db.replace_clusters(conn, run_id, threshold, scope.value, clusters)
    return clusters, sum(1 for c in whole if c.cells > 1)


def _timed(counts: Counts, name: str, step: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = step()
    counts.seconds[name] = round(time.perf_counter() - start, 3)
    return result


def run_dedup(engine: Engine, threshold: float = dedup.DEFAULT_THRESHOLD,
              scope: Scope = Scope.TABLE, workers: int = 1) -> dict[str, Any]:
    """One dedup run; its summary (what `--json` prints)."""
    if not 0 < threshold <= 1:
        raise DedupError(f"the threshold must be in (0, 1], got {threshold}")
    if workers < 1:
        raise DedupError(f"--workers must be at least 1, got {workers}")
    layout = dedup.choose_layout(threshold)
    counts = Counts()
    with engine.connect() as lock:
        if not db.try_lock(lock):
            raise DedupError("another `reenrich dedup` is running on this database: wait "
                             "for it to finish, then run again")
        lock.commit()
        try:
            with engine.begin() as conn:
                run_id = db.start_run(conn, threshold, scope.value, dedup.METHOD, layout.name)
            log.info("dedup.started", run=run_id, threshold=threshold, scope=scope.value,
                     layout=layout.name, method=dedup.METHOD)
            try:
                summary = _run_steps(engine, run_id, threshold, scope, layout, counts,
                                     workers)
            except BaseException as exc:
                with engine.begin() as conn:
                    db.fail_run(conn, run_id, str(exc) or type(exc).__name__)
                raise
        finally:
            db.unlock(lock)
            lock.commit()
    log.info("dedup.finished", run=run_id, clusters=summary["clusters"],
             conversations_in_clusters=summary["conversations_in_clusters"],
             signatures_computed=counts.signatures_computed, seconds=counts.seconds)
    return summary


def _run_steps(engine: Engine, run_id: int, threshold: float, scope: Scope,
               layout: dedup.Layout, counts: Counts, workers: int) -> dict[str, Any]:
    start = time.perf_counter()
    _timed(counts, "signatures", lambda: _sign(engine, layout, counts, workers))
    _timed(counts, "buckets", lambda: _rebucket(engine, layout, counts))
    _timed(counts, "verify", lambda: _verify(engine, counts))
    _, cross_cell = _timed(counts, "clusters",
                           lambda: _cluster(engine, run_id, threshold, scope))
    counts.seconds["total"] = round(time.perf_counter() - start, 3)
    with engine.begin() as conn:
        summary = _summary(conn, counts, threshold, scope, layout, cross_cell)
        summary["run"] = run_id
        db.finish_run(conn, run_id, orjson.dumps(summary, default=str).decode())
    return summary


def _summary(conn: Connection, counts: Counts, threshold: float, scope: Scope,
             layout: dedup.Layout, cross_cell: int) -> dict[str, Any]:
    found = report(conn)
    found["cross_cell_clusters"] = cross_cell  # whole-table clusters spanning cells
    found["duplicate_rates"]["cell"] = found["duplicate_rates"]["cell"][:TOP_CELLS]
    return {
        "signatures_computed": counts.signatures_computed,
        "signatures_reused": counts.signatures_reused,
        "clusters": found.pop("clusters"),
        "conversations_in_clusters": found.pop("conversations_in_clusters"),
        "threshold": threshold,
        "scope": scope.value,
        "conversations": counts.conversations,
        "texts_rebucketed": counts.texts_rebucketed,
        "candidate_pairs_verified": counts.candidate_pairs,
        "layout": {"bands": layout.bands, "rows": layout.rows, "num_perm": dedup.NUM_PERM,
                   "recall_at_threshold": round(layout.candidate_probability(threshold), 4)},
        "method": dedup.METHOD,
        **found,
        "seconds": counts.seconds,
    }
