"""The `reenrich` command: parse -> settings -> logging -> one loop -> exit code.

stdout carries what a command prints for people and pipes (JSON, JSON Lines,
tables); every log line goes to stderr. Every mistake a user can make ends in
one line on stderr (`reenrich: ...`) and an exit status from the README's
table: flags are checked before any work (exit 2), errors the project raises
are `ReenrichError`s, and driver errors become one `DatabaseError` line in
`main` (see worker.db.engine.database_error). A traceback is printed only with
`--log-level debug`.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import signal
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, text

from worker import __version__, logs
from worker.config import LOG_LEVELS, Settings, load_enrichment_config, load_settings
from worker.db import engine as db_engine
from worker.db import migrate as db_migrate
from worker.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_RUN_BUSY,
    EXIT_USAGE,
    ConfirmationRequired,
    FileError,
    ReenrichError,
    UsageError,
)

log = structlog.get_logger("reenrich.cli")

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "CommandError", "build_parser", "main"]

MAX_BATCH_SIZE = 100_000  # as REENRICH_BATCH_SIZE allows
KEY_LABELS = {"persona": "persona", "arc": "emotional arc", "topic": "training topic"}
LISTED_KEYS = 20


class CommandError(ReenrichError):
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

    def url_for_errors(self) -> str | None:
        """The URL a failed connection went to, without starting anything."""
        if self._url is not None:
            return self._url
        try:
            return db_engine.normalize_url(self.settings.database_url) \
                if self.settings.database_url else None
        except ReenrichError:
            return None

    def database(self) -> str:
        """Which database this is, for messages (never a password)."""
        if self.embedded:
            return f"the embedded database in {self.settings.data_dir.resolve()}"
        where = db_engine.target(self.url_for_errors())
        return f"DATABASE_URL ({where.where()})" if where else "DATABASE_URL"

    def engine(self, *, migrated: bool = True) -> Engine:
        if self._engine is None:
            self._engine = db_engine.make_engine(self.url)
            if migrated:
                self._check_schema(self._engine)
        return self._engine

    def _check_schema(self, engine: Engine) -> None:
        head = db_migrate.SCHEMA_HEAD
        with engine.connect() as conn:
            current = db_migrate.current_revision(conn)
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


# ------------------------------------------------------------------ argument types


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


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_positive(value: str) -> float:
    number = _number(value)
    if number is None or not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number above 0")
    return number


def parse_non_negative(value: str) -> float:
    number = _number(value)
    if number is None or number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of at least 0")
    return number


def parse_fraction(value: str) -> float:
    number = _number(value)
    if number is None or not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a fraction between 0 and 1 "
                                         "(exclusive), e.g. 0.1")
    return number


def parse_quality(value: str) -> float:
    number = _number(value)
    if number is None or not 1 <= number <= 5:
        raise argparse.ArgumentTypeError(f"{value!r} is not a quality score from 1 to 5")
    return number


def parse_count(value: str, *, most: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1 or (most is not None and number > most):
        upper = f" and at most {most:,}" if most is not None else ""
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a whole number of at least 1{upper}")
    return number


def parse_batch_size(value: str) -> int:
    return parse_count(value, most=MAX_BATCH_SIZE)


def parse_level(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a log level: use {', '.join(LOG_LEVELS).lower()}")
    return value.upper()


def _fields(value: str) -> tuple[str, ...]:
    from worker.dataset.sampling import SamplingError, parse_stratify_by

    try:
        return parse_stratify_by(value)
    except SamplingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _by(value: str) -> tuple[str, ...]:
    from worker.dataset.sampling import SamplingError
    from worker.dataset.stats import parse_by

    try:
        return parse_by(value)
    except SamplingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


# ------------------------------------------------------------------ helpers


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


def check_keys(engine: Engine, **wanted: Sequence[str]) -> None:
    """Every --persona/--arc/--topic key exists (UsageError with the known keys otherwise)."""
    from worker.db import dataset

    if not any(wanted.values()):
        return
    with engine.connect() as conn:
        known = dataset.known_keys(conn)
    for kind, keys in wanted.items():
        names = known.get(kind, [])
        for key in keys:
            if key in names:
                continue
            close = difflib.get_close_matches(key, names, n=1)
            listed = ", ".join(names[:LISTED_KEYS]) + (
                f" (+{len(names) - LISTED_KEYS} more)" if len(names) > LISTED_KEYS else "")
            raise UsageError(
                f"--{kind} {key!r}: no {KEY_LABELS[kind]} has that key"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; known keys: {listed or 'none yet (import the scaffolding first)'}")


def _confirm(question: str) -> bool:
    """Ask on the terminal; False when there is none to ask on."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    sys.stderr.write(question)
    sys.stderr.flush()
    try:
        return sys.stdin.readline().strip().lower() == "yes"
    except (EOFError, KeyboardInterrupt):
        return False


# ------------------------------------------------------------------ commands


def cmd_migrate(args: argparse.Namespace, ctx: Context) -> int:
    if not args.downgrade:
        db_migrate.upgrade(ctx.url, "head")
        log.info("migrate.done", revision=db_migrate.SCHEMA_HEAD)
        _write(f"database schema at {db_migrate.SCHEMA_HEAD} (head)")
        return 0
    with ctx.engine(migrated=False).connect() as conn:
        plan = db_migrate.downgrade_plan(conn, args.downgrade)
    if plan.current is None:
        raise CommandError(f"{ctx.database()} has no reenrich schema: nothing to downgrade")
    if plan.rows_lost and not args.yes:
        question = f"{plan.describe()}.\nType yes to drop them: "
        if not _confirm(question):
            raise ConfirmationRequired(f"{plan.describe()}; nothing was changed: add --yes to "
                                       "drop them (back them up first: pg_dump)")
    db_migrate.downgrade(ctx.url, args.downgrade)
    log.info("migrate.done", revision=plan.target, dropped=list(plan.rows),
             rows_dropped=plan.rows_lost)
    dropped = f"; dropped {', '.join(plan.rows)}" if plan.rows else ""
    _write(f"database schema downgraded from {plan.current} to {plan.target}{dropped}")
    return 0


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    from worker.jobs.importer import import_path

    path = Path(args.path)
    if path.is_dir():
        raise FileError(f"{path} is a directory: give a .json bundle or a .jsonl file")
    if not path.exists():
        raise FileError(f"{path} does not exist")
    summary = import_path(ctx.engine(), path)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())) or "nothing"
    _write(f"imported {args.path}: {counts}; {summary.failed} record(s) failed, "
           f"{len(summary.warnings)} warning(s)")
    for err in summary.errors:
        _write(f"  {err['where']}: {err['reason']}")
    return EXIT_ERROR if summary.failed else 0


def backfill_options(args: argparse.Namespace, settings: Settings) -> Any:
    from worker.db.repository import Filters
    from worker.jobs.backfill import BackfillOptions

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
        lease_seconds=settings.lease_seconds, max_pages=args.max_pages, join=args.join,
        child_args=child_args, limits=write_limits(settings),
        reconnect_seconds=settings.reconnect_seconds,
    )


def write_limits(settings: Settings) -> Any:
    from worker.db.repository import Limits

    return Limits(lock_timeout_ms=settings.lock_timeout_ms,
                  statement_timeout_ms=settings.statement_timeout_ms)


def _backfill_summary(ctx: Context, result: Any, started: datetime) -> None:
    """What the run did, for people (stdout): counts, status, and what to do next."""
    from worker.cli.status import one_line
    from worker.db import checkpoints

    with ctx.engine().connect() as conn:
        run = checkpoints.get_run(conn, result.run_name)
    name = one_line(result.run_name)
    if run is None:
        _write(f"backfill run {name}: {result.status}; processed {result.processed}, updated "
               f"{result.updated}, unchanged {result.unchanged}, failed {result.failed}")
        return
    if run.finished_at is not None and run.finished_at < started:
        _write(f"backfill run {name} had already finished ({run.status}): nothing to do "
               f"(`reenrich backfill --run {name} --restart` runs it again)")
        return
    total = "?" if run.total is None else run.total
    _write(f"backfill run {name}: {run.status}; processed {run.processed} of {total}, "
           f"updated {run.updated}, unchanged {run.unchanged}, failed {run.failed}")
    if run.failed:
        _write(f"{run.failed} row(s) failed and kept their last good document: "
               f"reenrich failures --run {name}")
    if run.status == "cancelled":
        _write(f"the run was cancelled (`reenrich backfill --run {name} --restart` runs it "
               "again)")
    elif result.exit_code == EXIT_INTERRUPTED or run.status == "interrupted":
        _write(f"stopped before the end: resume with `reenrich backfill --run {name}`")
    elif run.status == "running":
        _write("other workers are still on it: `reenrich status` follows the run")


def cmd_backfill(args: argparse.Namespace, ctx: Context) -> int:
    from worker.cli.status import one_line
    from worker.enrichment.processing import Processor
    from worker.jobs.backfill import RunBusy, run_backfill

    options = backfill_options(args, ctx.settings)
    engine = ctx.engine()
    if not args.join:
        check_keys(engine, persona=[args.persona] if args.persona else [],
                   arc=[args.arc] if args.arc else [], topic=[args.topic] if args.topic else [])
    stop = threading.Event()
    install_stop_handlers(stop)
    processor = Processor(load_enrichment_config(ctx.settings),
                          max_document_bytes=ctx.settings.max_document_bytes)
    with engine.connect() as conn:  # the server's clock: it stamps finished_at
        started = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    try:
        result = run_backfill(engine, processor, options, stop)
    except RunBusy as exc:
        sys.stderr.write(f"reenrich: {one_line(str(exc))}\n")
        return EXIT_RUN_BUSY
    if args.dry_run:
        _write(f"dry run: {result.processed} rows, {result.updated} would be updated, "
               f"{result.unchanged} unchanged, {result.failed} would fail")
    elif not args.join:  # a helper process of --workers: the parent prints the summary
        _backfill_summary(ctx, result, started)
    code: int = result.exit_code
    return code


def cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    from worker.db import checkpoints

    with ctx.engine().begin() as conn:
        cancelled = checkpoints.cancel_run(conn, args.run)
    if not cancelled:
        raise CommandError(f"no unfinished run named {args.run!r} (see `reenrich status`)")
    _write(f"run {args.run} cancelled; its workers stop after their current page")
    return 0


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    from worker.cli.status import print_status

    return print_status(ctx.engine(), as_json=args.json, out=_write, wide=args.wide)


def cmd_failures(args: argparse.Namespace, ctx: Context) -> int:
    from worker.cli.status import print_failures

    return print_failures(ctx.engine(), run=args.run, as_json=args.json,
                          include_resolved=args.all, out=_write, wide=args.wide)


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    from worker.cli.status import show_documents

    if not args.ids and not args.all:
        raise UsageError("show needs conversation ids (reenrich show ID [ID...]) or --all")
    if args.ids and args.all:
        raise UsageError("give conversation ids or --all, not both")
    return show_documents(ctx.engine(), None if args.all else args.ids, out=_write)


def cmd_enrich(args: argparse.Namespace, ctx: Context) -> int:
    from worker.api import enrich_conversations

    results = enrich_conversations(ctx.engine(), args.ids,
                                   config=load_enrichment_config(ctx.settings))
    for result in results:
        _write(result.line())
    return 0 if all(r.ok for r in results) else EXIT_ERROR


def cmd_follow(args: argparse.Namespace, ctx: Context) -> int:
    from worker.db.engine import make_engine
    from worker.enrichment.processing import Processor
    from worker.jobs.follow import APPLICATION_NAME, DEFAULT_BATCH_SIZE, FollowOptions, run_follow

    stop = threading.Event()
    install_stop_handlers(stop)
    options = FollowOptions(
        poll_interval=args.poll_interval or ctx.settings.poll_interval,
        batch_size=args.batch_size or ctx.settings.batch_size or DEFAULT_BATCH_SIZE,
        lease_seconds=ctx.settings.lease_seconds,
        heartbeat_seconds=ctx.settings.heartbeat_seconds, limits=write_limits(ctx.settings))
    processor = Processor(load_enrichment_config(ctx.settings),
                          max_document_bytes=ctx.settings.max_document_bytes)
    engine = make_engine(ctx.url, application_name=APPLICATION_NAME)
    try:
        run_follow(engine, ctx.url, processor, options, stop,
                   check_schema=lambda: ctx._check_schema(engine))
    finally:
        engine.dispose()
    return 0


def cmd_workers(args: argparse.Namespace, ctx: Context) -> int:
    from worker.cli.status import print_workers

    return print_workers(ctx.engine(), as_json=args.json, out=_write, wide=args.wide)


# Flags that say where a --from-version export writes; every other flag comes from the version.
FROM_VERSION_FLAGS = frozenset({"output", "validation_output", "hub", "shard_size", "license",
                                "name", "report", "card", "from_version", "workers"})


def parse_version_name(value: str) -> str:
    from worker.dataset.versions import check_name
    from worker.errors import UsageError

    try:
        return check_name(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _export_options(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from worker.dataset.export import ExportOptions
    from worker.dataset.review_rules import ReviewRules
    from worker.dataset.sampling import SamplingSpec
    from worker.db.dataset import DatasetFilters

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    if args.format is None:
        raise UsageError("--format is required (or --from-version NAME)")
    return ExportOptions(
        format=args.format, output=path(args.output),
        validation_output=path(args.validation_output),
        filters=DatasetFilters(
            personas=tuple(args.persona or ()), arcs=tuple(args.arc or ()),
            topics=tuple(args.topic or ()), tiers=tuple(args.tier or ()),
            min_quality=args.min_quality, since=args.since, until=args.until,
            require_scaffolding=args.require_scaffolding, exclude_failed=args.exclude_failed,
            include_rejected_tier=args.include_rejected_tier),
        sampling=SamplingSpec(stratify_by=args.stratify_by or (), per_stratum=args.per_stratum,
                              balance=args.balance, seed=args.seed,
                              validation_fraction=args.split_validation),
        condition=args.condition, strip_metadata=args.strip_metadata, meta=args.meta,
        target_model=args.target_model, tokenizer=path(args.tokenizer),
        max_tokens=args.max_tokens, drop_over_max=args.drop_over_max, hub=path(args.hub),
        shard_size_mb=args.shard_size, license=args.license, allow_empty=args.allow_empty,
        dedup=args.dedup, workers=args.workers,
        review=ReviewRules(include_rejected=args.include_rejected,
                           approved_only=args.approved_only,
                           seed_examples_only=args.seed_examples_only))


def _from_version(args: argparse.Namespace, ctx: Context) -> tuple[Any, Any]:
    from pathlib import Path

    from worker.dataset.export import from_version_options, load_source

    given = sorted(f"--{dest.replace('_', '-')}" for dest, default in args.export_defaults.items()
                   if dest not in FROM_VERSION_FLAGS and getattr(args, dest, default) != default)
    if given:
        raise UsageError(f"--from-version replays the options recorded in the version: leave "
                         f"out {', '.join(given)} (see `reenrich datasets show "
                         f"{args.from_version}`)")
    source = load_source(ctx.engine(), args.from_version)
    options = from_version_options(
        source.version, output=Path(args.output) if args.output else None,
        validation_output=Path(args.validation_output) if args.validation_output else None,
        hub_dir=Path(args.hub) if args.hub else None, shard_size_mb=args.shard_size,
        license_id=args.license, workers=args.workers)
    return options, source


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from worker.dataset.export import EmptyExport, export_command

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    source = None
    if args.from_version:
        options, source = _from_version(args, ctx)
    else:
        options = _export_options(args)
    options.check()  # flags (exit 2) before connecting: a wrong flag needs no database
    report_path, card_path = path(args.report), path(args.card)
    engine = ctx.engine()
    check_keys(engine, persona=options.filters.personas, arc=options.filters.arcs,
               topic=options.filters.topics)
    try:
        return export_command(
            engine, options,
            consultant_profile=load_enrichment_config(ctx.settings).consultant_profile,
            report_path=report_path, card_path=card_path, out=_write,
            name=args.name, source=source)
    except EmptyExport as exc:
        raise EmptyExport(f"{exc} (database: {ctx.database()})") from exc


def cmd_datasets(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from worker.cli import datasets as vc
    from worker.dataset.versions import VersionError

    action = args.datasets_command
    try:
        if action == "show":
            return vc.show_version(ctx.engine(), args.name, as_json=args.json, out=_write)
        if action == "diff":
            return vc.diff_versions(ctx.engine(), args.a, args.b, as_json=args.json, out=_write)
        if action == "verify":
            return vc.verify_version(ctx.engine(), args.name, [Path(p) for p in args.paths],
                                     as_json=args.json, out=_write)
        return vc.list_versions(ctx.engine(), as_json=args.json, out=_write)
    except VersionError as exc:
        raise CommandError(str(exc)) from exc


def cmd_validate(args: argparse.Namespace, ctx: Context) -> int:
    from worker.dataset.validate import check_file, check_stored, print_file, print_stored

    if args.file:
        file = Path(args.file)
        if file.is_dir():
            raise FileError(f"{file} is a directory: give an exported .jsonl file")
        if not file.is_file():
            raise FileError(f"no file at {file}")
        return print_file(check_file(file), as_json=args.json, out=_write)
    return print_stored(check_stored(ctx.engine()), as_json=args.json, out=_write)


def cmd_stats(args: argparse.Namespace, ctx: Context) -> int:
    import json

    from worker.dataset.export import ExportError, check_writable
    from worker.dataset.stats import collect, print_text
    from worker.dataset.stats_html import render

    html = Path(args.html) if args.html else None
    if html is not None:
        try:
            check_writable(html, "--html")  # creates its folder, as export does
        except ExportError as exc:
            raise FileError(str(exc)) from exc
    stats = collect(ctx.engine(), by=args.by, thin=args.thin)
    if html is not None:
        html.write_text(render(stats), encoding="utf-8")
        log.info("stats.html_written", path=str(html))
    if args.json:
        _write(json.dumps(stats, ensure_ascii=False))
    else:
        print_text(stats, _write)
    return 0


def cmd_dedup(args: argparse.Namespace, ctx: Context) -> int:
    from worker.cli.dedup import command
    from worker.errors import ReenrichError, UsageError

    try:
        return command(args, ctx.engine(), out=_write)
    except UsageError as exc:
        sys.stderr.write(f"reenrich: {exc}\n")
        return EXIT_USAGE
    except ReenrichError as exc:
        raise CommandError(str(exc)) from exc


def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    from worker.cli.demo import run_demo

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


def _add_version_flags(p: argparse.ArgumentParser) -> None:
    """export: the Hub folder, the rejected tier, and dataset versions."""
    p.add_argument("--include-rejected-tier", action="store_true",
                   help="keep conversations of quality tier rejected (left out by default)")
    p.add_argument("--hub", metavar="DIR", help="chat, prompt-completion: write a Hugging Face "
                   "dataset folder (DIR/README.md, DIR/data/<split>-NNNNN-of-NNNNN.parquet)")
    p.add_argument("--shard-size", type=parse_positive, metavar="MB",
                   help="--hub: at most MB megabytes per Parquet shard (default 500)")
    p.add_argument("--license", metavar="ID", help="--hub: the card's license (default other)")
    p.add_argument("--name", type=parse_version_name, metavar="NAME",
                   help="the dataset version's name (default: generated, printed)")
    p.add_argument("--from-version", metavar="NAME", help="the members, splits and options of "
                   "this dataset version, from the current documents")
    # What each flag is when not given: --from-version refuses any other flag that is.
    p.set_defaults(export_defaults={a.dest: a.default for a in p._actions
                                    if a.dest != "help" and a.default != argparse.SUPPRESS})


def _add_datasets_actions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON value")
    actions = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    show = actions.add_parser("show", help="one version: options, counts, files and SHA-256")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="one JSON object")
    diff = actions.add_parser("diff", help="conversations added, removed, moved, changed, "
                              "per split")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--json", action="store_true", help="one JSON object")
    verify = actions.add_parser("verify", help="recompute the files' SHA-256 (exit 1 if any "
                                "differs or is missing)")
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("paths", nargs="*", metavar="PATH", help="the export's folder or "
                        "files (default: where they were written)")
    verify.add_argument("--json", action="store_true", help="one JSON object")


EPILOG = """exit statuses: 0 done; 1 error; 2 usage error (nothing was done); 3 backfill
finished with failed rows; 4 the run is held by another process; 5 the run was
cancelled; 130 interrupted.
Without DATABASE_URL, commands use the embedded database of this user (see
REENRICH_DATA_DIR). Logs go to stderr, results to stdout."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (the full usage is one `--help` away)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from worker.cli.dedup import add_arguments as dedup_arguments

    parser = Parser(
        prog="reenrich",
        description="Re-enrich stored conversations so every training pair carries its "
                    "scaffolding. Logs go to stderr; results to stdout.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"reenrich {__version__}")
    parser.add_argument("--log-level", type=parse_level, metavar="LEVEL",
                        help="debug, info, warning, error (env REENRICH_LOG_LEVEL); debug also "
                             "prints the traceback of an error")
    parser.add_argument("--log-format", choices=["auto", "json", "console"],
                        help="log rendering (env REENRICH_LOG_FORMAT; auto: JSON unless a tty)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace, Context], int], help_: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)  # a Parser too
        p.set_defaults(func=func)
        p.add_argument("--log-level", type=parse_level, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
        return p

    p = add("migrate", cmd_migrate, "apply the database migrations (Alembic) up to head")
    p.add_argument("--downgrade", metavar="REVISION",
                   help="downgrade to REVISION (base, 0001, ... or -1); refuses to drop tables "
                        "holding rows without --yes")
    p.add_argument("--yes", action="store_true",
                   help="confirm a downgrade that drops tables holding rows")

    p = add("import", cmd_import, "load a JSON bundle or JSON Lines file (bundle-format)")
    p.add_argument("path", help="a .json bundle or a .jsonl stream")

    p = add("backfill", cmd_backfill,
            "re-enrich stored conversations: checkpointed, idempotent, resumable")
    p.add_argument("--run", metavar="NAME", help="run name (default: resume the latest "
                   "unfinished run with the same filters, else start a new one)")
    p.add_argument("--batch-size", type=parse_batch_size, metavar="N",
                   help="fixed page size, 1..100000 (default: adapts toward a target page "
                        "duration)")
    _add_filters(p)
    p.add_argument("--dry-run", action="store_true", help="compute and report, write nothing")
    p.add_argument("--restart", action="store_true", help="run a finished run again from the start")
    p.add_argument("--workers", type=parse_count, default=1, metavar="N",
                   help="processes sharing the run (each claims key-range slices)")
    p.add_argument("--max-rows-per-second", type=parse_positive, metavar="R",
                   help="throttle to at most R rows per second")
    p.add_argument("--sleep", type=parse_non_negative, metavar="SECONDS",
                   help="pause between pages")
    p.add_argument("--max-pages", type=parse_count, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--join", action="store_true", help=argparse.SUPPRESS)

    p = add("cancel", cmd_cancel, "cancel an unfinished backfill run (workers stop after a page)")
    p.add_argument("run", metavar="NAME")

    p = add("status", cmd_status, "backfill runs: status, counts, rate, ETA")
    p.add_argument("--json", action="store_true", help="a JSON array of runs (every detail)")
    p.add_argument("--wide", action="store_true",
                   help="every column, untruncated (the default fits the terminal)")

    p = add("failures", cmd_failures, "conversations that failed enrichment")
    p.add_argument("--run", metavar="NAME", help="only failures last seen by this run")
    p.add_argument("--all", action="store_true", help="include resolved failures")
    p.add_argument("--json", action="store_true", help="a JSON array")
    p.add_argument("--wide", action="store_true", help="every column, untruncated")

    p = add("show", cmd_show, "print stored enriched documents as JSON Lines (contract order)")
    p.add_argument("ids", nargs="*", type=parse_uuid, metavar="ID")
    p.add_argument("--all", action="store_true", help="every enriched document")

    p = add("enrich", cmd_enrich, "enrich these conversations now; a line each (exit 1 if "
            "any failed or was not found)")
    p.add_argument("ids", nargs="+", type=parse_uuid, metavar="ID")

    p = add("follow", cmd_follow, "long-running: enrich conversations as triggers mark them "
            "(LISTEN/NOTIFY plus polling); SIGTERM finishes the batch and exits 0")
    p.add_argument("--poll-interval", type=parse_positive, metavar="SECONDS",
                   help="poll the queue this often even without notifications "
                        "(env REENRICH_POLL_INTERVAL, default 5)")
    p.add_argument("--batch-size", type=parse_batch_size, metavar="N",
                   help="conversations per batch (env REENRICH_BATCH_SIZE, default 200)")

    p = add("workers", cmd_workers, "follow workers: heartbeat, rows enriched, queue depth")
    p.add_argument("--json", action="store_true",
                   help='one JSON object: {"queue": {...}, "workers": [...]}')
    p.add_argument("--wide", action="store_true", help="every column, untruncated")

    p = add("export", cmd_export, "write a training file from the stored enriched documents "
            "(chat, prompt-completion, brightrun-v4, full-json), with filters, stratified "
            "sampling, a validation split, a report and a dataset card")
    p.add_argument("--format", choices=["chat", "prompt-completion", "brightrun-v4", "full-json"],
                   help="required, unless --from-version")
    p.add_argument("--output", metavar="PATH", help="the file to write (or --hub DIR)")
    p.add_argument("--persona", action="append", metavar="KEY", help="keep this persona key "
                   "(repeatable: any of them)")
    p.add_argument("--arc", action="append", metavar="KEY", help="keep this emotional arc key "
                   "(repeatable)")
    p.add_argument("--topic", action="append", metavar="KEY", help="keep this training topic "
                   "key (repeatable)")
    p.add_argument("--tier", action="append", metavar="NAME",
                   choices=["seed_dataset", "production", "experimental", "rejected"],
                   help="keep this quality tier (repeatable)")
    p.add_argument("--min-quality", type=parse_quality, metavar="X",
                   help="keep conversations whose quality score (1..5) is at least X")
    p.add_argument("--since", type=parse_when, metavar="DATE",
                   help="created at or after (YYYY-MM-DD or ISO 8601, UTC)")
    p.add_argument("--until", type=lambda v: parse_when(v, end=True), metavar="DATE",
                   help="created up to and including this date (or before this timestamp)")
    p.add_argument("--require-scaffolding", action="store_true",
                   help="leave out conversations missing any of persona, arc, topic")
    p.add_argument("--exclude-failed", action="store_true",
                   help="leave out conversations with an unresolved enrichment failure")
    p.add_argument("--stratify-by", type=_fields, metavar="FIELDS",
                   help="persona, arc, topic or a comma list (a joint stratum)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--per-stratum", type=parse_count, metavar="N",
                      help="N conversations per stratum")
    size.add_argument("--balance", action="store_true",
                      help="every stratum down to the smallest")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="sampling seed (default 0); a pick depends only on it and the id")
    p.add_argument("--split-validation", type=parse_fraction, metavar="F",
                   help="about F (0 < F < 1) of each stratum's conversations go to "
                        "--validation-output")
    p.add_argument("--validation-output", metavar="PATH", help="the validation file")
    p.add_argument("--condition", choices=["none", "system"], default="none",
                   help="system: end the system message with persona, arc and topic")
    p.add_argument("--strip-metadata", action="store_true",
                   help="no metadata columns (for services that refuse unknown keys)")
    p.add_argument("--meta", action="store_true", help="brightrun-v4: a first _meta line")
    p.add_argument("--target-model", metavar="NAME", help="full-json: the target model")
    p.add_argument("--report", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="a local tokenizer.json to count tokens with (nothing is downloaded)")
    p.add_argument("--max-tokens", type=parse_count, metavar="N",
                   help="report rows longer than N tokens (needs --tokenizer)")
    p.add_argument("--drop-over-max", action="store_true",
                   help="drop the rows over --max-tokens instead of only reporting them")
    p.add_argument("--card", metavar="PATH", help="write a dataset card (Markdown, YAML header)")
    p.add_argument("--include-rejected", action="store_true",
                   help="keep pairs a reviewer rejected (default: left out; chat cuts the "
                        "conversation before its first rejected turn)")
    p.add_argument("--approved-only", action="store_true",
                   help="only approved pairs (chat: conversations whose assistant turns all are)")
    p.add_argument("--seed-examples-only", action="store_true",
                   help="only pairs marked as seed examples")
    p.add_argument("--allow-empty", action="store_true",
                   help="write an empty file when nothing is selected (default: fail, naming "
                        "what removed everything)")
    p.add_argument("--dedup", action="store_true", help="keep only each near-duplicate "
                   "cluster's representative (clusters of the last `reenrich dedup`)")
    p.add_argument("--workers", type=parse_count, default=1, metavar="N",
                   help="processes writing key-range slices in parallel, each on its own "
                        "connection (default 1); the same files (--hub: the rows in N or more "
                        "shards)")
    _add_version_flags(p)

    p = add("datasets", cmd_datasets, "dataset versions: list them, or show NAME, diff A B, "
            "verify NAME [PATH...] (exit 1 if a file differs)")
    _add_datasets_actions(p)

    p = add("validate", cmd_validate, "check the stored enriched documents against the "
            "contract, or an exported file (--file) against trainers' rules; exit 1 on "
            "violations")
    p.add_argument("--file", metavar="PATH", help="an exported JSON Lines file (offline)")
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = add("stats", cmd_stats, "the dataset's composition by persona, arc, topic and their "
            "crossings, with legacy rows, failures, tiers and enrichment versions")
    p.add_argument("--by", type=_by, default=("persona", "arc", "topic"), metavar="FIELDS",
                   help="dimensions to break down by (default persona,arc,topic)")
    p.add_argument("--thin", type=parse_count, default=3, metavar="N",
                   help="a cell with fewer than N conversations is thin (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--html", metavar="PATH",
                   help="also write a self-contained HTML page (its folder is created)")

    p = add("dedup", cmd_dedup, "find near-duplicate conversations (MinHash + LSH, exact "
            "Jaccard of word 5-grams) and keep their clusters; incremental")
    dedup_arguments(p)

    add("demo", cmd_demo, "embedded PostgreSQL + sample data + backfill, end to end (never "
        "into a database holding other data)")

    from worker.cli.review import register as register_review

    register_review(sub, _write)

    return parser


def _debug_requested(args: argparse.Namespace) -> bool:
    level = getattr(args, "log_level", None) or os.environ.get("REENRICH_LOG_LEVEL", "")
    return str(level).upper() == "DEBUG"


def _fail(message: str, exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(f"reenrich: {message}\n")
    sys.stderr.flush()


def _one_line(text: str) -> str:
    from worker.cli.status import first_line

    return first_line(text)


def _error_exit(exc: Exception, ctx: Context | None, debug: bool) -> int:
    """Any error a command raised, as one line on stderr and an exit status."""
    from psycopg import Error as DriverError
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError | DriverError):  # the one place driver errors are wrapped
        exc_ = db_engine.database_error(
            exc, ctx.url_for_errors() if ctx else None,
            ctx.settings.data_dir if ctx and ctx.embedded else None)
        _fail(str(exc_), exc, debug)
        return exc_.exit_code
    if isinstance(exc, ReenrichError):
        _fail(_one_line(str(exc)) or type(exc).__name__, exc, debug)
        return exc.exit_code
    if isinstance(exc, OSError):  # a file the command read or wrote
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or type(exc).__name__}{where}", exc, debug)
        return EXIT_ERROR
    _fail(f"unexpected error: {type(exc).__name__}: {_one_line(str(exc))} (this is a bug: "
          "run it again with --log-level debug for the traceback, and report it)", exc, debug)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: one line, exit 2, before anything runs
    debug = _debug_requested(args)
    ctx: Context | None = None
    try:
        settings = load_settings(log_level=args.log_level, log_format=args.log_format)
        logs.configure(settings.log_level, settings.log_format)
        ctx = Context(settings)
        code: int = args.func(args, ctx)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining
        # about the unflushed stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        return _error_exit(exc, ctx, debug)
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
