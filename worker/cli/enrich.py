"""`reenrich enrich ID...`: enrich these conversations now, a line each."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from worker.cli.args import Subparsers, add_command, parse_uuid
from worker.cli.output import write
from worker.errors import EXIT_ERROR

if TYPE_CHECKING:
    from worker.cli.context import Context


def register(commands: Subparsers) -> None:
    p = add_command(commands, "enrich", cmd_enrich, "enrich these conversations now; a line "
                    "each (exit 1 if any failed or was not found)")
    p.add_argument("ids", nargs="+", type=parse_uuid, metavar="ID")


def cmd_enrich(args: argparse.Namespace, ctx: Context) -> int:
    from worker.api import enrich_conversations
    from worker.config import load_enrichment_config

    results = enrich_conversations(ctx.engine(), args.ids,
                                   config=load_enrichment_config(ctx.settings))
    for result in results:
        write(result.line())
    return 0 if all(r.ok for r in results) else EXIT_ERROR
