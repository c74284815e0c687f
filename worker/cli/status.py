"""`reenrich status`, `failures`, `show`, and the follow workers' view (`workers`, in follow).

What operators look at, read-only: backfill runs, failures, follow workers,
stored documents. Each database row is read into a typed row here, so every
field a table or a JSON object prints is one mypy knows.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from worker.cli.args import Subparsers, add_command, parse_uuid
from worker.cli.output import (
    Column,
    Out,
    clip,
    first_line,
    flat,
    one_line,
    table,
    terminal_width,
    write,
)
from worker.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Engine

    from worker.cli.context import Context
    from worker.db import checkpoints, queue


def register(commands: Subparsers) -> None:
    p = add_command(commands, "status", cmd_status, "backfill runs: status, counts, rate, ETA")
    p.add_argument("--json", action="store_true", help="a JSON array of runs (every detail)")
    p.add_argument("--wide", action="store_true",
                   help="every column, untruncated (the default fits the terminal)")

    p = add_command(commands, "failures", cmd_failures, "conversations that failed enrichment")
    p.add_argument("--run", metavar="NAME", help="only failures last seen by this run")
    p.add_argument("--all", action="store_true", help="include resolved failures")
    p.add_argument("--json", action="store_true", help="a JSON array")
    p.add_argument("--wide", action="store_true", help="every column, untruncated")

    p = add_command(commands, "show", cmd_show,
                    "print stored enriched documents as JSON Lines (contract order)")
    p.add_argument("ids", nargs="*", type=parse_uuid, metavar="ID")
    p.add_argument("--all", action="store_true", help="every enriched document")


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    return print_status(ctx.engine(), as_json=args.json, out=write, wide=args.wide)


def cmd_failures(args: argparse.Namespace, ctx: Context) -> int:
    return print_failures(ctx.engine(), run=args.run, as_json=args.json,
                          include_resolved=args.all, out=write, wide=args.wide)


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    if not args.ids and not args.all:
        raise UsageError("show needs conversation ids (reenrich show ID [ID...]) or --all")
    if args.ids and args.all:
        raise UsageError("give conversation ids or --all, not both")
    return show_documents(ctx.engine(), None if args.all else args.ids, out=write)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _minute(value: datetime | None) -> str:
    """An ISO timestamp cut to the minute, as the table shows it (in the row's own zone)."""
    return (_iso(value) or "")[:16].replace("T", " ")


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else ""


def _duration(value: float | None) -> str:
    if value is None:
        return ""
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ------------------------------------------------------------ runs


@dataclass(frozen=True)
class RunSummary:
    """A backfill run with its rate and ETA (a row of `reenrich status`)."""

    run: checkpoints.Run
    rows_per_second: float
    eta_seconds: float | None

    def as_json(self) -> dict[str, Any]:
        run = self.run
        return {
            "name": run.name,
            "status": run.status,
            "processed": run.processed,
            "updated": run.updated,
            "unchanged": run.unchanged,
            "failed": run.failed,
            "total": run.total,
            "rows_per_second": self.rows_per_second,
            "eta_seconds": self.eta_seconds,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "heartbeat_at": _iso(run.heartbeat_at),
            "workers": run.workers,
            "enrichment_version": run.enrichment_version,
            "filters": run.filters.as_json(),
            "last_error": run.last_error,
        }


def run_summary(run: checkpoints.Run, now: datetime | None = None) -> RunSummary:
    now = now or datetime.now(UTC)
    end = run.finished_at or (run.heartbeat_at if run.status != "running" else now)
    elapsed = max((end - run.started_at).total_seconds(), 0.0)
    rate = run.processed / elapsed if elapsed > 0 else 0.0
    remaining = max(0, (run.total or 0) - run.processed)
    eta = round(remaining / rate, 1) if rate > 0 and run.status == "running" else None
    return RunSummary(run, round(rate, 1), eta)


def _progress(run: checkpoints.Run) -> str:
    return f"{run.processed}/{'?' if run.total is None else run.total}"


RUN_COLUMNS: tuple[Column[RunSummary], ...] = (
    Column("RUN", lambda s: s.run.name, shrink=16, soft=30),
    Column("STATUS", lambda s: s.run.status),
    Column("PROCESSED", lambda s: _progress(s.run), right=True),
    Column("FAILED", lambda s: s.run.failed, right=True),
    Column("ROWS/S", lambda s: s.rows_per_second or "", drop=3, right=True),
    Column("ETA", lambda s: _duration(s.eta_seconds), drop=2, right=True),
    Column("STARTED (UTC)", lambda s: _when(s.run.started_at), drop=4),
    Column("FINISHED (UTC)", lambda s: _when(s.run.finished_at), drop=5),
    Column("UPDATED", lambda s: s.run.updated, drop=6, right=True),
    Column("UNCHANGED", lambda s: s.run.unchanged, drop=7, right=True),
)
WIDE_RUN_COLUMNS: tuple[Column[RunSummary], ...] = (
    Column("NAME", lambda s: s.run.name),
    Column("STATUS", lambda s: s.run.status),
    Column("PROCESSED", lambda s: s.run.processed),
    Column("TOTAL", lambda s: s.run.total),
    Column("UPDATED", lambda s: s.run.updated),
    Column("UNCHANGED", lambda s: s.run.unchanged),
    Column("FAILED", lambda s: s.run.failed),
    Column("ROWS_PER_SECOND", lambda s: s.rows_per_second),
    Column("ETA_SECONDS", lambda s: s.eta_seconds),
    Column("STARTED_AT", lambda s: _iso(s.run.started_at)),
    Column("FINISHED_AT", lambda s: _iso(s.run.finished_at)),
    Column("WORKERS", lambda s: s.run.workers),
    Column("LAST_ERROR", lambda s: flat(s.run.last_error)),
)


def print_status(engine: Engine, *, as_json: bool, out: Out, wide: bool = False,
                 width: int | None = None) -> int:
    """`reenrich status`: fits the terminal (80 columns when not one); --wide: every column."""
    from worker.db import checkpoints

    with engine.connect() as conn:
        summaries = [run_summary(r) for r in checkpoints.list_runs(conn)]
    if as_json:
        out(json.dumps([s.as_json() for s in summaries], ensure_ascii=False))
        return 0
    fit = width or terminal_width()
    if not summaries:
        out("no backfill runs yet: start one with `reenrich backfill`")
    elif wide:
        table(summaries, WIDE_RUN_COLUMNS, out)
    else:
        table(summaries, RUN_COLUMNS, out, fit)
        errors = [(s.run.name, first_line(s.run.last_error)) for s in summaries
                  if s.run.last_error]
        for name, error in errors:
            out(clip(f"  {clip(one_line(name), 30)}: {error}", fit))
        if errors:
            out(clip("  (last errors, first line: `reenrich status --wide` or --json has "
                     "them in full)", fit))
    out("")
    _print_versions(engine, out)
    _print_follow(engine, out, live_only=True, width=None if wide else fit)
    return 0


def _print_versions(engine: Engine, out: Out) -> None:
    """Enriched rows per enrichment version: rows below the current one await a backfill."""
    from worker.db.dataset import version_counts
    from worker.enrichment.enrich import ENRICHMENT_VERSION

    with engine.connect() as conn:
        counts = version_counts(conn)
    listed = ", ".join(f"v{k if k is not None else '?'}: {v}"
                       for k, v in counts.items()) or "none"
    behind = sum(v for k, v in counts.items() if k is None or k < ENRICHMENT_VERSION)
    out(f"enriched rows by contract version: {listed} (current v{ENRICHMENT_VERSION})")
    if behind:
        out(f"  {behind} row(s) behind: `reenrich backfill` brings them to v{ENRICHMENT_VERSION}")


# ------------------------------------------------------------ follow workers


class FollowWorker(NamedTuple):
    """A row of worker.db.queue.list_workers (its columns are these fields)."""

    worker_id: str
    host: str
    pid: int
    state: str  # running, lost or stopped
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    batches: int
    rows_processed: int
    rows_enriched: int
    rows_unchanged: int
    rows_failed: int
    last_batch_at: datetime | None
    last_error: str | None
    claimed: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> FollowWorker:
        return cls(**{name: row[name] for name in cls._fields})

    def as_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id, "host": self.host, "pid": self.pid,
            "state": self.state, "started_at": _iso(self.started_at),
            "heartbeat_at": _iso(self.heartbeat_at), "stopped_at": _iso(self.stopped_at),
            "batches": self.batches, "rows_processed": self.rows_processed,
            "rows_enriched": self.rows_enriched, "rows_unchanged": self.rows_unchanged,
            "rows_failed": self.rows_failed, "claimed": self.claimed,
            "last_batch_at": _iso(self.last_batch_at), "last_error": self.last_error,
        }


def _workers(engine: Engine) -> tuple[queue.QueueStats, list[FollowWorker]]:
    from worker.db import queue

    with engine.connect() as conn:
        stats = queue.queue_stats(conn)
        rows = queue.list_workers(conn)
    return stats, [FollowWorker.of(r) for r in rows]


WORKER_COLUMNS: tuple[Column[FollowWorker], ...] = (
    Column("WORKER", lambda w: w.worker_id, shrink=16, soft=30),
    Column("STATE", lambda w: w.state),
    Column("HEARTBEAT (UTC)", lambda w: _minute(w.heartbeat_at), drop=3),
    Column("BATCHES", lambda w: w.batches, drop=4, right=True),
    Column("ENRICHED", lambda w: w.rows_enriched, right=True),
    Column("FAILED", lambda w: w.rows_failed, right=True),
    Column("CLAIMED", lambda w: w.claimed, drop=2, right=True),
)
WIDE_WORKER_COLUMNS: tuple[Column[FollowWorker], ...] = (
    Column("WORKER_ID", lambda w: w.worker_id),
    Column("STATE", lambda w: w.state),
    Column("HEARTBEAT_AT", lambda w: _iso(w.heartbeat_at)),
    Column("BATCHES", lambda w: w.batches),
    Column("ROWS_PROCESSED", lambda w: w.rows_processed),
    Column("ROWS_ENRICHED", lambda w: w.rows_enriched),
    Column("ROWS_FAILED", lambda w: w.rows_failed),
    Column("CLAIMED", lambda w: w.claimed),
    Column("STARTED_AT", lambda w: _iso(w.started_at)),
    Column("LAST_ERROR", lambda w: flat(w.last_error)),
)


def _print_follow(engine: Engine, out: Out, *, live_only: bool, width: int | None) -> None:
    stats, workers = _workers(engine)
    oldest = f"{_when(stats.oldest_marked_at)} UTC" if stats.oldest_marked_at else "-"
    line = f"follow queue: {stats.depth} conversation(s) marked, {stats.claimed} claimed"
    if width is None or len(line) + len(oldest) + 14 <= width:
        out(f"{line}, oldest mark {oldest}")
    else:
        out(line)
        out(f"  oldest mark {oldest}")
    shown = [w for w in workers if w.state != "stopped"] if live_only else workers
    if not shown:
        out("no follow workers running: start one with `reenrich follow`" if live_only
            else "no follow workers yet: start one with `reenrich follow`")
        return
    if width is None:
        table(shown, WIDE_WORKER_COLUMNS, out)
        return
    table(shown, WORKER_COLUMNS, out, width)
    for w in shown:
        if w.last_error:
            out(clip(f"  {clip(one_line(w.worker_id), 30)}: {first_line(w.last_error)}",
                     width))


def print_workers(engine: Engine, *, as_json: bool, out: Out, wide: bool = False,
                  width: int | None = None) -> int:
    """`reenrich workers`: the queue depth and every follow worker (--json: one object)."""
    if as_json:
        stats, workers = _workers(engine)
        out(json.dumps({"queue": {"depth": stats.depth, "claimed": stats.claimed,
                                  "oldest_marked_at": _iso(stats.oldest_marked_at)},
                        "workers": [w.as_json() for w in workers]}, ensure_ascii=False))
        return 0
    _print_follow(engine, out, live_only=False,
                  width=None if wide else (width or terminal_width()))
    return 0


# ------------------------------------------------------------ failures


class Failure(NamedTuple):
    """A row of worker.db.checkpoints.list_failures (its columns are these fields)."""

    conversation_id: uuid.UUID
    run_name: str | None
    error_code: str
    message: str
    details: Any
    attempts: int
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Failure:
        return cls(**{name: row[name] for name in cls._fields})

    def as_json(self) -> dict[str, Any]:
        return {
            "conversation_id": str(self.conversation_id),
            "error_code": self.error_code,
            "message": self.message,
            "run": self.run_name,
            "attempts": self.attempts,
            "first_seen_at": _iso(self.first_seen_at),
            "last_seen_at": _iso(self.last_seen_at),
            "resolved_at": _iso(self.resolved_at),
            "details": self.details,
        }


FAILURE_COLUMNS: tuple[Column[Failure], ...] = (
    Column("CONVERSATION", lambda f: f.conversation_id),
    Column("CODE", lambda f: f.error_code, shrink=12),
    Column("TRIES", lambda f: f.attempts, drop=2, right=True),
    Column("LAST SEEN (UTC)", lambda f: _minute(f.last_seen_at), drop=1),
    Column("MESSAGE", lambda f: first_line(f.message), shrink=12, soft=40),
)
WIDE_FAILURE_COLUMNS: tuple[Column[Failure], ...] = (
    Column("CONVERSATION_ID", lambda f: f.conversation_id),
    Column("ERROR_CODE", lambda f: f.error_code),
    Column("ATTEMPTS", lambda f: f.attempts),
    Column("LAST_SEEN_AT", lambda f: _iso(f.last_seen_at)),
    Column("RUN", lambda f: f.run_name),
    Column("MESSAGE", lambda f: f.message),
)


def print_failures(engine: Engine, *, run: str | None, as_json: bool, include_resolved: bool,
                   out: Out, wide: bool = False, width: int | None = None) -> int:
    from worker.db import checkpoints

    with engine.connect() as conn:
        failures = [Failure.of(r) for r in checkpoints.list_failures(conn, run,
                                                                      include_resolved)]
    if as_json:
        out(json.dumps([f.as_json() for f in failures], ensure_ascii=False))
        return 0
    if not failures:
        out("no failures")
        return 0
    if wide:
        table(failures, WIDE_FAILURE_COLUMNS, out)
        return 0
    table(failures, FAILURE_COLUMNS, out, width or terminal_width())
    return 0


# ------------------------------------------------------------ documents


def show_documents(engine: Engine, ids: Sequence[uuid.UUID] | None, *,
                   out: Callable[[bytes], None]) -> int:
    """Stored enriched documents as JSON Lines (orjson's bytes); exit 1 if an id has none."""
    from worker.db import repository
    from worker.enrichment.contract import dumps, in_contract_order

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
