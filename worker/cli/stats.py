"""`reenrich stats`: the dataset's composition (text, --json, and an --html page)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from worker.cli.args import Subparsers, add_command, parse_count
from worker.cli.output import write
from worker.errors import FileError

if TYPE_CHECKING:
    from worker.cli.context import Context

log = structlog.get_logger("reenrich.cli")


def register(commands: Subparsers) -> None:
    p = add_command(commands, "stats", cmd_stats, "the dataset's composition by persona, arc, "
                    "topic and their crossings, with legacy rows, failures, tiers and "
                    "enrichment versions")
    p.add_argument("--by", type=parse_dimensions, default=("persona", "arc", "topic"),
                   metavar="FIELDS", help="dimensions to break down by (default persona,arc,topic)")
    p.add_argument("--thin", type=parse_count, default=3, metavar="N",
                   help="a cell with fewer than N conversations is thin (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--html", metavar="PATH",
                   help="also write a self-contained HTML page (its folder is created)")


def parse_dimensions(value: str) -> tuple[str, ...]:
    """--by: persona, arc, topic or a comma list of them."""
    from worker.dataset.sampling import SamplingError
    from worker.dataset.stats import parse_by

    try:
        return parse_by(value)
    except SamplingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_stats(args: argparse.Namespace, ctx: Context) -> int:
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
        write(json.dumps(stats, ensure_ascii=False))
    else:
        print_text(stats, write)
    return 0
