"""A follower draining a burst against the backfill of the same rows, in one run (issue 15).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/follow_drain_bench.py [--n 5000] [--repeat 2]

A scratch database gets N synthetic conversations through `reenrich import`
(pending: what a burst of new generations looks like to a follower). Then,
alternately, --repeat times each: the rows are reset to pending and
`reenrich follow` is started and timed until none is pending; the rows are
reset again and `reenrich backfill` is timed. Both write identical documents.
Prints the medians and the ratio follow / backfill (goal: within 1.1).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker import synthetic
from worker.db import migrate
from worker.db.engine import (
    libpq_url,
    make_engine,
    normalize_url,
)
from worker.jobs.importer import import_path

RESET = """UPDATE conversations SET enriched_json = NULL, enriched_hash = NULL,
           enrichment_input_hash = NULL, enrichment_status = 'pending'"""


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENRICH_")}
    env.update({"DATABASE_URL": url, "REENRICH_LOG_FORMAT": "json",
                "REENRICH_LOG_LEVEL": "WARNING"})
    return env


def _reset(url: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(RESET)
        conn.execute("DELETE FROM enrichment_queue")
        conn.execute("DELETE FROM backfill_runs")
        conn.execute("VACUUM ANALYZE conversations")


def _pending(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute("SELECT count(*) FROM conversations "
                           "WHERE enrichment_status = 'pending'").fetchone()
        return int(row[0]) if row else 0


def _follow_seconds(url: str) -> float:
    _reset(url)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "worker", "follow", "--poll-interval", "60"],
                            env=_env(url), stderr=subprocess.DEVNULL)
    while _pending(url):
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return seconds


def _backfill_seconds(url: str) -> float:
    _reset(url)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "worker", "backfill"], env=_env(url), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    server = os.environ.get("DATABASE_URL")
    if not server:
        sys.stderr.write("set DATABASE_URL to a server this benchmark may create databases on\n")
        return 2
    name = "reenrich_follow_drain"
    with psycopg.connect(libpq_url(normalize_url(server)), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(normalize_url(server)).set(database=name).render_as_string(
        hide_password=False)
    migrate.upgrade(url)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "burst.jsonl"
        import orjson
        with path.open("wb") as handle:
            for record in (*synthetic.scaffolding_records(),
                           *synthetic.conversation_records(args.n, seed=3)):
                handle.write(orjson.dumps(record) + b"\n")
        engine = make_engine(url)
        import_path(engine, path)
        engine.dispose()
    follow, backfill = [], []
    for _ in range(args.repeat):
        follow.append(_follow_seconds(url))
        backfill.append(_backfill_seconds(url))
    f, b = statistics.median(follow), statistics.median(backfill)
    print(f"rows {args.n}: follow drain {f:.2f} s ({args.n / f:.0f}/s), "
          f"backfill {b:.2f} s ({args.n / b:.0f}/s), follow/backfill {f / b:.2f} "
          f"(tries: follow {[round(x, 2) for x in follow]}, "
          f"backfill {[round(x, 2) for x in backfill]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
