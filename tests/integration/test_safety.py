"""Data safety under concurrency and faults (issue 9): each test failed on the old code."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from structlog.testing import capture_logs

from tests.conftest import ROOT, _admin, _with_database, cli_env, run_cli
from tests.faults import Proxy
from tests.generated import insert_generated, wait_until
from tests.helpers import seed
from worker import synthetic
from worker.api import EnrichResult, enrich_conversations
from worker.config import EnrichmentConfig
from worker.db import checkpoints, queue
from worker.db.engine import libpq_url, make_engine
from worker.db.repository import Filters, Limits
from worker.enrichment.enrich import enrich
from worker.enrichment.models import ConversationInputs
from worker.enrichment.processing import PageOutcome, Processor, estimate_document_bytes
from worker.enrichment.rows import StoredRow
from worker.jobs.backfill import (
    BackfillOptions,
    DatabaseGone,
    Ending,
    end_of_work,
    run_backfill,
)
from worker.jobs.follow import Follower, FollowOptions
from worker.jobs.importer import import_path
from worker.jobs.run_state import RunStatus, can_move


def _documents(url: str) -> dict[uuid.UUID, str | None]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("SELECT conversation_id, enriched_json::text FROM conversations")
        return dict(rows.fetchall())


def _fresh_documents(server_url: str, db_url: str, config: EnrichmentConfig
                     ) -> dict[uuid.UUID, str | None]:
    """A copy of the database, every row enriched from scratch."""
    source = db_url.rsplit("/", 1)[1].split("?")[0]
    name = f"reenrich_fresh_{uuid.uuid4().hex[:10]}"
    with _admin(server_url) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    copy_url = _with_database(server_url, name)
    try:
        with psycopg.connect(libpq_url(copy_url), autocommit=True) as conn:
            conn.execute("UPDATE conversations SET enriched_json = NULL, enriched_hash = NULL, "
                         "enrichment_input_hash = NULL, enrichment_status = 'pending'")
        copy = make_engine(copy_url)
        try:
            run_backfill(copy, Processor(config), BackfillOptions(), threading.Event())
        finally:
            copy.dispose()
        return _documents(copy_url)
    finally:
        with _admin(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _queue_depth(raw: psycopg.Connection[Any]) -> int:
    return int(raw.execute("SELECT count(*) FROM enrichment_queue").fetchone()[0])  # type: ignore[index]


def test_a_backfill_beside_a_follower_and_an_editor_leaves_no_stale_document(
        engine: Engine, db_url: str, server_url: str, tmp_path: Path,
        config: EnrichmentConfig) -> None:
    raw = psycopg.connect(libpq_url(db_url), autocommit=True)
    seed(engine, tmp_path, count=600)
    # Nothing enriched yet and the queue empty: the backfill writes every row it reads.
    raw.execute("DELETE FROM enrichment_queue")

    stop_follow, stop_edit = threading.Event(), threading.Event()
    follower = Follower(engine, db_url, Processor(config),
                        FollowOptions(poll_interval=0.2, batch_size=10), stop_follow)
    follow_thread = threading.Thread(target=follower.run, daemon=True)
    follow_thread.start()
    edits = 0

    def edit_ahead_of_the_cursor() -> None:
        nonlocal edits
        rng = random.Random(7)
        with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
            while not stop_edit.is_set():
                row = conn.execute("SELECT cursor FROM backfill_slices ORDER BY updated_at DESC "
                                   "LIMIT 1").fetchone()
                cursor = row[0] if row else None
                ahead = conn.execute(
                    "SELECT conversation_id FROM conversations "
                    "WHERE CAST(%s AS uuid) IS NULL OR conversation_id > %s "
                    "ORDER BY conversation_id LIMIT 30", (cursor, cursor)).fetchall()
                for (cid,) in rng.sample(ahead, min(5, len(ahead))):
                    conn.execute(
                        "UPDATE conversations SET parsed_json = jsonb_set(parsed_json, "
                        "'{turns,0,content}', to_jsonb(%s::text)) WHERE conversation_id = %s",
                        (f"edited {uuid.uuid4().hex}", cid))
                    edits += 1
                time.sleep(0.005)

    editor = threading.Thread(target=edit_ahead_of_the_cursor, daemon=True)
    editor.start()
    try:
        run_backfill(engine, Processor(config), BackfillOptions(batch_size=20, sleep_seconds=0.25),
                     threading.Event())
    finally:
        stop_edit.set()
        editor.join(timeout=30)
    deadline = time.monotonic() + 60
    while _queue_depth(raw) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_follow.set()
    follow_thread.join(timeout=30)
    assert edits > 50
    assert _queue_depth(raw) == 0

    raw.close()
    engine.dispose()
    stored = _documents(db_url)
    fresh = _fresh_documents(server_url, db_url, config)
    stale = [cid for cid in fresh if stored[cid] != fresh[cid]]
    assert stale == [], f"{len(stale)} of {len(fresh)} documents are stale ({edits} edits)"


# ---------------------------------------------------------------- stuck forever


def _fail_writes_of(raw: psycopg.Connection[Any], cid: uuid.UUID, sqlstate: str) -> None:
    """A trigger that refuses any write of this row's document (a test-only fault)."""
    raw.execute(f"""
        CREATE FUNCTION refuse_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.conversation_id = '{cid}' AND NEW.enriched_json IS NOT NULL THEN
                RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{sqlstate}';
            END IF;
            RETURN NEW;
        END $$""")
    raw.execute("CREATE TRIGGER refuse_write BEFORE UPDATE ON conversations "
                "FOR EACH ROW EXECUTE FUNCTION refuse_write()")


def test_a_failed_write_does_not_break_the_engine_or_the_follower(
        engine: Engine, db_url: str, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=0)
    bad, good, later = insert_generated(raw, 3)
    raw.execute("DELETE FROM enrichment_queue")
    _fail_writes_of(raw, bad, "P0001")  # not a row's data: the whole transaction rolls back
    small = make_engine(db_url, pool_size=1, max_overflow=0)  # one connection, reused
    try:
        with pytest.raises(DBAPIError, match="refused by the test"):
            enrich_conversations(small, [bad])
        assert enrich_conversations(small, [good]) == [EnrichResult(good, "enriched")]

        stop = threading.Event()
        follower = Follower(small, db_url, Processor(config),
                            FollowOptions(poll_interval=0.2, lease_seconds=0.5, lanes=1),
                            stop)
        thread = threading.Thread(target=follower.run, daemon=True)
        thread.start()
        raw.execute("SELECT reenrich_mark(ARRAY[%s]::uuid[], 'test')", (bad,))
        wait_until(lambda: follower.totals.batches == 0 and _heartbeat_error(raw) is not None,
                   what="the failed batch")
        raw.execute("DROP TRIGGER refuse_write ON conversations")
        raw.execute("SELECT reenrich_mark(ARRAY[%s]::uuid[], 'test')", (later,))
        wait_until(lambda: _status(raw, later) == "enriched" and _status(raw, bad) == "enriched",
                   what="the next batches on the same connection")
        stop.set()
        thread.join(timeout=30)
    finally:
        small.dispose()


def _heartbeat_error(raw: psycopg.Connection[Any]) -> str | None:
    row = raw.execute("SELECT last_error FROM follow_workers").fetchone()
    return row[0] if row else None


def _status(raw: psycopg.Connection[Any], cid: uuid.UUID) -> str:
    row = raw.execute("SELECT enrichment_status FROM conversations WHERE conversation_id = %s",
                      (cid,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_row_the_database_refuses_fails_alone(
        engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=0)
    ids = insert_generated(raw, 6)
    _fail_writes_of(raw, ids[2], "22023")  # a data exception: that row's value
    result = run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())
    assert (result.processed, result.updated, result.failed) == (6, 5, 1)
    assert result.status == "finished_with_failures" and result.exit_code == 3
    failure = raw.execute("SELECT conversation_id, error_code, message FROM enrichment_failures"
                          ).fetchall()
    assert [(f[0], f[1]) for f in failure] == [(ids[2], "write_failed")]
    assert "refused by the test" in failure[0][2]
    assert [_status(raw, i) for i in ids] == ["enriched"] * 2 + ["failed"] + ["enriched"] * 3


def _long_conversation(turns: int) -> dict[str, Any]:
    parsed = synthetic.parsed_document(random.Random(3), "David Chen - The Pragmatic Optimist",
                                       None, turns=2)
    template = parsed["turns"]
    parsed["turns"] = [dict(template[i % 2], turn_number=i + 1,
                            content=f"turn {i + 1}: a short line of the conversation")
                       for i in range(turns)]
    return parsed


def test_an_oversized_conversation_is_a_recorded_failure_and_the_run_goes_on(
        db_url: str, engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path) -> None:
    seed(engine, tmp_path, count=0)
    ids = insert_generated(raw, 4)
    huge = ids[1]
    raw.execute("UPDATE conversations SET parsed_json = %s::jsonb WHERE conversation_id = %s",
                (orjson.dumps(_long_conversation(2_000)).decode(), huge))
    # The CLI in a wrapper that reports its own peak memory (VmHWM: this process since
    # exec, not the forked test runner it started as).
    wrapper = ("import runpy, sys\n"
               "sys.argv = ['reenrich', 'backfill', '--batch-size', '10']\n"
               "try:\n    runpy.run_module('worker', run_name='__main__')\n"
               "except SystemExit as exit:\n    code = exit.code\n"
               "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
               "sys.stderr.write('PEAK ' + peak.split()[1] + '\\n')\n"
               "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", wrapper], cwd=ROOT, env=cli_env(db_url),
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 3, result.stderr
    peak_kb = int(result.stderr.rsplit("PEAK ", 1)[1].split()[0])
    code, details = raw.execute("SELECT error_code, details FROM enrichment_failures "
                                "WHERE conversation_id = %s", (huge,)).fetchone()  # type: ignore[misc]
    assert code == "document_too_large"
    assert details["turns"] == 2_000 and details["estimated_bytes"] > 64 * 1024 * 1024
    assert [_status(raw, i) for i in ids] == ["enriched", "failed", "enriched", "enriched"]
    # Rejected from its inputs: the process never built the 300 MB document.
    assert peak_kb < 250 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


def test_the_size_estimate_is_close_to_the_real_document(config: EnrichmentConfig) -> None:
    for turns in (2, 12, 60, 200):
        parsed = _long_conversation(turns)
        inputs = ConversationInputs(conversation_id=uuid.uuid4(), created_at=datetime.now(UTC),
                                    parsed=parsed, quality_score=4.0,
                                    has_scaffolding_reference=False, persona=None, arc=None,
                                    topic=None, template=None, system_prompt=None)
        real = len(orjson.dumps(enrich(inputs, config).document))
        _turns, estimate = estimate_document_bytes(parsed, config.default_system_prompt)
        assert real * 0.8 < estimate < real * 2.5, (turns, real, estimate)


# ------------------------------------------------------------- faults end clearly


def test_a_database_restart_mid_backfill_is_ridden_out_and_the_counts_stay_exact(
        db_url: str, engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=60)
    proxy = Proxy(db_url)
    through = make_engine(proxy.proxied_url())
    done = threading.Event()

    def restart_after_two_pages() -> None:
        wait_until(lambda: _processed(raw) >= 10, what="two pages")
        proxy.cut()
        time.sleep(1.0)
        proxy.restore()
        done.set()

    threading.Thread(target=restart_after_two_pages, daemon=True).start()
    try:
        result = run_backfill(through, Processor(config),
                              BackfillOptions(batch_size=5, sleep_seconds=0.1,
                                              reconnect_seconds=30), threading.Event())
    finally:
        through.dispose()
        proxy.close()
    assert done.is_set()
    assert result.exit_code == 0 and result.status == "succeeded"
    run = raw.execute("SELECT processed, updated, total FROM backfill_runs").fetchone()
    assert run == (60, 60, 60)
    assert raw.execute("SELECT count(*) FROM conversations WHERE enrichment_status = 'enriched'"
                       ).fetchone() == (60,)


def _processed(raw: psycopg.Connection[Any]) -> int:
    row = raw.execute("SELECT coalesce(max(processed), 0) FROM backfill_runs").fetchone()
    return int(row[0]) if row else 0


def test_a_database_that_stays_away_ends_the_backfill_with_one_line_and_an_exact_resume(
        db_url: str, engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=40)
    proxy = Proxy(db_url)
    through = make_engine(proxy.proxied_url())

    def cut_after_two_pages() -> None:
        wait_until(lambda: _processed(raw) >= 10, what="two pages")
        proxy.cut()

    threading.Thread(target=cut_after_two_pages, daemon=True).start()
    try:
        with pytest.raises(DatabaseGone) as gone:
            run_backfill(through, Processor(config),
                         BackfillOptions(run_name="away", batch_size=5, sleep_seconds=0.1,
                                         reconnect_seconds=2), threading.Event())
    finally:
        through.dispose()
        proxy.close()
    message = str(gone.value)
    assert "\n" not in message and "reenrich backfill --run away" in message
    resumed = run_backfill(engine, Processor(config), BackfillOptions(run_name="away"),
                           threading.Event())
    assert resumed.exit_code == 0
    assert raw.execute("SELECT processed, updated FROM backfill_runs").fetchone() == (40, 40)


def test_rows_locked_by_another_session_are_retried_then_left_for_later_and_counted(
        db_url: str, engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=0)
    ids = insert_generated(raw, 8)
    with psycopg.connect(libpq_url(db_url)) as holder:
        holder.execute("SELECT 1 FROM conversations WHERE conversation_id = %s FOR UPDATE",
                       (ids[3],))
        with capture_logs() as logs:
            result = run_backfill(
                engine, Processor(config),
                BackfillOptions(limits=Limits(lock_timeout_ms=100)), threading.Event())
        holder.rollback()
    assert (result.processed, result.updated, result.deferred) == (8, 7, 1)
    warnings = [e for e in logs if e["event"] == "write.lock_timeout"]
    assert len(warnings) == 3 and warnings[0]["rows_held"] == [str(ids[3])]
    assert any(e["event"] == "backfill.rows_deferred" for e in logs)
    assert _status(raw, ids[3]) == "pending"
    again = run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())
    assert (again.updated, again.deferred) == (1, 0)


# ---------------------------------------------------------------------- import


def test_a_deeply_nested_record_fails_alone_with_its_line(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any]) -> None:
    good = list(synthetic.conversation_records(2, seed=4, legacy_share=0, bare_share=0))
    nested = dict(good[0], conversation_id=str(uuid.uuid4()))
    deep = "[" * 10_000 + '"bottom"' + "]" * 10_000  # written out: json.dumps cannot
    path = tmp_path / "nested.jsonl"
    lines = [json.dumps(r) for r in (*synthetic.scaffolding_records(), good[0])]
    lines.append(json.dumps(nested).replace('"turns":', f'"extra": {deep}, "turns":', 1))
    lines.append(json.dumps(good[1]))
    path.write_text("\n".join(lines) + "\n")
    summary = import_path(engine, path)
    assert summary.counts["conversation.inserted"] == 2
    assert [e["where"] for e in summary.errors] == [f"line {len(lines) - 1}"]
    assert "nested" in summary.errors[0]["reason"]


@pytest.mark.parametrize(("literal", "why"), [
    ("1e400", "out of range"), ("-1e400", "out of range"), ("NaN", "not a number"),
    ("Infinity", "not a number"), ("1e-400", "underflows"),
])
def test_numbers_json_cannot_hold_are_refused_not_changed(
        engine: Engine, tmp_path: Path, literal: str, why: str) -> None:
    record = next(synthetic.conversation_records(1, seed=4, legacy_share=0, bare_share=0))
    text = json.dumps(record).replace('"turns":', f'"score_hint": {literal}, "turns":', 1)
    path = tmp_path / "numbers.jsonl"
    path.write_text("\n".join([*(json.dumps(r) for r in synthetic.scaffolding_records()),
                               text]) + "\n")
    summary = import_path(engine, path)
    assert summary.counts["conversation.inserted"] == 0
    assert len(summary.errors) == 1 and why in summary.errors[0]["reason"]


def test_nul_removal_that_would_merge_two_keys_is_refused(
        engine: Engine, tmp_path: Path) -> None:
    record = next(synthetic.conversation_records(1, seed=4, legacy_share=0, bare_share=0))
    record["parsed_json"]["note\u0000"] = "first"
    record["parsed_json"]["note"] = "second"
    path = tmp_path / "nul.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*synthetic.scaffolding_records(),
                                                      record]) + "\n")
    summary = import_path(engine, path)
    assert summary.counts["conversation.inserted"] == 0
    assert "same key" in summary.errors[0]["reason"]


# ----------------------------------------------------------- counts and claims


def test_a_follow_claim_never_takes_more_than_the_batch_size(
        engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path) -> None:
    seed(engine, tmp_path, count=0)
    ids = insert_generated(raw, 400)
    sizes: list[int] = []
    stop = threading.Event()

    def claimer(name: str) -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                with conn.begin():
                    sizes.append(len(queue.claim(conn, worker=name, limit=20,
                                                 lease_seconds=0)))

    def remarker() -> None:  # editors re-marking rows while workers claim them
        with psycopg.connect(libpq_url(str(engine.url.render_as_string(False)))) as conn:
            conn.autocommit = True
            rng = random.Random(1)
            while not stop.is_set():
                conn.execute("SELECT reenrich_mark(%s::uuid[], 'test')", (rng.sample(ids, 50),))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(3)]
    threads.append(threading.Thread(target=remarker))
    for t in threads:
        t.start()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert sizes and max(sizes) <= 20, max(sizes)


def test_restart_is_refused_while_another_process_works_on_the_run(
        db_url: str, engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path) -> None:
    seed(engine, tmp_path, count=30)
    proc = subprocess.Popen([sys.executable, "-m", "worker", "backfill", "--run", "busy",
                             "--batch-size", "3", "--sleep", "0.3"], cwd=ROOT,
                            env=cli_env(db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _processed(raw) >= 3, what="the first page")
        restart = run_cli(db_url, "backfill", "--run", "busy", "--restart")
        assert restart.returncode == 4, restart.stderr
        assert "being processed by another process" in restart.stderr
        assert _processed(raw) >= 3  # the counts were not reset under the worker's feet
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_rows_inserted_during_a_run_leave_a_consistent_finished_run(
        engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=20)

    class InsertsMidway(Processor):
        def process(self, rows: list[StoredRow]) -> PageOutcome:
            if rows and not getattr(self, "done", False):
                self.done = True
                insert_generated(raw, 5, seed=99)
            return super().process(rows)

    result = run_backfill(engine, InsertsMidway(config), BackfillOptions(batch_size=5),
                          threading.Event())
    processed, total = raw.execute("SELECT processed, total FROM backfill_runs").fetchone()  # type: ignore[misc]
    assert processed == total == result.processed


# ----------------------------------------------------------- run status machine


ALL = list(RunStatus)


@pytest.mark.parametrize(("source", "target"), [(s, t) for t in ALL for s in ALL])
def test_every_status_change_is_made_exactly_when_the_table_allows_it(
        engine: Engine, raw: psycopg.Connection[Any], source: RunStatus,
        target: RunStatus) -> None:
    with engine.begin() as conn:
        checkpoints.create_run(conn, name="r", filters=Filters(), version=1, workers=1, total=0,
                               bounds=[(None, None)])
    raw.execute("UPDATE backfill_runs SET status = %s", (source.value,))
    allowed = can_move(source, target)
    with engine.begin() as conn:
        assert checkpoints.move_run(conn, "r", target) is allowed
    expected = target if allowed else source  # a forbidden change is refused in its SQL
    assert raw.execute("SELECT status FROM backfill_runs").fetchone() == (expected.value,)


def test_a_cancel_that_lands_while_a_process_shuts_down_stays_cancelled(
        engine: Engine, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=30)

    class CancelsMidway(Processor):
        def process(self, rows: list[StoredRow]) -> PageOutcome:
            raw.execute("UPDATE backfill_runs SET status = 'cancelled'")
            return super().process(rows)

    stop = threading.Event()
    stop_after_one = BackfillOptions(run_name="c", batch_size=5, max_pages=1)
    run_backfill(engine, CancelsMidway(config), stop_after_one, stop)
    assert raw.execute("SELECT status FROM backfill_runs").fetchone() == ("cancelled",)
    again = run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())
    assert again.run_name != "c"  # a plain backfill does not resume a cancelled run


@pytest.mark.parametrize(("left", "others", "claimed", "joining", "cancelled", "expected"), [
    (0, False, True, False, False, Ending(RunStatus.SUCCEEDED, busy=False)),
    (0, True, False, True, False, Ending(RunStatus.SUCCEEDED, busy=False)),
    (2, False, True, False, False, Ending(RunStatus.INTERRUPTED, busy=False)),
    (2, False, True, False, True, Ending(None, busy=False)),
    (2, True, True, False, False, Ending(None, busy=False)),
    (2, True, False, False, False, Ending(None, busy=True)),
    (2, True, False, True, False, Ending(None, busy=False)),
])
def test_the_end_of_run_decision(left: int, others: bool, claimed: bool, joining: bool,
                                 cancelled: bool, expected: Ending) -> None:
    assert end_of_work(slices_left=left, others_working=others, claimed_any=claimed,
                       joining=joining, cancelled=cancelled) == expected
