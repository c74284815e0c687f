"""Latency of `reenrich follow`: from the commit that stores a conversation to the
commit of its enriched document.

    .venv/bin/python bench/follow_latency.py [--n-single 50] [--burst 1000]
        [--burst-commits each|one] [--batch-size 200] [--json]

Starts its own `reenrich follow` (a subprocess, polling only every 60 s, so
every row is picked up through LISTEN/NOTIFY) against a scratch database:
a new database on the DATABASE_URL server if that is set (created, then
dropped unless --keep), else an embedded PostgreSQL in a temporary
directory. Conversations are stored as the generator stores them: plain SQL
INSERTs (conversation + generation log, one transaction per conversation).

What is measured, per conversation: from the moment the inserting client's
COMMIT returns, to the moment a listening client receives a notification
sent by a benchmark-only trigger on the enriched_json write (notifications
are delivered when the writing transaction commits). Both instants are
taken by this process on one monotonic clock.

- single: one conversation at a time, the worker idle in between;
- burst: --burst conversations back to back, each its own commit
  (--burst-commits each, the generator storing them one by one) or all in
  one transaction (--burst-commits one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
from sqlalchemy.engine import make_url

from worker import logs, synthetic
from worker.db import migrate
from worker.db.engine import embedded_url, libpq_url, make_engine, normalize_url
from worker.jobs.importer import import_path

ROOT = Path(__file__).resolve().parent.parent

CHANNEL = "bench_enriched"
BENCH_TRIGGER = f"""
CREATE FUNCTION bench_notify_enriched() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.conversation_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_enriched AFTER UPDATE OF enriched_json ON conversations
FOR EACH ROW WHEN (NEW.enrichment_status = 'enriched')
EXECUTE FUNCTION bench_notify_enriched();
"""


class Listener(threading.Thread):
    """Receives the enriched-write notifications; records when each arrived."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(libpq_url(url), autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for note in self.conn.notifies(timeout=0.2):
                now = time.perf_counter()
                with self.lock:
                    self.seen.setdefault(note.payload, now)

    def wait_for(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(i in self.seen for i in ids):
                    return
            time.sleep(0.001)
        missing = [i for i in ids if i not in self.seen]
        raise SystemExit(f"{len(missing)} row(s) not enriched within {timeout}s")


class Inserter:
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(libpq_url(url))
        self.rng = random.Random(3)
        row = self.conn.execute("""
            SELECT (SELECT id FROM personas ORDER BY persona_key LIMIT 1),
                   (SELECT id FROM emotional_arcs ORDER BY arc_key LIMIT 1),
                   (SELECT id FROM training_topics ORDER BY topic_key LIMIT 1),
                   (SELECT id FROM prompt_templates ORDER BY template_name LIMIT 1)""").fetchone()
        self.conn.commit()
        assert row is not None
        self.refs = row

    def insert(self) -> str:
        cid = uuid.uuid4()
        parsed = synthetic.parsed_document(self.rng, "David Chen - The Pragmatic Optimist", None)
        self.conn.execute("""
            INSERT INTO conversations (conversation_id, persona_id, emotional_arc_id,
                                       training_topic_id, template_id, quality_score,
                                       parsed_json)
            VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)""",
                          (cid, *self.refs, 4.2, orjson.dumps(parsed).decode()))
        self.conn.execute("INSERT INTO generation_logs (conversation_id, system_prompt) "
                          "VALUES (%s, %s)", (cid, "You are Elena Morales, CFP."))
        return str(cid)

    def commit(self) -> float:
        self.conn.commit()
        return time.perf_counter()


def summary(latencies: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in latencies)
    p95 = statistics.quantiles(ms, n=20, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1),
            "p95_ms": round(p95, 1), "max_ms": round(ms[-1], 1)}


def prepare(url: str) -> None:
    migrate.upgrade(url)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scaffolding.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in synthetic.scaffolding_records()))
        engine = make_engine(url)
        try:
            summary_ = import_path(engine, path)
        finally:
            engine.dispose()
    assert summary_.failed == 0, summary_.errors
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(BENCH_TRIGGER)


def start_follow(url: str, log: Path, batch_size: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENRICH_")}
    env.update({"DATABASE_URL": url, "REENRICH_LOG_FORMAT": "json"})
    proc = subprocess.Popen([sys.executable, "-m", "worker", "follow", "--poll-interval", "60",
                             "--batch-size", str(batch_size)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if '"follow.started"' in log.read_text():
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"follow exited: {log.read_text()}")
        time.sleep(0.05)
    raise SystemExit("follow did not start within 60 s")


def worker_view(log: Path) -> dict[str, Any]:
    """The worker's own measure: mark -> write, from its follow.batch lines."""
    batches = [e for e in (json.loads(line) for line in log.read_text().splitlines()
                           if line.startswith("{")) if e.get("event") == "follow.batch"]
    return {"batches": len(batches),
            "rows_per_batch_max": max((b["rows"] for b in batches), default=0)}


def run(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    prepare(url)
    log = workdir / "follow.log"
    follow = start_follow(url, log, args.batch_size)
    listener = Listener(url)
    listener.start()
    inserter = Inserter(url)
    results: dict[str, Any] = {}
    try:
        # Warm-up: the first batch pays for imports and prepared statements.
        cid = inserter.insert()
        inserter.commit()
        listener.wait_for([cid], 60)

        single = []
        for _ in range(args.n_single):
            cid = inserter.insert()
            committed = inserter.commit()
            listener.wait_for([cid], 60)
            single.append(listener.seen[cid] - committed)
            time.sleep(random.uniform(0.05, 0.15))
        results["single"] = summary(single) if single else None

        committed_at: dict[str, float] = {}
        ids: list[str] = []
        started = time.perf_counter()
        for _ in range(args.burst):
            ids.append(inserter.insert())
            if args.burst_commits == "each":
                committed_at[ids[-1]] = inserter.commit()
        if args.burst_commits == "one":
            done = inserter.commit()
            committed_at = dict.fromkeys(ids, done)
        inserted = time.perf_counter()
        listener.wait_for(ids, 600)
        last = max(listener.seen[i] for i in ids)
        results["burst"] = {
            **summary([listener.seen[i] - committed_at[i] for i in ids]),
            "commits": args.burst_commits,
            "insert_seconds": round(inserted - started, 2),
            "first_commit_to_last_enriched_seconds": round(last - started, 2),
            "rows_per_second": round(len(ids) / (last - started), 1),
        }
    finally:
        listener.halt.set()
        follow.send_signal(signal.SIGTERM)
        results["follow_exit_code"] = follow.wait(timeout=60)
        listener.join(timeout=5)
        listener.conn.close()
        inserter.conn.close()
    results["worker"] = worker_view(log)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-single", type=int, default=50)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--burst-commits", choices=["each", "one"], default="each")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch database (DATABASE_URL server)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logs.configure("WARNING", "console")  # stderr; stdout carries the results

    with tempfile.TemporaryDirectory(prefix="follow-bench-") as tmp:
        workdir = Path(tmp)
        given = os.environ.get("DATABASE_URL")
        server = normalize_url(given) if given else None
        name: str | None = None
        if server:
            name = f"bench_follow_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(libpq_url(server), autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            url = make_url(server).set(database=name).render_as_string(hide_password=False)
            where = f"DATABASE_URL server, scratch database {name}"
        else:
            url = embedded_url(workdir / "embedded")
            where = f"embedded PostgreSQL in {workdir}"
        try:
            results = run(url, args, workdir)
        finally:
            if server and name and not args.keep:
                with psycopg.connect(libpq_url(server), autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    results["database"] = where
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"database: {where}; follow batch size {args.batch_size}")
    s, b = results["single"], results["burst"]
    if s:
        print(f"single inserts ({s['n']}): median {s['median_ms']} ms, p95 {s['p95_ms']} ms, "
              f"max {s['max_ms']} ms")
    commits = "a commit per row" if b["commits"] == "each" else "one transaction"
    print(f"burst of {b['n']} ({commits}): "
          f"median {b['median_ms']} ms, p95 {b['p95_ms']} ms, max {b['max_ms']} ms; "
          f"inserted in {b['insert_seconds']} s, all enriched "
          f"{b['first_commit_to_last_enriched_seconds']} s after the first commit "
          f"({b['rows_per_second']} rows/s)")
    print(f"worker: {results['worker']['batches']} batches, largest "
          f"{results['worker']['rows_per_batch_max']} rows; "
          f"follow exit code {results['follow_exit_code']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
