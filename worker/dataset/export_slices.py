"""`reenrich export --workers N`: the stream pass in N key-range slices, written in parallel.

The selection pass runs once, as with one worker (filters, review and dedup
rules, the sample and its splits), and decides which conversations are
exported. Their ids are put in export order (created_at, conversation_id:
`worker.db.dataset.export_order`) and cut into N contiguous slices of about
the same number of conversations. Each slice is rendered by its own process
(rendering is CPU-bound Python: threads would share one core), which builds
its own engine from the database URL and reads its documents on its own
connection, inside the export's snapshot (`pg_export_snapshot` in the
selecting transaction, `SET TRANSACTION SNAPSHOT` in each slice), so every
slice sees exactly the rows the selection pass saw.

A slice writes its part of each file beside the final path (JSON Lines,
full-json: `.<name>.part-<k>.tmp-<pid>`, rows only, no head or tail) or its
Parquet shards under temporary names in `DIR/data`. When every slice is done
the parts are put together in slice order: a JSON Lines file is the parts
concatenated under the head (`--meta`, full-json's metadata, computed from
all slices) and renamed into place, byte for byte the file one worker
writes; Parquet shards are kept as shards and numbered in slice order
(`<split>-00000-of-0000M.parquet`, ...), so the rows are the same and in the
same order. The slices' counts and lengths are summed into the one report.

If any slice fails, the others are told to stop, every part is removed and
the export fails with one line (`ExportSliceError`); nothing is left at the
target and no version is recorded.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection
from sqlalchemy.pool import NullPool

from worker.dataset import export_files, hub
from worker.dataset.export_report import ExportReport, SplitTally
from worker.dataset.sampling import SamplePlan, StratumKey
from worker.db import dataset
from worker.db.engine import database_error, make_engine
from worker.errors import ReenrichError

log = structlog.get_logger("reenrich.export")

CHECK_EVERY = 50  # documents between two looks at the stop signal

_stop: Event | None = None  # set in each slice process (`_start_process`)


class ExportSliceError(export_files.ExportError):
    """A slice of `export --workers` failed; nothing was written."""


class SliceStopped(export_files.ExportError):
    """A slice stopped because another one failed (never shown)."""


@dataclass(frozen=True)
class SliceTask:
    """One slice: what its process needs (sent by pickle; no connection, no engine)."""

    index: int
    count: int
    url: str
    snapshot: str
    owner: int  # the exporting process: its pid names the part files
    options: export_files.ExportOptions
    splits: tuple[str, ...]
    ids: bytes  # 16 bytes per conversation, in export order
    sides: tuple[str, ...] | None  # the sample's split of each, when there is a plan
    strata: tuple[StratumKey | None, ...] | None

    def conversation_ids(self) -> list[uuid.UUID]:
        return [uuid.UUID(bytes=self.ids[i:i + 16]) for i in range(0, len(self.ids), 16)]


@dataclass(frozen=True)
class SinkPart:
    """What a slice wrote for one split: a body file, or Parquet shards."""

    rows: int
    path: Path | None = None  # JSON Lines, full-json
    shards: tuple[Path, ...] = ()  # Parquet, under temporary names
    num_bytes: int = 0
    state: dict[str, Any] | None = None  # what the file's head needs (full-json)


@dataclass
class SliceOutcome:
    index: int
    report: ExportReport
    written: list[tuple[uuid.UUID, str]]
    parts: dict[str, SinkPart]
    seconds: float


def cut(order: Sequence[uuid.UUID], workers: int) -> list[Sequence[uuid.UUID]]:
    """`order` in at most `workers` contiguous slices whose sizes differ by at most one."""
    count = min(workers, len(order))
    if count == 0:
        return []
    size, extra = divmod(len(order), count)
    slices, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        slices.append(order[start:end])
        start = end
    return slices


def part_path(path: Path, index: int, owner: int) -> Path:
    return path.with_name(f".{path.name}.part-{index:03d}.tmp-{owner}")


# ---------------------------------------------------------------- in a slice's process


def _start_process(stop: Event) -> None:
    """A slice process ignores Ctrl-C: the exporting process gets it and sets `stop`,
    and the slice stops between two documents and removes its parts."""
    global _stop
    _stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_stop() -> None:
    if _stop is not None and _stop.is_set():
        raise SliceStopped("stopped: another slice failed")


def _stoppable(documents: Iterable[tuple[uuid.UUID, int | None, str]],
               ) -> Iterator[tuple[uuid.UUID, int | None, str]]:
    for i, document in enumerate(documents):
        if i % CHECK_EVERY == 0:
            _check_stop()
        yield document


def _open_part(options: export_files.ExportOptions, split: str, index: int, owner: int,
               ) -> export_files.Sink:
    if options.hub is not None:
        return hub.ParquetSink(options.hub, split, options.format, options.strip_metadata,
                               options.shard_size_mb or hub.DEFAULT_SHARD_MB,
                               part=f"p{index:03d}-", owner=owner)
    final = options.output if split == export_files.TRAIN else options.validation_output
    assert final is not None  # ExportOptions.check
    path = part_path(final, index, owner)
    if options.format == "full-json":
        return export_files.FullJsonSink(path, options.target_model, {}, part=True)
    return export_files.JsonlSink(path, part=True)


def _finish_part(sink: export_files.Sink) -> SinkPart:
    if isinstance(sink, hub.ParquetSink):
        return SinkPart(sink.rows, shards=tuple(sink.finish_part()), num_bytes=sink.num_bytes)
    return SinkPart(sink.rows, path=sink.path, state=sink.finish_part())


def _plan(task: SliceTask, ids: list[uuid.UUID]) -> SamplePlan | None:
    if task.sides is None or task.strata is None:
        return None
    return SamplePlan(side=dict(zip(ids, task.sides, strict=True)),
                      stratum_of={cid: key for cid, key in zip(ids, task.strata, strict=True)
                                  if key is not None})


def _render(task: SliceTask) -> SliceOutcome:
    started = time.perf_counter()
    options = task.options
    run = export_files.ExportRun(options, export_files.token_counter(options))
    ids = task.conversation_ids()
    run.plan = _plan(task, ids)
    sinks: dict[str, export_files.Sink] = {}
    engine = make_engine(task.url, application_name="reenrich-export", poolclass=NullPool)
    try:
        for split in task.splits:
            sinks[split] = _open_part(options, split, task.index, task.owner)
        with engine.connect() as conn, conn.begin():
            dataset.begin_snapshot(conn)
            dataset.import_snapshot(conn, task.snapshot)
            run.write_documents(_stoppable(dataset.stream_slice(conn, ids)), sinks)
        parts = {split: _finish_part(sink) for split, sink in sinks.items()}
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    finally:
        engine.dispose()
    return SliceOutcome(task.index, run.report, run.written, parts,
                        time.perf_counter() - started)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _failure(task: SliceTask, exc: BaseException) -> ExportSliceError:
    from psycopg import Error as DriverError
    from sqlalchemy.exc import DBAPIError

    hint = "nothing was written"
    if isinstance(exc, DBAPIError | DriverError):
        reason = str(database_error(exc, task.url))
    elif isinstance(exc, ReenrichError):
        reason = str(exc)
    elif isinstance(exc, OSError):
        reason = f"{exc.strerror or type(exc).__name__}" + (
            f": {exc.filename}" if exc.filename else "")
    else:
        reason = f"unexpected error: {type(exc).__name__}: {_one_line(str(exc))}"
        hint += (" (this is a bug: run it again with --log-level debug for the traceback, "
                 "and report it)")
    return ExportSliceError(f"export slice {task.index + 1} of {task.count} "
                            f"({len(task.ids) // 16} conversations) failed: "
                            f"{_one_line(reason)}; {hint}")


def render_slice(task: SliceTask) -> SliceOutcome:
    """A slice process's work: its documents into its part files (`SliceOutcome`)."""
    try:
        _check_stop()
        return _render(task)
    except SliceStopped:
        raise
    except BaseException as exc:
        raise _failure(task, exc) from exc


# ---------------------------------------------------------------- in the exporting process


# What the fork server imports once, so that no slice process imports it again: this
# module (SQLAlchemy, psycopg, pyarrow) and pandas, which pyarrow imports on its first
# conversion when it is installed (~0.2 s of CPU each time; skipped when it is not).
PRELOAD = [__name__, "pandas"]


def _context() -> BaseContext:
    """forkserver where there is one (a slice process starts as a fork of a clean
    process that has imported this module once), else spawn; never fork: the exporting
    process holds an open connection and threads."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def start_processes() -> None:
    """Start the fork server now, so its imports overlap the selection pass."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        _context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _gather(futures: list[Future[SliceOutcome]], stop: Event) -> list[SliceOutcome]:
    """Every slice's outcome; on the first failure the others are stopped, then it is raised."""
    outcomes: list[SliceOutcome] = []
    failure: export_files.ExportError | None = None
    for future in as_completed(futures):
        try:
            outcomes.append(future.result())
            continue
        except (SliceStopped, CancelledError):
            continue
        except ExportSliceError as exc:
            failure = failure or exc
        except BrokenProcessPool:
            failure = failure or ExportSliceError(
                "an export slice's process ended unexpectedly (killed, or out of memory?); "
                "nothing was written: run it again, with fewer --workers if memory is short")
        stop.set()
        for other in futures:
            other.cancel()
    if failure is not None:
        raise failure
    return sorted(outcomes, key=lambda outcome: outcome.index)


def _run_slices(tasks: list[SliceTask]) -> list[SliceOutcome]:
    context = _context()
    stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=len(tasks), mp_context=context,
                               initializer=_start_process, initargs=(stop,))
    try:
        return _gather([pool.submit(render_slice, task) for task in tasks], stop)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _merge(run: export_files.ExportRun, outcomes: list[SliceOutcome],
           sinks: dict[str, export_files.Sink]) -> None:
    run.report.splits = {name: SplitTally(path=str(sink.path)) for name, sink in sinks.items()}
    for outcome in outcomes:
        run.report.merge(outcome.report)
        run.written += outcome.written
        for split, part in outcome.parts.items():
            sink = sinks[split]
            if isinstance(sink, hub.ParquetSink):
                sink.absorb(list(part.shards), part.rows, part.num_bytes)
            else:
                assert part.path is not None
                sink.absorb(part.path, part.rows, part.state or {})
        log.info("export.slice_done", slice=outcome.index + 1, seconds=round(outcome.seconds, 2),
                 rows=sum(p.rows for p in outcome.parts.values()))
    run.count_strata_rows()


def _remove_parts(sinks: dict[str, export_files.Sink], owner: int) -> None:
    """Every part file of this export still on disk (a failed or stopped slice's)."""
    for split, sink in sinks.items():
        if isinstance(sink, hub.ParquetSink):
            folder, prefix = sink.data, f".{split}-p"
            suffix = f".parquet.tmp-{owner}"
        else:
            folder, prefix, suffix = sink.path.parent, f".{sink.path.name}.part-", f".tmp-{owner}"
        for path in folder.iterdir():
            if path.name.startswith(prefix) and path.name.endswith(suffix):
                path.unlink(missing_ok=True)


def _tasks(conn: Connection, run: export_files.ExportRun, order: list[uuid.UUID],
           splits: tuple[str, ...]) -> list[SliceTask]:
    slices = cut(order, run.options.workers)
    if not slices:
        return []
    snapshot = dataset.export_snapshot(conn)
    url = conn.engine.url.render_as_string(hide_password=False)
    plan = run.plan
    tasks = []
    for index, ids in enumerate(slices):
        sides = strata = None
        if plan is not None:
            sides = tuple(plan.side[cid] for cid in ids)
            strata = tuple(plan.stratum_of.get(cid) for cid in ids)
        tasks.append(SliceTask(index, len(slices), url, snapshot, os.getpid(), run.options,
                               splits, b"".join(cid.bytes for cid in ids), sides, strata))
    return tasks


def write_slices(conn: Connection, run: export_files.ExportRun, ids: Sequence[uuid.UUID],
                 sinks: dict[str, export_files.Sink]) -> None:
    """The stream pass of `run` in slices, into `sinks` (in the snapshot `conn` holds open)."""
    order = dataset.export_order(conn, ids)
    tasks = _tasks(conn, run, order, tuple(sinks))
    log.info("export.slices", workers=run.options.workers, slices=len(tasks),
             conversations=len(order))
    try:
        _merge(run, _run_slices(tasks) if tasks else [], sinks)
    except BaseException:
        _remove_parts(sinks, os.getpid())
        raise
