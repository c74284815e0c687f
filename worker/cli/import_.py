"""`reenrich import`: load a JSON bundle or a JSON Lines file (`import` is a keyword: `import_`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from worker.cli.args import Subparsers, add_command
from worker.cli.output import write
from worker.errors import EXIT_ERROR, FileError

if TYPE_CHECKING:
    from worker.cli.context import Context


def register(commands: Subparsers) -> None:
    p = add_command(commands, "import", cmd_import,
                    "load a JSON bundle or JSON Lines file (bundle-format)")
    p.add_argument("path", help="a .json bundle or a .jsonl stream")


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    from worker.jobs.importer import import_path

    path = Path(args.path)
    if path.is_dir():
        raise FileError(f"{path} is a directory: give a .json bundle or a .jsonl file")
    if not path.exists():
        raise FileError(f"{path} does not exist")
    summary = import_path(ctx.engine(), path)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())) or "nothing"
    write(f"imported {args.path}: {counts}; {summary.failed} record(s) failed, "
          f"{len(summary.warnings)} warning(s)")
    for err in summary.errors:
        write(f"  {err['where']}: {err['reason']}")
    return EXIT_ERROR if summary.failed else 0
