"""Several workers on one run: slices claimed once, dead claims taken over, exact counts."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from tests.conftest import ROOT, cli_env, run_cli
from tests.helpers import seed
from tests.integration.test_backfill import _blocked_backends, _wait_for
from worker.db import checkpoints
from worker.db.checkpoints import LeaseLost
from worker.db.repository import Filters
from worker.enrichment.rows import PageCounts
from worker.jobs.backfill import slice_bounds


def test_slice_bounds_cover_the_key_space_without_overlap() -> None:
    bounds = slice_bounds(8)
    assert bounds[0][0] is None and bounds[-1][1] is None
    for (_, upper), (lower, _) in itertools.pairwise(bounds):
        assert upper == lower  # one slice's inclusive upper is the next's exclusive lower
    assert slice_bounds(1) == [(None, None)]


def test_two_workers_split_a_run_with_exact_counts(engine: Engine, db_url: str, tmp_path: Path,
                                                   raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=120)
    # Pauses between pages give the second process time to start and claim its share.
    result = run_cli(db_url, "backfill", "--run", "pair", "--workers", "2", "--batch-size", "6",
                     "--sleep", "0.2")
    assert result.returncode == 0, result.stderr
    logs = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    claims = [entry for entry in logs if entry["event"] == "backfill.slice_claimed"]
    assert len(claims) == 8  # every slice claimed exactly once
    assert len({entry["slice"] for entry in claims}) == 8
    assert len({entry["worker"] for entry in claims}) == 2  # both processes worked
    assert raw.execute("SELECT status, processed, updated, unchanged, failed, total "
                       "FROM backfill_runs").fetchone() == ("succeeded", 120, 120, 0, 0, 120)
    assert raw.execute("SELECT sum(processed), count(*) FILTER (WHERE status = 'done') "
                       "FROM backfill_slices").fetchone() == (120, 8)
    assert raw.execute("SELECT count(*) FROM conversations WHERE enrichment_status = 'enriched'"
                       ).fetchone() == (120,)


def test_killed_workers_claim_is_taken_over(engine: Engine, db_url: str, tmp_path: Path,
                                           raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=80)
    engine.dispose()
    first_id = raw.execute("SELECT min(conversation_id::text) FROM conversations").fetchall()[0][0]
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as lock:
        # Freeze whoever takes slice 0 in the middle of its first page, then kill the run.
        lock.execute("SELECT 1 FROM conversations WHERE conversation_id = %s FOR UPDATE",
                     (first_id,))
        proc = subprocess.Popen([sys.executable, "-m", "worker", "backfill", "--run", "takeover",
                                 "--workers", "2", "--batch-size", "5"], cwd=ROOT,
                                env=cli_env(db_url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        _wait_for(lambda: _blocked_backends(raw) == 1)
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its child worker
        proc.wait()
        lock.rollback()
    _wait_for(lambda: raw.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                  "current_database() AND application_name = 'reenrich'"
                                  ).fetchall()[0][0] == 0)
    before = raw.execute("SELECT count(*) FROM backfill_slices WHERE status <> 'done'"
                         ).fetchall()[0][0]
    assert before >= 1
    resumed = run_cli(db_url, "backfill", "--run", "takeover")
    assert resumed.returncode == 0, resumed.stderr
    assert raw.execute("SELECT status, processed, updated FROM backfill_runs").fetchone() == \
        ("succeeded", 80, 80)


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_commit(engine: Engine) -> None:
    with engine.connect() as first, engine.connect() as second:
        with first.begin():
            checkpoints.create_run(first, name="lease", filters=Filters(), version=1, workers=1,
                                   total=0, bounds=slice_bounds(1))
            mine = checkpoints.claim_slice(first, run="lease", owner="a", lease_seconds=60)
        assert mine is not None
        with second.begin():  # owner alive, lease valid: nothing to claim
            assert checkpoints.claim_slice(second, run="lease", owner="b",
                                           lease_seconds=60) is None
            assert checkpoints.live_owners(second, "lease") == ["a"]
        with first.begin():  # the owner hangs: its lease runs out
            first.exec_driver_sql("UPDATE backfill_slices SET lease_expires_at = "
                                  "now() - interval '1 second'")
        with second.begin():
            taken = checkpoints.claim_slice(second, run="lease", owner="b", lease_seconds=60)
        assert taken is not None and taken.slice_no == 0
        with pytest.raises(LeaseLost), first.begin():
            checkpoints.advance(first, run="lease", slice_no=0, owner="a", cursor=None,
                                counts=PageCounts(processed=1), done=False, lease_seconds=60)
        run = checkpoints.get_run(second, "lease")
        assert run is not None and run.processed == 0  # the stale page left no trace


def test_throttled_backfill_still_completes(engine: Engine, tmp_path: Path,
                                            config: Any) -> None:
    from worker.enrichment.processing import Processor
    from worker.jobs.backfill import BackfillOptions, run_backfill

    seed(engine, tmp_path, count=12)
    result = run_backfill(engine, Processor(config),
                          BackfillOptions(batch_size=4, max_rows_per_second=200,
                                          sleep_seconds=0.01), threading.Event())
    assert (result.status, result.processed) == ("succeeded", 12)
