"""`reenrich datasets`: list, show, diff and verify dataset versions (text or JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.cli.args import Subparsers, add_command
from worker.cli.context import CommandError
from worker.cli.output import Out, write

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from worker.cli.context import Context
    from worker.db import versions as db_versions


def register(commands: Subparsers) -> None:
    p = add_command(commands, "datasets", cmd_datasets, "dataset versions: list them, or show "
                    "NAME, diff A B, verify NAME [PATH...] (exit 1 if a file differs)")
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


def cmd_datasets(args: argparse.Namespace, ctx: Context) -> int:
    from worker.dataset.versions import VersionError

    action = args.datasets_command
    try:
        if action == "show":
            return show_version(ctx.engine(), args.name, as_json=args.json, out=write)
        if action == "diff":
            return diff_versions(ctx.engine(), args.a, args.b, as_json=args.json, out=write)
        if action == "verify":
            return verify_version(ctx.engine(), args.name, [Path(p) for p in args.paths],
                                  as_json=args.json, out=write)
        return list_versions(ctx.engine(), as_json=args.json, out=write)
    except VersionError as exc:
        raise CommandError(str(exc)) from exc


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _splits(version: db_versions.StoredVersion) -> str:
    return ", ".join(f"{s.split} {s.rows} rows / {s.conversations} conversations"
                     for s in version.splits) or "no splits"


def list_versions(engine: Engine, *, as_json: bool, out: Out) -> int:
    from worker.db import versions as db_versions

    with engine.connect() as conn:
        found = db_versions.list_versions(conn)
    if as_json:
        out(_dumps([v.as_json() for v in found]))
        return 0
    if not found:
        out("no dataset versions yet: every `reenrich export` that writes files records one")
    for v in found:
        source = f", from {v.from_version}" if v.from_version else ""
        out(f"{v.name}  {v.created_at.isoformat(timespec='seconds')}  {v.format}  "
            f"contract {v.contract_version}  {v.members} conversations  "
            f"({_splits(v)}){source}")
    return 0


def show_version(engine: Engine, name: str, *, as_json: bool, out: Out) -> int:
    from worker.db import versions as db_versions

    with engine.connect() as conn:
        version = db_versions.get_version(conn, name)
    data = version.as_json()
    if as_json:
        out(_dumps(data))
        return 0
    out(f"{version.name}: {version.format}, {version.members} conversations, contract "
        f"version {version.contract_version}, reenrich {version.reenrich_version}, created "
        f"{version.created_at.isoformat(timespec='seconds')}"
        + (f", rebuilt from {version.from_version}" if version.from_version else ""))
    for s in version.splits:
        out(f"  {s.split}: {s.rows} rows, {s.conversations} conversations, {s.pairs} pairs")
    out("files:")
    for f in version.files:
        out(f"  {f.sha256}  {f.size_bytes:>12}  {f.name}  ({f.path})")
    out("options: " + _dumps(version.options))
    return 0


def diff_versions(engine: Engine, a: str, b: str, *, as_json: bool, out: Out) -> int:
    from worker.dataset.versions import diff_members, print_diff
    from worker.db import versions as db_versions

    with engine.connect() as conn:
        first, second = db_versions.get_version(conn, a), db_versions.get_version(conn, b)
        diff = diff_members(a, b, db_versions.diff_pairs(conn, first.version_id,
                                                         second.version_id))
    if as_json:
        out(_dumps(diff.as_json()))
    else:
        print_diff(diff, out)
    return 0


def verify_version(engine: Engine, name: str, paths: list[Path], *, as_json: bool,
                   out: Out) -> int:
    """Exit 1 when any file differs from its recorded SHA-256 or is missing."""
    from worker.dataset.versions import FileCheck, locate, verify_files
    from worker.db import versions as db_versions

    with engine.connect() as conn:
        version = db_versions.get_version(conn, name)
    results = verify_files(locate(version.files, paths))
    bad = [r for r in results if r.outcome is not FileCheck.OK]
    if as_json:
        out(_dumps({"name": name, "ok": not bad, "files": [
            {"name": r.name, "path": r.path, "outcome": str(r.outcome), "expected": r.expected,
             "actual": r.actual} for r in results]}))
    else:
        for r in results:
            detail = "" if r.outcome is FileCheck.OK else (
                f" (recorded {r.expected}, found {r.actual or 'no file'})")
            out(f"{r.outcome.upper():8} {r.name}  {r.path}{detail}")
        out(f"{name}: {len(results) - len(bad)} of {len(results)} files match"
            + (f", {len(bad)} differ or are missing" if bad else ""))
    return 1 if bad else 0
