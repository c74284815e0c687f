"""The `reenrich` command: parse -> settings -> logging -> one command -> exit code.

stdout carries what a command prints for people and pipes (JSON, JSON Lines,
tables); every log line goes to stderr. Every mistake a user can make ends in
one line on stderr (`reenrich: ...`) and an exit status from the README's
table: flags are checked before any work (exit 2), errors the project raises
are `ReenrichError`s, and driver errors become one `DatabaseError` line in
`main` (see worker.db.engine.database_error). A traceback is printed only with
`--log-level debug`.

Each command lives in its own module of this package (COMMANDS, in `--help`
order), with `register(commands)` adding its parser and a `cmd_*(args, ctx)`
function that runs it. Building the parser imports no database or dataset
code: a command imports what it needs when it runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Protocol

from worker import __version__, logs
from worker.cli import (
    backfill,
    datasets,
    dedup,
    demo,
    enrich,
    export,
    follow,
    import_,
    migrate,
    review,
    stats,
    status,
    validate,
)
from worker.cli.args import Subparsers, parse_level
from worker.cli.context import CommandError, Context
from worker.cli.output import first_line
from worker.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, ReenrichError

__all__ = ["COMMANDS", "EXIT_ERROR", "EXIT_USAGE", "CommandError", "build_parser", "main"]


class CommandModule(Protocol):
    def register(self, commands: Subparsers) -> None: ...


# The command modules, in the order `reenrich --help` lists their commands.
COMMANDS: tuple[CommandModule, ...] = (
    migrate,  # migrate
    import_,  # import
    backfill,  # backfill, cancel
    status,  # status, failures, show
    enrich,  # enrich
    follow,  # follow, workers
    export,  # export
    datasets,  # datasets
    validate,  # validate
    stats,  # stats
    dedup,  # dedup
    demo,  # demo
    review,  # review sheet|import|set|list
)

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
    # Typed as the base class: the command modules take its subparsers of ArgumentParsers.
    parser: argparse.ArgumentParser = Parser(
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
    # Subcommand parsers are `Parser`s too: add_parser makes them of the parent's class.
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


def _debug_requested(args: argparse.Namespace) -> bool:
    level = getattr(args, "log_level", None) or os.environ.get("REENRICH_LOG_LEVEL", "")
    return str(level).upper() == "DEBUG"


def _fail(message: str, exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(f"reenrich: {message}\n")
    sys.stderr.flush()


def _error_exit(exc: Exception, ctx: Context | None, debug: bool) -> int:
    """Any error a command raised, as one line on stderr and an exit status."""
    from psycopg import Error as DriverError
    from sqlalchemy.exc import DBAPIError

    from worker.db import engine as db_engine

    if isinstance(exc, DBAPIError | DriverError):  # the one place driver errors are wrapped
        exc_ = db_engine.database_error(
            exc, ctx.url_for_errors() if ctx else None,
            ctx.settings.data_dir if ctx and ctx.embedded else None)
        _fail(str(exc_), exc, debug)
        return exc_.exit_code
    if isinstance(exc, ReenrichError):
        _fail(first_line(str(exc)) or type(exc).__name__, exc, debug)
        return exc.exit_code
    if isinstance(exc, OSError):  # a file the command read or wrote
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or type(exc).__name__}{where}", exc, debug)
        return EXIT_ERROR
    _fail(f"unexpected error: {type(exc).__name__}: {first_line(str(exc))} (this is a bug: "
          "run it again with --log-level debug for the traceback, and report it)", exc, debug)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: one line, exit 2, before anything runs
    debug = _debug_requested(args)
    from worker.config import load_settings  # pydantic: after parsing, --help needs none

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
