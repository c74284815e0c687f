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
        head = db_migrate.SCHEMA_HEAD
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


def parse_positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return number


def parse_count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return number


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
    log.info("migrate.done", revision=args.downgrade or db_migrate.SCHEMA_HEAD)
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
        lease_seconds=settings.lease_seconds, max_pages=args.max_pages, join=args.join,
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


def cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    from worker.db import checkpoints

    with ctx.engine().begin() as conn:
        status = checkpoints.cancel_run(conn, args.run)
    if status is None:
        raise CommandError(f"no unfinished run named {args.run!r} (see `reenrich status`)")
    _write(f"run {args.run} cancelled; its workers stop after their current page")
    return 0


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


def cmd_enrich(args: argparse.Namespace, ctx: Context) -> int:
    from worker.api import enrich_conversations

    results = enrich_conversations(ctx.engine(), args.ids,
                                   config=load_enrichment_config(ctx.settings))
    for result in results:
        _write(result.line())
    return 0 if all(r.ok for r in results) else EXIT_ERROR


def cmd_follow(args: argparse.Namespace, ctx: Context) -> int:
    from worker.db.engine import make_engine
    from worker.follow import APPLICATION_NAME, DEFAULT_BATCH_SIZE, FollowOptions, run_follow
    from worker.processing import Processor

    stop = threading.Event()
    install_stop_handlers(stop)
    options = FollowOptions(
        poll_interval=args.poll_interval or ctx.settings.poll_interval,
        batch_size=args.batch_size or ctx.settings.batch_size or DEFAULT_BATCH_SIZE,
        lease_seconds=ctx.settings.lease_seconds,
        heartbeat_seconds=ctx.settings.heartbeat_seconds)
    processor = Processor(load_enrichment_config(ctx.settings))
    engine = make_engine(ctx.url, application_name=APPLICATION_NAME)
    try:
        run_follow(engine, ctx.url, processor, options, stop,
                   check_schema=lambda: ctx._check_schema(engine))
    finally:
        engine.dispose()
    return 0


def cmd_workers(args: argparse.Namespace, ctx: Context) -> int:
    from worker.status import print_workers

    return print_workers(ctx.engine(), as_json=args.json, out=_write)


def _fields(value: str) -> tuple[str, ...]:
    from worker.sampling import SamplingError, parse_stratify_by

    try:
        return parse_stratify_by(value)
    except SamplingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from worker.db.dataset import DatasetFilters
    from worker.export import ExportError, ExportOptions, export_command
    from worker.sampling import SamplingSpec

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    options = ExportOptions(
        format=args.format, output=Path(args.output),
        validation_output=path(args.validation_output),
        filters=DatasetFilters(
            personas=tuple(args.persona or ()), arcs=tuple(args.arc or ()),
            topics=tuple(args.topic or ()), tiers=tuple(args.tier or ()),
            min_quality=args.min_quality, since=args.since, until=args.until,
            require_scaffolding=args.require_scaffolding, exclude_failed=args.exclude_failed),
        sampling=SamplingSpec(stratify_by=args.stratify_by or (), per_stratum=args.per_stratum,
                              balance=args.balance, seed=args.seed,
                              validation_fraction=args.split_validation),
        condition=args.condition, strip_metadata=args.strip_metadata, meta=args.meta,
        target_model=args.target_model, tokenizer=path(args.tokenizer),
        max_tokens=args.max_tokens, drop_over_max=args.drop_over_max, dedup=args.dedup)
    try:
        options.check()  # before connecting: a wrong flag needs no database
        return export_command(
            ctx.engine(), options,
            consultant_profile=load_enrichment_config(ctx.settings).consultant_profile,
            report_path=path(args.report), card_path=path(args.card), out=_write)
    except ExportError as exc:
        raise CommandError(str(exc)) from exc


def cmd_validate(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from worker.checks import check_file, check_stored, print_file, print_stored

    if args.file:
        if not Path(args.file).is_file():
            raise CommandError(f"no file at {args.file}")
        return print_file(check_file(Path(args.file)), as_json=args.json, out=_write)
    return print_stored(check_stored(ctx.engine()), as_json=args.json, out=_write)


def cmd_stats(args: argparse.Namespace, ctx: Context) -> int:
    import json
    from pathlib import Path

    from worker.stats import collect, print_text
    from worker.stats_html import render

    stats = collect(ctx.engine(), by=args.by, thin=args.thin)
    if args.html:
        Path(args.html).write_text(render(stats), encoding="utf-8")
        log.info("stats.html_written", path=args.html)
    if args.json:
        _write(json.dumps(stats, ensure_ascii=False))
    else:
        print_text(stats, _write)
    return 0


def cmd_dedup(args: argparse.Namespace, ctx: Context) -> int:
    from worker.dedup_cli import command
    from worker.errors import ReenrichError, UsageError

    try:
        return command(args, ctx.engine(), out=_write)
    except UsageError as exc:
        sys.stderr.write(f"reenrich: {exc}\n")
        return EXIT_USAGE
    except ReenrichError as exc:
        raise CommandError(str(exc)) from exc


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
    from worker.dedup_cli import add_arguments as dedup_arguments

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
    p.add_argument("--join", action="store_true", help=argparse.SUPPRESS)

    p = add("cancel", cmd_cancel, "cancel an unfinished backfill run (workers stop after a page)")
    p.add_argument("run", metavar="NAME")

    p = add("status", cmd_status, "backfill runs: status, counts, rate, ETA")
    p.add_argument("--json", action="store_true", help="a JSON array of runs")

    p = add("failures", cmd_failures, "conversations that failed enrichment")
    p.add_argument("--run", metavar="NAME", help="only failures last seen by this run")
    p.add_argument("--all", action="store_true", help="include resolved failures")
    p.add_argument("--json", action="store_true", help="a JSON array")

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
    p.add_argument("--batch-size", type=parse_count, metavar="N",
                   help="conversations per batch (env REENRICH_BATCH_SIZE, default 200)")

    p = add("workers", cmd_workers, "follow workers: heartbeat, rows enriched, queue depth")
    p.add_argument("--json", action="store_true",
                   help='one JSON object: {"queue": {...}, "workers": [...]}')

    p = add("export", cmd_export, "write a training file from the stored enriched documents "
            "(chat, prompt-completion, brightrun-v4, full-json), with filters, stratified "
            "sampling, a validation split, a report and a dataset card")
    p.add_argument("--format", required=True,
                   choices=["chat", "prompt-completion", "brightrun-v4", "full-json"])
    p.add_argument("--output", required=True, metavar="PATH", help="the file to write")
    p.add_argument("--persona", action="append", metavar="KEY", help="keep this persona key "
                   "(repeatable: any of them)")
    p.add_argument("--arc", action="append", metavar="KEY", help="keep this emotional arc key "
                   "(repeatable)")
    p.add_argument("--topic", action="append", metavar="KEY", help="keep this training topic "
                   "key (repeatable)")
    p.add_argument("--tier", action="append", metavar="NAME",
                   choices=["seed_dataset", "production", "experimental", "rejected"],
                   help="keep this quality tier (repeatable)")
    p.add_argument("--min-quality", type=float, metavar="X",
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
    p.add_argument("--split-validation", type=float, metavar="F",
                   help="about F of each stratum's conversations go to --validation-output")
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
    p.add_argument("--dedup", action="store_true", help="keep only each near-duplicate "
                   "cluster's representative (clusters of the last `reenrich dedup`)")

    p = add("validate", cmd_validate, "check the stored enriched documents against the "
            "contract, or an exported file (--file) against trainers' rules; exit 1 on "
            "violations")
    p.add_argument("--file", metavar="PATH", help="an exported JSON Lines file (offline)")
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = add("stats", cmd_stats, "the dataset's composition by persona, arc, topic and their "
            "crossings, with legacy rows, failures, tiers and enrichment versions")
    p.add_argument("--by", type=_fields, default=("persona", "arc", "topic"), metavar="FIELDS",
                   help="dimensions to break down by (default persona,arc,topic)")
    p.add_argument("--thin", type=parse_count, default=3, metavar="N",
                   help="a cell with fewer than N conversations is thin (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--html", metavar="PATH", help="also write a self-contained HTML page")

    p = add("dedup", cmd_dedup, "find near-duplicate conversations (MinHash + LSH, exact "
            "Jaccard of word 5-grams) and keep their clusters; incremental")
    dedup_arguments(p)

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
