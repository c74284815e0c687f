"""`reenrich follow` (the long-running enricher) and `reenrich workers` (what the followers do).

`workers` is printed by worker.cli.status, which shows the same table under
the runs; it is registered here, after follow, where `--help` has listed it.
"""

from __future__ import annotations

import argparse
import threading
from typing import TYPE_CHECKING

from worker.cli.args import Subparsers, add_command, parse_batch_size, parse_positive
from worker.cli.context import install_stop_handlers
from worker.cli.output import write

if TYPE_CHECKING:
    from worker.cli.context import Context


def register(commands: Subparsers) -> None:
    p = add_command(commands, "follow", cmd_follow, "long-running: enrich conversations as "
                    "triggers mark them (LISTEN/NOTIFY plus polling); SIGTERM finishes the "
                    "batch and exits 0")
    p.add_argument("--poll-interval", type=parse_positive, metavar="SECONDS",
                   help="poll the queue this often even without notifications "
                        "(env REENRICH_POLL_INTERVAL, default 5)")
    p.add_argument("--batch-size", type=parse_batch_size, metavar="N",
                   help="conversations per batch (env REENRICH_BATCH_SIZE, default 200)")

    p = add_command(commands, "workers", cmd_workers,
                    "follow workers: heartbeat, rows enriched, queue depth")
    p.add_argument("--json", action="store_true",
                   help='one JSON object: {"queue": {...}, "workers": [...]}')
    p.add_argument("--wide", action="store_true", help="every column, untruncated")


def cmd_follow(args: argparse.Namespace, ctx: Context) -> int:
    from worker.config import load_enrichment_config
    from worker.db.engine import make_engine
    from worker.enrichment.processing import Processor
    from worker.jobs.follow import APPLICATION_NAME, DEFAULT_BATCH_SIZE, FollowOptions, run_follow

    stop = threading.Event()
    install_stop_handlers(stop)
    options = FollowOptions(
        poll_interval=args.poll_interval or ctx.settings.poll_interval,
        batch_size=args.batch_size or ctx.settings.batch_size or DEFAULT_BATCH_SIZE,
        lease_seconds=ctx.settings.lease_seconds,
        heartbeat_seconds=ctx.settings.heartbeat_seconds, limits=ctx.write_limits())
    processor = Processor(load_enrichment_config(ctx.settings),
                          max_document_bytes=ctx.settings.max_document_bytes)
    # Its own engine, named in pg_stat_activity; follow checks the schema once connected.
    engine = make_engine(ctx.url, application_name=APPLICATION_NAME)
    try:
        run_follow(engine, ctx.url, processor, options, stop,
                   check_schema=lambda: ctx.check_schema(engine))
    finally:
        engine.dispose()
    return 0


def cmd_workers(args: argparse.Namespace, ctx: Context) -> int:
    from worker.cli.status import print_workers

    return print_workers(ctx.engine(), as_json=args.json, out=write, wide=args.wide)
