"""Parquet export (`export --hub`) against Python merely reading the documents.

One run, one database: N synthetic conversations are imported and enriched
(a real backfill), then each phase runs `--repeat` times, interleaved, and
the best time of each counts:

- read: the export's own stream query (`worker.db.dataset.stream_documents`,
  server-side cursor) and `orjson.loads` of every document, nothing else: what
  any Python export has to do before writing a byte;
- read (no parse): the same without `orjson.loads`;
- hub: `run_export(format=chat, hub=DIR)`: the selection pass, the stream,
  the rows, Parquet (zstd), the card, SHA-256 of the files and the dataset
  version recorded;
- jsonl: the same export to JSON Lines;
- hub / jsonl with `--workers W` for each W of `--workers` (default 1,2,4):
  the same exports in W key-range slices, one process each.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/export_bench.py --n 5000

creates (and drops, unless --keep) the database reenrich_export_bench_<pid>
on that server, prints a table, the ratios to read and the scaling table
(time and speed-up against one worker) on stdout, progress on stderr. Each
export's files are removed after it is timed (the first of each kind is kept
until the end, to compare: every JSON Lines file must be the bytes of the
one-worker file, every Hub folder the same rows).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker import synthetic  # noqa: E402
from worker.config import load_enrichment_config  # noqa: E402
from worker.dataset.export import ExportOptions, run_export  # noqa: E402
from worker.db import dataset, migrate  # noqa: E402
from worker.db.dataset import DatasetFilters  # noqa: E402
from worker.db.engine import libpq_url, make_engine, normalize_url  # noqa: E402
from worker.enrichment.processing import Processor  # noqa: E402
from worker.jobs.backfill import BackfillOptions, run_backfill  # noqa: E402
from worker.jobs.importer import import_path  # noqa: E402
from worker.logs import configure  # noqa: E402

ALL = DatasetFilters(include_rejected_tier=True)  # every phase sees every document


def prepare(url: str, n: int, seed: int, work: Path) -> None:
    data = work / "conversations.jsonl"
    with data.open("wb") as handle:
        for record in [*synthetic.scaffolding_records(),
                       *synthetic.conversation_records(n, seed=seed)]:
            handle.write(orjson.dumps(record) + b"\n")
    engine = make_engine(url)
    try:
        summary = import_path(engine, data)
        if summary.failed:
            raise SystemExit(f"import failed: {summary.errors[:3]}")
        config = load_enrichment_config()
        result = run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())
        print(f"enriched {result.processed} conversations", file=sys.stderr)
    finally:
        engine.dispose()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) conversations")


def phases(url: str, work: Path, workers: list[int]) -> dict[str, Callable[[], int]]:
    engine = make_engine(url)
    profile = load_enrichment_config().consultant_profile
    counter = iter(range(1_000_000))
    kept: set[str] = set()

    def read(parse: bool) -> Callable[[], int]:
        def run() -> int:
            size = 0
            with engine.connect() as conn, conn.begin():
                dataset.begin_snapshot(conn)
                for _, _, text in dataset.stream_documents(conn, ALL, None):
                    size += len(text)
                    if parse:
                        orjson.loads(text)
            return size
        return run

    def export(hub: bool, n: int) -> Callable[[], int]:
        def run() -> int:
            i = next(counter)
            kind = f"{'hub' if hub else 'chat'}-w{n}"
            target = work / f"{kind}-{i}"
            options = ExportOptions(format="chat", filters=ALL, workers=n,
                                    hub=target if hub else None,
                                    output=None if hub else target / "chat.jsonl")
            report = run_export(engine, options, consultant_profile=profile,
                                name=f"bench-{os.getpid()}-{i}")
            if kind in kept:  # keep the first of each kind, to compare at the end
                shutil.rmtree(target)
            kept.add(kind)
            return int(report["rows"])
        return run

    runs = {"read": read(True), "read (no parse)": read(False)}
    for n in workers:
        suffix = "" if n == 1 else f" w{n}"
        runs[f"hub{suffix}"] = export(True, n)
        runs[f"jsonl{suffix}"] = export(False, n)
    return runs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_files(work: Path, workers: list[int]) -> str:
    """Whether every --workers W export wrote what --workers 1 wrote (JSONL: the bytes;
    Hub: the rows of the shards, in order)."""
    import pyarrow.parquet as pq

    def rows(folder: Path) -> list[object]:
        return [row for shard in sorted(folder.glob("data/train-*.parquet"))
                for row in pq.read_table(shard).to_pylist()]

    jsonl = {n: _digest(next(work.glob(f"chat-w{n}-*")) / "chat.jsonl") for n in workers}
    hub_rows = rows(next(work.glob("hub-w1-*")))
    shards = {n: len(list(next(work.glob(f"hub-w{n}-*")).glob("data/*.parquet")))
              for n in workers}
    same_jsonl = all(d == jsonl[1] for d in jsonl.values())
    same_hub = all(rows(next(work.glob(f"hub-w{n}-*"))) == hub_rows for n in workers)
    return (f"JSON Lines identical to --workers 1: {'yes' if same_jsonl else 'NO'}; "
            f"Hub rows identical: {'yes' if same_hub else 'NO'} (shards: "
            + ", ".join(f"w{n} {count}" for n, count in shards.items()) + ")")


def print_results(best: dict[str, float], n: int, repeat: int, workers: list[int],
                  sizes: tuple[int, int], same: str) -> None:
    print(f"n={n} conversations, best of {repeat} (phases interleaved)")
    print(f"{'phase':18} {'seconds':>8} {'conv/s':>8}")
    for label, seconds in best.items():
        print(f"{label:18} {seconds:8.2f} {n / seconds:8.0f}")
    hub_bytes, jsonl_bytes = sizes
    print(f"Parquet {hub_bytes / 1e6:.1f} MB, JSON Lines {jsonl_bytes / 1e6:.1f} MB")
    print(f"hub speed / read speed: {best['read'] / best['hub']:.2f} (target >= 0.75)")
    print(f"hub speed / read (no parse) speed: {best['read (no parse)'] / best['hub']:.2f}")
    print(f"jsonl speed / read speed: {best['read'] / best['jsonl']:.2f}")
    print("scaling (--workers W against --workers 1):")
    print(f"{'workers':>8} {'hub s':>8} {'speed-up':>9} {'jsonl s':>8} {'speed-up':>9}")
    for w in workers:
        suffix = "" if w == 1 else f" w{w}"
        hub, jsonl = best[f"hub{suffix}"], best[f"jsonl{suffix}"]
        print(f"{w:8d} {hub:8.2f} {best['hub'] / hub:9.2f} {jsonl:8.2f} "
              f"{best['jsonl'] / jsonl:9.2f}")
    print(same)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="conversations (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase (best counts)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--workers", default="1,2,4",
                        help="comma list of --workers to time (default 1,2,4; 1 is always in)")
    args = parser.parse_args(argv)
    workers = sorted({1, *(int(w) for w in args.workers.split(","))})
    given = os.environ.get("DATABASE_URL")
    if not given:
        parser.error("set DATABASE_URL to a server (this bench creates its own database)")
    configure("WARNING", "console")
    server = normalize_url(given)
    name = f"reenrich_export_bench_{os.getpid()}"
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(libpq_url(server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        migrate.upgrade(url)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            prepare(url, args.n, args.seed, work)
            runs = phases(url, work, workers)
            best: dict[str, float] = {}
            for round_ in range(args.repeat):
                for label, run in runs.items():
                    started = time.perf_counter()
                    run()
                    seconds = time.perf_counter() - started
                    best[label] = min(best.get(label, seconds), seconds)
                    print(f"round {round_ + 1} {label}: {seconds:.2f} s", file=sys.stderr)
            shards = next(work.glob("hub-w1-*")).glob("data/*.parquet")
            hub_bytes = sum(p.stat().st_size for p in shards)
            jsonl_bytes = (next(work.glob("chat-w1-*")) / "chat.jsonl").stat().st_size
            same = same_files(work, workers)
        print_results(best, args.n, args.repeat, workers, (hub_bytes, jsonl_bytes), same)
        return 0
    finally:
        if not args.keep:
            with psycopg.connect(libpq_url(server), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
