"""`reenrich dedup`: near-duplicate clusters (MinHash + LSH), their summary, `--show`."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from worker.cli.args import Subparsers, add_command
from worker.cli.context import CommandError
from worker.cli.output import Out, write
from worker.errors import EXIT_USAGE, ReenrichError, UsageError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from worker.cli.context import Context


def register(commands: Subparsers) -> None:
    p = add_command(commands, "dedup", cmd_dedup, "find near-duplicate conversations (MinHash "
                    "+ LSH, exact Jaccard of word 5-grams) and keep their clusters; incremental")
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
    # Digits only: stricter than args.parse_count (which takes " 2" or "+2"), as it always was.
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def cmd_dedup(args: argparse.Namespace, ctx: Context) -> int:
    try:
        return command(args, ctx.engine(), out=write)
    except UsageError as exc:
        sys.stderr.write(f"reenrich: {exc}\n")
        return EXIT_USAGE
    except ReenrichError as exc:
        raise CommandError(str(exc)) from exc


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


class Cluster(NamedTuple):
    """A row of worker.db.dedup.all_clusters (its columns are these fields)."""

    cluster_id: uuid.UUID
    representative: uuid.UUID
    size: int
    cells: int
    threshold: float
    scope: str
    members: list[uuid.UUID]

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Cluster:
        return cls(**{name: row[name] for name in cls._fields})


def show(engine: Engine, *, as_json: bool, out: Out) -> int:
    import orjson
    import structlog

    from worker.db import dedup as db

    shown = 0
    with engine.connect() as conn, conn.begin():
        for cluster in map(Cluster.of, db.all_clusters(conn)):
            members = [str(m) for m in cluster.members]
            if as_json:
                out(orjson.dumps({"cluster_id": str(cluster.cluster_id),
                                  "representative": str(cluster.representative),
                                  "members": members, "size": cluster.size,
                                  "cells": cluster.cells, "threshold": cluster.threshold,
                                  "scope": cluster.scope}).decode())
            else:
                out(f"{cluster.cluster_id}  size {cluster.size}  representative "
                    f"{cluster.representative}  cells {cluster.cells}: {' '.join(members)}")
            shown += 1
        if not shown:
            structlog.get_logger("reenrich.dedup").warning(
                "dedup.no_clusters", message="no clusters stored: run `reenrich dedup` "
                "(none found, or it never ran)")
    return 0


def print_summary(s: dict[str, Any], out: Out) -> None:
    out(f"dedup: {s['conversations']} conversations; signatures computed "
        f"{s['signatures_computed']}, reused {s['signatures_reused']}; "
        f"{s['candidate_pairs_verified']} candidate pairs verified")
    out(f"clusters: {s['clusters']} holding {s['conversations_in_clusters']} conversations; "
        f"duplicates (not representatives) {s['duplicates']}, duplicate rate "
        f"{100 * s['duplicate_rate']:.2f}% (threshold {s['threshold']}, scope {s['scope']})")
    out(f"clusters across persona × arc × topic cells: {s['cross_cell_clusters']}")
    from worker.dataset.dedup_stats import print_details

    print_details(s, out)
    out(f"seconds: {', '.join(f'{k} {v}' for k, v in s['seconds'].items())}")


