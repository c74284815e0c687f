"""The `reenrich` command: parse -> settings -> logging -> one loop -> exit code.

stdout carries what a command prints for people and pipes (JSON, JSON Lines,
tables); every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine, text

from worker import logs
from worker.config import ConfigError, Settings, load_enrichment_config, load_settings
from worker.db import engine as db_engine
from worker.db import migrate as db_migrate

log = structlog.get_logger("reenrich.cli")

EXIT_ERROR = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A command cannot go on; the message says what to do. Exit status 1."""


class Context:
    """What a command needs, made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = db_engine.database_url(self.settings)
        return self._url

    @property
    def embedded(self) -> bool:
        return not self.settings.database_url

    def engine(self, *, migrated: bool = True) -> Engine:
        if self._engine is None:
            self._engine = db_engine.make_engine(self.url)
            if migrated:
                self._check_schema(self._engine)
        return self._engine

    def _check_schema(self, engine: Engine) -> None:
        head = db_migrate.current_head()
        with engine.connect() as conn:
            have = conn.execute(text(
                "SELECT to_regclass('alembic_version') IS NOT NULL")).scalar_one()
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar() \
                if have else None
        if current == head:
            return
        if self.embedded:
            # The embedded database is ours: bring it up to date without asking.
            log.info("migrate.embedded", current=current, head=head)
            db_migrate.upgrade(self.url)
            return
        raise CommandError(f"the database schema is at {current or 'nothing'}, reenrich needs "
                           f"{head}: run `reenrich migrate` first")

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def parse_when(value: str, *, end: bool = False) -> datetime:
    """A date (whole day, UTC) or an ISO 8601 timestamp. `end` makes a date inclusive."""
    try:
        if len(value) == 10:
            day = datetime.combine(datetime.fromisoformat(value).date(), time(), tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD) or ISO 8601 timestamp") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from exc


def install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            return
        log.warning("signal.received", signal=signal.Signals(signum).name,
                    message="finishing the current page, then stopping")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _write(line: str | bytes) -> None:
    if isinstance(line, bytes):
        sys.stdout.buffer.write(line + b"\n")
    else:
        sys.stdout.write(line + "\n")


# ------------------------------------------------------------------ commands


def cmd_migrate(args: argparse.Namespace, ctx: Context) -> int:
    if args.downgrade:
        db_migrate.downgrade(ctx.url, args.downgrade)
    else:
        db_migrate.upgrade(ctx.url, "head")
    log.info("migrate.done", revision=args.downgrade or db_migrate.current_head())
    return 0


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from worker.importer import ImportFileError, import_path

    try:
        summary = import_path(ctx.engine(), Path(args.path))
    except ImportFileError as exc:
        raise CommandError(str(exc)) from exc
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())) or "nothing"
    _write(f"imported {args.path}: {counts}; {summary.failed} record(s) failed, "
           f"{len(summary.warnings)} warning(s)")
    for err in summary.errors:
        _write(f"  {err['where']}: {err['reason']}")
    return EXIT_ERROR if summary.failed else 0


def backfill_options(args: argparse.Namespace, settings: Settings) -> Any:
    from worker.backfill import BackfillOptions
    from worker.db.repository import Filters

    filters = Filters(persona=args.persona, arc=args.arc, topic=args.topic,
                      since=args.since, until=args.until)
    child_args = ["--log-level", settings.log_level]
    for flag, value in (("--batch-size", args.batch_size),
                        ("--max-rows-per-second", args.max_rows_per_second),
                        ("--sleep", args.sleep)):
        if value is not None:
            child_args += [flag, str(value)]
    return BackfillOptions(
        run_name=args.run, filters=filters,
        batch_size=args.batch_size or settings.batch_size,
        dry_run=args.dry_run, restart=args.restart, workers=args.workers,
        target_page_seconds=settings.target_page_seconds,
        max_rows_per_second=args.max_rows_per_second or settings.max_rows_per_second,
        sleep_seconds=args.sleep if args.sleep is not None else settings.sleep_seconds,
        lease_seconds=settings.lease_seconds, max_pages=args.max_pages,
        child_args=child_args,
    )


def cmd_backfill(args: argparse.Namespace, ctx: Context) -> int:
    from worker.backfill import EXIT_RUN_BUSY, RunBusy, run_backfill
    from worker.processing import Processor

    stop = threading.Event()
    install_stop_handlers(stop)
    options = backfill_options(args, ctx.settings)
    processor = Processor(load_enrichment_config(ctx.settings))
    try:
        result = run_backfill(ctx.engine(), processor, options, stop)
    except RunBusy as exc:
        sys.stderr.write(f"reenrich: {exc}\n")
        return EXIT_RUN_BUSY
    if args.dry_run:
        _write(f"dry run: {result.processed} rows, {result.updated} would be updated, "
               f"{result.unchanged} unchanged, {result.failed} would fail")
    return result.exit_code


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    from worker.status import print_status

    return print_status(ctx.engine(), as_json=args.json, out=_write)


def cmd_failures(args: argparse.Namespace, ctx: Context) -> int:
    from worker.status import print_failures

    return print_failures(ctx.engine(), run=args.run, as_json=args.json,
                          include_resolved=args.all, out=_write)


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    from worker.status import show_documents

    if not args.ids and not args.all:
        raise CommandError("give conversation ids, or --all")
    return show_documents(ctx.engine(), None if args.all else args.ids, out=_write)


def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    from worker.demo import run_demo

    return run_demo(ctx, out=_write)


# -------------------------------------------------------------------- parser


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--persona", metavar="KEY", help="only conversations of this persona key")
    p.add_argument("--arc", metavar="KEY", help="only this emotional arc key")
    p.add_argument("--topic", metavar="KEY", help="only this training topic key")
    p.add_argument("--since", type=parse_when, metavar="DATE",
                   help="created at or after (YYYY-MM-DD or ISO 8601, UTC)")
    p.add_argument("--until", type=lambda v: parse_when(v, end=True), metavar="DATE",
                   help="created up to and including this date (or before this timestamp)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reenrich",
        description="Re-enrich stored conversations so every training pair carries its "
                    "scaffolding. Logs go to stderr; results to stdout.")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (env REENRICH_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"],
                        help="log rendering (env REENRICH_LOG_FORMAT; auto: JSON unless a tty)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace, Context], int], help_: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        p.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return p

    p = add("migrate", cmd_migrate, "apply the database migrations (Alembic) up to head")
    p.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION (e.g. base)")

    p = add("import", cmd_import, "load a JSON bundle or JSON Lines file (bundle-format)")
    p.add_argument("path", help="a .json bundle or a .jsonl stream")

    p = add("backfill", cmd_backfill,
            "re-enrich stored conversations: checkpointed, idempotent, resumable")
    p.add_argument("--run", metavar="NAME", help="run name (default: resume the latest "
                   "unfinished run with the same filters, else start a new one)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="fixed page size (default: adapts toward a target page duration)")
    _add_filters(p)
    p.add_argument("--dry-run", action="store_true", help="compute and report, write nothing")
    p.add_argument("--restart", action="store_true", help="run a finished run again from the start")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes sharing the run (each claims key-range slices)")
    p.add_argument("--max-rows-per-second", type=float, metavar="R",
                   help="throttle to at most R rows per second")
    p.add_argument("--sleep", type=float, metavar="SECONDS", help="pause between pages")
    p.add_argument("--max-pages", type=int, metavar="N", help=argparse.SUPPRESS)

    p = add("status", cmd_status, "backfill runs: status, counts, rate, ETA")
    p.add_argument("--json", action="store_true", help="a JSON array of runs")

    p = add("failures", cmd_failures, "conversations that failed enrichment")
    p.add_argument("--run", metavar="NAME", help="only failures last seen by this run")
    p.add_argument("--all", action="store_true", help="include resolved failures")
    p.add_argument("--json", action="store_true", help="a JSON array")

    p = add("show", cmd_show, "print stored enriched documents as JSON Lines (contract order)")
    p.add_argument("ids", nargs="*", type=parse_uuid, metavar="ID")
    p.add_argument("--all", action="store_true", help="every enriched document")

    add("demo", cmd_demo, "embedded PostgreSQL + sample data + backfill, end to end")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(log_level=args.log_level, log_format=args.log_format)
    except ConfigError as exc:
        sys.stderr.write(f"reenrich: {exc}\n")
        return EXIT_ERROR
    logs.configure(settings.log_level, settings.log_format)
    ctx = Context(settings)
    try:
        code: int = args.func(args, ctx)
        return code
    except (CommandError, ConfigError, db_engine.DatabaseUnavailable) as exc:
        sys.stderr.write(f"reenrich: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
