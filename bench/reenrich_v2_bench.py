"""How long contract version 2 takes to reach stored data: a backfill from version 1 rows.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/reenrich_v2_bench.py --n 20000

For each data set (the demo's sample bundle, and N synthetic conversations
from `worker.synthetic`), in a fresh database of its own on that server:

  v1   the version-1 worker (the code at `--v1-rev`, unpacked with `git
       archive` into a temporary directory) migrates, imports and backfills:
       every row enriched at version 1, as a deployment has it today;
  up   this tree migrates (0006: reviews) and runs `reenrich backfill`: every
       version-1 row is re-enriched to version 2 (timed);
  noop a second backfill: nothing changed (timed, for comparison; `v1noop`
       is the version-1 worker's no-op before the upgrade: the page query
       without the reviews it now reads);

and prints rows, the backfills' own durations (backfill_runs, start to
finish) and wall times (subprocess, start-up included), rows/s, and the
ratio of the upgrade to the version-1 backfill measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker import synthetic  # noqa: E402
from worker.db import migrate  # noqa: E402
from worker.db.engine import libpq_url, normalize_url  # noqa: E402

V1_REV = "3b2d90d"  # the last commit of contract version 1 (ENRICHMENT_VERSION = 1)


class BenchError(Exception):
    pass


def unpack(rev: str, into: Path) -> Path:
    """The tree at `rev`, from this repository's objects (no checkout is touched)."""
    data = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT,
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(tree: Path, url: str, *args: str) -> float:
    """`python -m worker ARGS` from `tree` (its own `worker` package first); wall seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENRICH_")}
    env.update(DATABASE_URL=url, REENRICH_LOG_LEVEL="WARNING", PYTHONPATH=str(tree))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "worker", *args], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 3):  # 3: some rows failed (the sample has bad rows)
        raise BenchError(f"{' '.join(args)} in {tree} exited {done.returncode}: "
                         f"{done.stderr[-2000:]}")
    return wall


def last_run(url: str) -> dict[str, Any]:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute("""
            SELECT name, status, processed, updated, unchanged, failed, enrichment_version,
                   EXTRACT(EPOCH FROM finished_at - started_at)::float
            FROM backfill_runs ORDER BY started_at DESC LIMIT 1""").fetchone()
        versions = dict(conn.execute(
            "SELECT coalesce(enrichment_version, 0), count(*) FROM conversations "
            "WHERE enriched_json IS NOT NULL GROUP BY 1").fetchall())
    assert row is not None
    keys = ("run", "status", "processed", "updated", "unchanged", "failed", "version",
            "seconds")
    return {**dict(zip(keys, row, strict=True)), "rows_per_version": versions}


def measure(name: str, bundle: Path, server: str, v1: Path) -> dict[str, Any]:
    db = f"reenrich_v2_bench_{name}"
    with psycopg.connect(libpq_url(server), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{db}"')
    url = make_url(server).set(database=db).render_as_string(hide_password=False)
    out: dict[str, Any] = {"data": name}
    # Migrations 0001-0003 are the version-1 schema (the unpacked tree cannot migrate
    # itself: its `worker.migrations` resolves to this tree's, which has 0006).
    migrate.upgrade(url, "0003")
    run(v1, url, "import", str(bundle))
    wall = run(v1, url, "backfill")
    out["v1"] = {**last_run(url), "wall": wall}
    wall = run(v1, url, "backfill")  # the version-1 no-op: the page query without reviews
    out["v1noop"] = {**last_run(url), "wall": wall}
    run(ROOT, url, "migrate")
    wall = run(ROOT, url, "backfill")
    out["up"] = {**last_run(url), "wall": wall}
    wall = run(ROOT, url, "backfill")
    out["noop"] = {**last_run(url), "wall": wall}
    if out["up"]["rows_per_version"].get(1):
        raise BenchError(f"{name}: rows still at version 1 after the upgrade backfill")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="synthetic conversations")
    parser.add_argument("--v1-rev", default=V1_REV, help="git revision of the version-1 worker")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()
    given = os.environ.get("DATABASE_URL")
    if not given:
        raise BenchError("set DATABASE_URL to a server (its maintenance database)")
    server = normalize_url(given)
    results = []
    with tempfile.TemporaryDirectory(prefix="reenrich-v2-bench-") as tmp:
        v1 = unpack(args.v1_rev, Path(tmp) / "v1")
        synthetic_bundle = Path(tmp) / "synthetic.jsonl"
        with synthetic_bundle.open("w", encoding="utf-8") as handle:
            for record in [*synthetic.scaffolding_records(),
                           *synthetic.conversation_records(args.n, seed=7)]:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        demo = ROOT / "worker" / "data" / "sample_bundle.jsonl"
        for name, bundle in (("demo", demo), (f"synthetic{args.n}", synthetic_bundle)):
            results.append(measure(name, bundle, server, v1))
    print(f"{'data':<16}{'phase':<6}{'rows':>7}{'updated':>9}{'seconds':>9}{'wall':>8}"
          f"{'rows/s':>9}  versions after")
    for result in results:
        for phase in ("v1", "v1noop", "up", "noop"):
            p = result[phase]
            rate = p["processed"] / p["seconds"] if p["seconds"] else 0.0
            print(f"{result['data']:<16}{phase:<6}{p['processed']:>7}{p['updated']:>9}"
                  f"{p['seconds']:>9.2f}{p['wall']:>8.2f}{rate:>9.0f}  "
                  f"{p['rows_per_version']}")
        ratio = result["up"]["seconds"] / result["v1"]["seconds"]
        noop = result["noop"]["seconds"] / result["v1noop"]["seconds"]
        print(f"{result['data']:<16}upgrade / version-1 backfill: {ratio:.2f}; "
              f"no-op v2 / no-op v1: {noop:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.stderr.write(f"bench: {exc}\n")
        sys.exit(1)
