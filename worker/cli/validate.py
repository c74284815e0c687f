"""`reenrich validate`: the stored documents against the contract, or an exported file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from worker.cli.args import Subparsers, add_command
from worker.cli.output import write
from worker.errors import FileError

if TYPE_CHECKING:
    from worker.cli.context import Context


def register(commands: Subparsers) -> None:
    p = add_command(commands, "validate", cmd_validate, "check the stored enriched documents "
                    "against the contract, or an exported file (--file) against trainers' "
                    "rules; exit 1 on violations")
    p.add_argument("--file", metavar="PATH", help="an exported JSON Lines file (offline)")
    p.add_argument("--json", action="store_true", help="one JSON object")


def cmd_validate(args: argparse.Namespace, ctx: Context) -> int:
    from worker.dataset.validate import check_file, check_stored, print_file, print_stored

    if args.file:
        file = Path(args.file)
        if file.is_dir():
            raise FileError(f"{file} is a directory: give an exported .jsonl file")
        if not file.is_file():
            raise FileError(f"no file at {file}")
        return print_file(check_file(file), as_json=args.json, out=write)
    return print_stored(check_stored(ctx.engine()), as_json=args.json, out=write)
