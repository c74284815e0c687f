"""What the change triggers cost the applications that write conversations (issue 15).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/marks_bench.py [--n 20000] [--repeat 3]

Two scratch databases on the DATABASE_URL server, side by side in one run:
`before` migrated to 0004 (every insert and every scaffolding edit marks one
queue row per conversation, inside the writer's statement) and `after` at the
latest schema (an insert only notifies; an edit records one row, expanded
later by the followers). Printed, each the median of --repeat tries:

- insert: one INSERT ... SELECT of N conversations, with the triggers vs with
  them disabled (ALTER TABLE ... DISABLE TRIGGER USER): the ratio is what the
  triggers add to the generator's statement (goal: within 1.3x);
- rename: an UPDATE of an emotional arc used by N conversations vs one used by
  N/100, in the editor's own transaction, commit included (goal: within 3x).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker import synthetic
from worker.db import migrate
from worker.db.engine import libpq_url, normalize_url


def _db_url(server: str, name: str) -> str:
    return make_url(normalize_url(server)).set(database=name).render_as_string(
        hide_password=False)


def _prepare(server: str, name: str, revision: str, n: int) -> str:
    with psycopg.connect(libpq_url(normalize_url(server)), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _db_url(server, name)
    migrate.upgrade(url, revision)
    rng = random.Random(5)
    docs = [orjson.dumps(synthetic.parsed_document(rng, "David Chen - Optimist", None, turns=4)
                         ).decode() for _ in range(200)]
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_docs (i int PRIMARY KEY, doc jsonb)")
        with conn.cursor().copy("COPY bench_docs (i, doc) FROM STDIN") as copy:
            for i, doc in enumerate(docs):
                copy.write_row((i, doc))
        for arc in ("big", "small"):
            conn.execute("INSERT INTO emotional_arcs (arc_key, name, starting_emotion, "
                         "ending_emotion) VALUES (%s, %s, 'fear', 'confidence')", (arc, arc))
        # The arcs' users: N for "big", N/100 for "small".
        for arc, count in (("big", n), ("small", max(1, n // 100))):
            conn.execute("""
                INSERT INTO conversations (emotional_arc_id, parsed_json, enrichment_status)
                SELECT (SELECT id FROM emotional_arcs WHERE arc_key = %s), d.doc, 'enriched'
                FROM generate_series(1, %s) g JOIN bench_docs d ON d.i = g %% 200""",
                         (arc, count))
        conn.execute("DELETE FROM enrichment_queue")
        conn.execute("VACUUM ANALYZE")
    return url


def _insert_seconds(url: str, n: int, triggers: bool) -> float:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        if not triggers:
            conn.execute("ALTER TABLE conversations DISABLE TRIGGER USER")
        try:
            started = time.perf_counter()
            with conn.transaction():
                conn.execute("""
                    INSERT INTO conversations (conversation_id, parsed_json)
                    SELECT gen_random_uuid(), d.doc
                    FROM generate_series(1, %s) g JOIN bench_docs d ON d.i = g %% 200""", (n,))
            seconds = time.perf_counter() - started
        finally:
            conn.execute("ALTER TABLE conversations ENABLE TRIGGER USER")
            conn.execute("DELETE FROM enrichment_queue")
            conn.execute("DELETE FROM conversations WHERE enrichment_status = 'pending'")
            conn.execute("VACUUM conversations")
    return seconds


def _rename_seconds(url: str, arc: str) -> float:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        started = time.perf_counter()
        with conn.transaction():
            conn.execute("UPDATE emotional_arcs SET name = %s WHERE arc_key = %s",
                         (f"{arc} {uuid.uuid4().hex[:6]}", arc))
        seconds = time.perf_counter() - started
        conn.execute("DELETE FROM enrichment_queue")
        if conn.execute("SELECT to_regclass('scaffolding_edits')").fetchone() != (None,):
            conn.execute("DELETE FROM scaffolding_edits")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    server = os.environ.get("DATABASE_URL")
    if not server:
        sys.stderr.write("set DATABASE_URL to a server this benchmark may create databases on\n")
        return 2
    results: dict[str, dict[str, Any]] = {}
    for label, revision in (("before", "0004"), ("after", "head")):
        url = _prepare(server, f"reenrich_marks_{label}", revision, args.n)
        tries: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.repeat * 2):  # interleaved, so drift hits both alike
            with_triggers = (i % 2 == 0) == (i // 2 % 2 == 0)
            tries[with_triggers].append(_insert_seconds(url, args.n, with_triggers))
        inserts = {t: statistics.median(v) for t, v in tries.items()}
        renames = {a: statistics.median(_rename_seconds(url, a) for _ in range(args.repeat))
                   for a in ("big", "small")}
        results[label] = {"insert_with": inserts[True], "insert_without": inserts[False],
                          "rename_big": renames["big"], "rename_small": renames["small"]}
    n = args.n
    print(f"{'schema':8} {'insert ' + str(n) + ' (s)':>16} {'no triggers (s)':>16} "
          f"{'ratio':>6}   {'rename ' + str(n) + ' users':>18} {str(n // 100) + ' users':>11} "
          f"{'ratio':>6}")
    for label, r in results.items():
        print(f"{label:8} {r['insert_with']:16.3f} {r['insert_without']:16.3f} "
              f"{r['insert_with'] / r['insert_without']:6.2f}   "
              f"{r['rename_big'] * 1000:15.1f} ms {r['rename_small'] * 1000:8.1f} ms "
              f"{r['rename_big'] / r['rename_small']:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
