"""`reenrich dedup` on the command line: its flags, its summary, `--show`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from worker.errors import UsageError

# Only what building the parser needs is imported at the top: every command
# builds it, and the MinHash libraries are for `dedup` alone.
Out = Callable[[str], None]


def parse_threshold(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a similarity threshold: give a number in (0, 1], e.g. 0.7")
    return number


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   metavar="T", help="near-duplicates: Jaccard similarity of word 5-gram "
                   "shingles at least T (default 0.7)")
    p.add_argument("--within-cell", action="store_true",
                   help="link only conversations of the same persona × arc × topic cell "
                        "(clusters across cells are still counted)")
    p.add_argument("--workers", type=_count, default=1, metavar="N",
                   help="processes computing signatures (default 1; the database work "
                        "stays in this one)")
    p.add_argument("--show", action="store_true",
                   help="print the stored clusters, largest first (computes nothing)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object (with --show: JSON Lines, a cluster a line)")


def command(args: argparse.Namespace, engine: Engine, out: Out) -> int:
    import orjson

    from worker.dataset import dedup
    from worker.jobs.dedup import run_dedup

    if args.show:
        if args.threshold is not None or args.within_cell or args.workers != 1:
            raise UsageError("--show prints the stored clusters: give --threshold, "
                             "--within-cell and --workers to a run (`reenrich dedup`)")
        return show(engine, as_json=args.json, out=out)
    scope = dedup.Scope.CELL if args.within_cell else dedup.Scope.TABLE
    threshold = dedup.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    summary = run_dedup(engine, threshold=threshold, scope=scope, workers=args.workers)
    if args.json:
        out(orjson.dumps(summary, default=str).decode())
    else:
        print_summary(summary, out)
    return 0


def show(engine: Engine, *, as_json: bool, out: Out) -> int:
    import orjson
    import structlog

    from worker.db import dedup as db

    shown = 0
    with engine.connect() as conn, conn.begin():
        for row in db.all_clusters(conn):
            members = [str(m) for m in row["members"]]
            if as_json:
                out(orjson.dumps({"cluster_id": str(row["cluster_id"]),
                                  "representative": str(row["representative"]),
                                  "members": members, "size": row["size"],
                                  "cells": row["cells"], "threshold": row["threshold"],
                                  "scope": row["scope"]}).decode())
            else:
                out(f"{row['cluster_id']}  size {row['size']}  representative "
                    f"{row['representative']}  cells {row['cells']}: {' '.join(members)}")
            shown += 1
        if not shown:
            structlog.get_logger("reenrich.dedup").warning(
                "dedup.no_clusters", message="no clusters stored: run `reenrich dedup` "
                "(none found, or it never ran)")
    return 0


def _label(value: Any) -> str:
    return "(none)" if value is None else str(value)


def print_summary(s: dict[str, Any], out: Out) -> None:
    out(f"dedup: {s['conversations']} conversations; signatures computed "
        f"{s['signatures_computed']}, reused {s['signatures_reused']}; "
        f"{s['candidate_pairs_verified']} candidate pairs verified")
    out(f"clusters: {s['clusters']} holding {s['conversations_in_clusters']} conversations; "
        f"duplicates (not representatives) {s['duplicates']}, duplicate rate "
        f"{100 * s['duplicate_rate']:.2f}% (threshold {s['threshold']}, scope {s['scope']})")
    out(f"clusters across persona × arc × topic cells: {s['cross_cell_clusters']}")
    print_details(s, out)
    out(f"seconds: {', '.join(f'{k} {v}' for k, v in s['seconds'].items())}")


def print_details(s: dict[str, Any], out: Out) -> None:
    """Cells, largest clusters and repeated responses (the summary's and stats' lines)."""
    cells = [c for c in s["duplicate_rates"]["cell"] if c["duplicates"]]
    if cells:
        out("cells with the highest duplicate rate:")
        for c in cells:
            out(f"  {_label(c['persona'])}|{_label(c['arc'])}|{_label(c['topic'])}: "
                f"{c['duplicates']} of {c['conversations']} ({100 * c['duplicate_rate']:.1f}%)")
    if s["largest_clusters"]:
        out("largest clusters:")
        for c in s["largest_clusters"]:
            more = " …" if c["size"] > len(c["sample"]) else ""
            out(f"  {c['cluster_id']} size {c['size']} (representative {c['representative']}):"
                f" {' '.join(c['sample'])}{more}")
    repeated = s["repeated_responses"]
    out(f"repeated assistant responses: {repeated['responses']} responses found in more than "
        f"one conversation ({repeated['occurrences']} occurrences, "
        f"{repeated['conversations']} conversations)")
    for r in repeated["top"]:
        out(f"  {r['conversations']}x {r['preview']!r}")
