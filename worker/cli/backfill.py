"""`reenrich backfill` and `reenrich cancel`: start, resume, join or cancel a backfill run."""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from worker.cli.args import (
    Subparsers,
    add_command,
    add_filters,
    check_keys,
    parse_batch_size,
    parse_count,
    parse_non_negative,
    parse_positive,
)
from worker.cli.context import CommandError, Context, install_stop_handlers
from worker.cli.output import one_line, write
from worker.errors import EXIT_INTERRUPTED, EXIT_RUN_BUSY

if TYPE_CHECKING:
    from worker.jobs.backfill import BackfillOptions


def register(commands: Subparsers) -> None:
    p = add_command(commands, "backfill", cmd_backfill,
                    "re-enrich stored conversations: checkpointed, idempotent, resumable")
    p.add_argument("--run", metavar="NAME", help="run name (default: resume the latest "
                   "unfinished run with the same filters, else start a new one)")
    p.add_argument("--batch-size", type=parse_batch_size, metavar="N",
                   help="fixed page size, 1..100000 (default: adapts toward a target page "
                        "duration)")
    add_filters(p)
    p.add_argument("--dry-run", action="store_true", help="compute and report, write nothing")
    p.add_argument("--restart", action="store_true", help="run a finished run again from the start")
    p.add_argument("--workers", type=parse_count, default=1, metavar="N",
                   help="processes sharing the run (each claims key-range slices)")
    p.add_argument("--max-rows-per-second", type=parse_positive, metavar="R",
                   help="throttle to at most R rows per second")
    p.add_argument("--sleep", type=parse_non_negative, metavar="SECONDS",
                   help="pause between pages")
    # For the helper processes of --workers and for tests: not in --help.
    p.add_argument("--max-pages", type=parse_count, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--join", action="store_true", help=argparse.SUPPRESS)

    p = add_command(commands, "cancel", cmd_cancel,
                    "cancel an unfinished backfill run (workers stop after a page)")
    p.add_argument("run", metavar="NAME")


def cmd_backfill(args: argparse.Namespace, ctx: Context) -> int:
    from worker.config import load_enrichment_config
    from worker.db import admin
    from worker.enrichment.processing import Processor
    from worker.jobs.backfill import RunBusy, run_backfill

    options = backfill_options(args, ctx)
    engine = ctx.engine()
    if not args.join:
        check_keys(engine, persona=[args.persona] if args.persona else [],
                   arc=[args.arc] if args.arc else [], topic=[args.topic] if args.topic else [])
    stop = threading.Event()
    install_stop_handlers(stop)
    processor = Processor(load_enrichment_config(ctx.settings),
                          max_document_bytes=ctx.settings.max_document_bytes)
    with engine.connect() as conn:  # the server's clock: it stamps finished_at
        started = admin.server_clock(conn)
    try:
        result = run_backfill(engine, processor, options, stop)
    except RunBusy as exc:
        sys.stderr.write(f"reenrich: {one_line(str(exc))}\n")
        return EXIT_RUN_BUSY
    if args.dry_run:
        write(f"dry run: {result.processed} rows, {result.updated} would be updated, "
              f"{result.unchanged} unchanged, {result.failed} would fail")
    elif not args.join:  # a helper process of --workers: the parent prints the summary
        _summary(ctx, result, started)
    code: int = result.exit_code
    return code


def backfill_options(args: argparse.Namespace, ctx: Context) -> BackfillOptions:
    from worker.db.repository import Filters
    from worker.jobs.backfill import BackfillOptions

    settings = ctx.settings
    filters = Filters(persona=args.persona, arc=args.arc, topic=args.topic,
                      since=args.since, until=args.until)
    # What the helper processes of --workers are started with (they --join the run).
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
        child_args=child_args, limits=ctx.write_limits(),
        reconnect_seconds=settings.reconnect_seconds,
    )


def _summary(ctx: Context, result: Any, started: datetime) -> None:
    """What the run did, for people (stdout): counts, status, and what to do next."""
    from worker.db import checkpoints

    with ctx.engine().connect() as conn:
        run = checkpoints.get_run(conn, result.run_name)
    name = one_line(result.run_name)
    if run is None:
        write(f"backfill run {name}: {result.status}; processed {result.processed}, updated "
              f"{result.updated}, unchanged {result.unchanged}, failed {result.failed}")
        return
    if run.finished_at is not None and run.finished_at < started:
        write(f"backfill run {name} had already finished ({run.status}): nothing to do "
              f"(`reenrich backfill --run {name} --restart` runs it again)")
        return
    total = "?" if run.total is None else run.total
    write(f"backfill run {name}: {run.status}; processed {run.processed} of {total}, "
          f"updated {run.updated}, unchanged {run.unchanged}, failed {run.failed}")
    if run.failed:
        write(f"{run.failed} row(s) failed and kept their last good document: "
              f"reenrich failures --run {name}")
    if run.status == "cancelled":
        write(f"the run was cancelled (`reenrich backfill --run {name} --restart` runs it "
              "again)")
    elif result.exit_code == EXIT_INTERRUPTED or run.status == "interrupted":
        write(f"stopped before the end: resume with `reenrich backfill --run {name}`")
    elif run.status == "running":
        write("other workers are still on it: `reenrich status` follows the run")


def cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    from worker.db import checkpoints

    with ctx.engine().begin() as conn:
        cancelled = checkpoints.cancel_run(conn, args.run)
    if not cancelled:
        raise CommandError(f"no unfinished run named {args.run!r} (see `reenrich status`)")
    write(f"run {args.run} cancelled; its workers stop after their current page")
    return 0
