"""Benchmark `reenrich dedup` beside the backfill of the same table (issue 13).

One command:

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/dedup_bench.py --n 20000

It creates a fresh database (dropped at the end unless --keep), imports N
synthetic conversations (worker/synthetic.py; --copies of them are planted
near-copies of earlier ones, 2% of their words rewritten), then measures in
one run, each as the real CLI in a subprocess (wall time, peak RSS from
os.wait4):

  backfill     `python -m worker backfill`
  dedup        `python -m worker dedup --json` (signatures, LSH, verification, clusters)
  incremental  after 1% of the rows had their text changed, `dedup --json` again
  pooled       the full run again from empty dedup tables, `dedup --workers 2`

and prints conv/s, peak RSS and the ratios against the goals (dedup time /
backfill time <= 1; incremental / full < 0.1). It also times the two MinHash
libraries on the same shingles (datasketch if installed, rensa) and checks
the recall of the planted copies at or above the threshold.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker import synthetic  # noqa: E402
from worker.dataset import dedup  # noqa: E402
from worker.db import migrate  # noqa: E402
from worker.db.engine import libpq_url, make_engine, normalize_url  # noqa: E402
from worker.jobs.importer import import_path  # noqa: E402
from worker.logs import configure as logs_setup  # noqa: E402


def with_db(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


# The CLI with its own peak RSS (VmHWM) printed at exit: ru_maxrss of a child
# forked from this (large) process would count the parent's pages too.
_HWM = ("import atexit, runpy, sys\n"
        "atexit.register(lambda: sys.stderr.write(next(l for l in open('/proc/self/status')"
        " if l.startswith('VmHWM:'))))\n"
        "sys.argv = ['reenrich', *sys.argv[1:]]\n"
        "runpy.run_module('worker', run_name='__main__')\n")


def spawn(url: str, *args: str) -> tuple[float, int, str]:
    """Run the CLI; (wall seconds, peak RSS kB of that process, stdout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENRICH_")}
    env.update(DATABASE_URL=url, REENRICH_LOG_LEVEL="WARNING")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _HWM, *args], cwd=ROOT, env=env,
                                stdout=out, stderr=err, text=True)
        _, status, _usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {err.read()[-2000:]}")
        peak = [line for line in err.read().splitlines() if line.startswith("VmHWM:")]
        return wall, int(peak[-1].split()[1]) if peak else 0, out.read()


def records(n: int, copies: int, seed: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    rng = random.Random(seed)
    base = list(synthetic.conversation_records(n - copies, seed=seed))
    planted, pairs = [], []
    for _ in range(copies):
        source = rng.choice(base)
        twin = copy.deepcopy(source)
        twin["conversation_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        for turn in twin["parsed_json"]["turns"]:
            words = turn["content"].split(" ")
            turn["content"] = " ".join(f"x{rng.randrange(10**9)}" if rng.random() < 0.02 else w
                                       for w in words)
        planted.append(twin)
        pairs.append((source["conversation_id"], twin["conversation_id"]))
    return [*synthetic.scaffolding_records(), *base, *planted], pairs


def library_race(recs: list[dict[str, Any]], count: int = 2000) -> dict[str, float]:
    """conv/s of MinHash alone on the same shingles: datasketch against rensa."""
    import rensa

    convs = [r for r in recs if r.get("type") == "conversation"][:count]
    lists = [dedup.shingle_list(dedup.tokens(dedup.conversation_text(
        dedup.turn_contents(r["parsed_json"]["turns"])))) for r in convs]
    out: dict[str, float] = {}
    start = time.perf_counter()
    rensa.RMinHash.digest_matrix_from_token_sets(lists, dedup.NUM_PERM, dedup.SEED).to_rows()
    out["rensa"] = len(lists) / (time.perf_counter() - start)
    try:
        import datasketch
    except ImportError:
        return out
    start = time.perf_counter()
    for shingles in lists:
        m = datasketch.MinHash(num_perm=dedup.NUM_PERM, seed=1)
        m.update_batch([s.encode() for s in shingles])
    out["datasketch"] = len(lists) / (time.perf_counter() - start)
    return out


def recall(url: str, pairs: list[tuple[str, str]], recs: list[dict[str, Any]]) -> dict[str, Any]:
    turns = {r["conversation_id"]: r["parsed_json"]["turns"] for r in recs
             if r.get("type") == "conversation"}
    with psycopg.connect(libpq_url(url)) as conn:
        cluster = {str(a): b for a, b in conn.execute(
            "SELECT conversation_id, cluster_id FROM dedup_members")}
    above = found = 0
    for a, b in pairs:
        sa = dedup.shingles(dedup.conversation_text(dedup.turn_contents(turns[a])))
        sb = dedup.shingles(dedup.conversation_text(dedup.turn_contents(turns[b])))
        if dedup.jaccard(sa, sb) >= dedup.DEFAULT_THRESHOLD:
            above += 1
            found += a in cluster and cluster.get(a) == cluster.get(b)
    return {"planted_pairs_at_or_above_threshold": above, "in_one_cluster": found,
            "recall": round(found / above, 4) if above else None}


def change_text(url: str, share: float, seed: int) -> int:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT conversation_id FROM conversations "
                                          "ORDER BY md5(conversation_id::text || %s)",
                                          (str(seed),))]
        chosen = ids[:max(1, int(len(ids) * share))]
        conn.execute("""UPDATE conversations SET parsed_json = jsonb_set(parsed_json,
                        '{turns,0,content}',
                        to_jsonb((parsed_json #>> '{turns,0,content}') || ' edited again'))
                        WHERE conversation_id = ANY(%s)""", (chosen,))
        return len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--copies", type=int, default=None, help="planted copies (default N/10)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    given = os.environ.get("DATABASE_URL")
    if not given:
        raise SystemExit("set DATABASE_URL to a server (e.g. postgresql://postgres@127.0.0.1:5432/"
                         "postgres): a fresh database is created there and dropped")
    logs_setup("WARNING", "console")
    server = normalize_url(given)
    name = f"reenrich_dedup_bench_{os.getpid()}"
    with psycopg.connect(libpq_url(server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_db(server, name)
    try:
        run(url, args)
    finally:
        if not args.keep:
            with psycopg.connect(libpq_url(server), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str, args: argparse.Namespace) -> None:
    migrate.upgrade(url)
    copies = args.n // 10 if args.copies is None else args.copies
    recs, pairs = records(args.n, copies, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs),
                        encoding="utf-8")
        engine = make_engine(url)
        import_path(engine, path)
        engine.dispose()
    race = library_race(recs)
    print(f"N={args.n} ({copies} planted near-copies); MinHash alone on 2,000 conversations: "
          + ", ".join(f"{k} {v:,.0f} conv/s" for k, v in race.items())
          + (f" (rensa/datasketch {race['rensa'] / race['datasketch']:.0f}x)"
             if "datasketch" in race else ""), file=sys.stderr)
    rows: list[tuple[str, int, float, int, str]] = []
    wall, rss, _ = spawn(url, "backfill", "--run", "bench")
    rows.append(("backfill", args.n, wall, rss, ""))
    wall, rss, out = spawn(url, "dedup", "--json")
    full = json.loads(out)
    rows.append(("dedup (full)", args.n, wall, rss,
                 f"work {full['seconds']['total']} s; {full['clusters']} clusters"))
    changed = change_text(url, 0.01, args.seed)
    wall, rss, out = spawn(url, "dedup", "--json")
    inc = json.loads(out)
    rows.append(("dedup (1% changed)", args.n, wall, rss,
                 f"work {inc['seconds']['total']} s; computed {inc['signatures_computed']}, "
                 f"reused {inc['signatures_reused']}"))
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("TRUNCATE dedup_signatures, dedup_buckets, dedup_pairs, "
                     "dedup_members, dedup_clusters CASCADE")
        conn.execute("VACUUM ANALYZE")
    wall, rss, out = spawn(url, "dedup", "--json", "--workers", "2")
    pooled = json.loads(out)
    rows.append(("dedup --workers 2", args.n, wall, rss,
                 f"work {pooled['seconds']['total']} s (from empty dedup tables)"))
    print(f"{'phase':20} {'rows':>6} {'wall s':>7} {'conv/s':>7} {'peak RSS':>9}  notes")
    for label, n, secs, kb, note in rows:
        print(f"{label:20} {n:>6} {secs:>7.1f} {n / secs:>7.0f} {kb / 1024:>7.0f} MB  {note}")
    backfill_s, full_s, inc_s = rows[0][2], rows[1][2], rows[2][2]
    print(f"dedup / backfill time: {full_s / backfill_s:.2f} (goal <= 1); with --workers 2: "
          f"{rows[3][2] / backfill_s:.2f}")
    print(f"incremental / full dedup time: {inc_s / full_s:.3f} wall, "
          f"{inc['seconds']['total'] / full['seconds']['total']:.3f} work (goal < 0.1); "
          f"{changed} rows changed, {inc['signatures_computed']} signatures recomputed")
    print(f"full run steps: {full['seconds']}; incremental steps: {inc['seconds']}")
    print(f"planted copies: {recall(url, pairs, recs)}")


if __name__ == "__main__":
    main()
