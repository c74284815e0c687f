"""`reenrich migrate`: the schema up to head, or down to a revision (asking before a drop)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import structlog

from worker.cli.args import Subparsers, add_command
from worker.cli.context import CommandError
from worker.cli.output import write
from worker.errors import ConfirmationRequired

if TYPE_CHECKING:
    from worker.cli.context import Context

log = structlog.get_logger("reenrich.cli")


def register(commands: Subparsers) -> None:
    p = add_command(commands, "migrate", cmd_migrate,
                    "apply the database migrations (Alembic) up to head")
    p.add_argument("--downgrade", metavar="REVISION",
                   help="downgrade to REVISION (base, 0001, ... or -1); refuses to drop tables "
                        "holding rows without --yes")
    p.add_argument("--yes", action="store_true",
                   help="confirm a downgrade that drops tables holding rows")


def cmd_migrate(args: argparse.Namespace, ctx: Context) -> int:
    from worker.db import migrate as db_migrate

    if not args.downgrade:
        db_migrate.upgrade(ctx.url, "head")
        log.info("migrate.done", revision=db_migrate.SCHEMA_HEAD)
        write(f"database schema at {db_migrate.SCHEMA_HEAD} (head)")
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
    write(f"database schema downgraded from {plan.current} to {plan.target}{dropped}")
    return 0


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
