"""`reenrich follow` as a user runs it: a subprocess against a real PostgreSQL.

No timing assertions: every wait is "eventually, within a generous deadline".
A long --poll-interval shows that a row was picked up by a notification (or at
start), not by the poll.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from tests.conftest import ROOT, cli_env, run_cli
from tests.generated import insert_generated, wait_until
from tests.helpers import seed
from worker import enrich_conversations

pytestmark = pytest.mark.slow

NO_POLL = "600"  # seconds: far beyond every deadline below


class Follow:
    def __init__(self, db_url: str, log: Path, *args: str) -> None:
        self.log = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "follow", *args], cwd=ROOT,
            env=cli_env(db_url, REENRICH_HEARTBEAT_SECONDS="1"),
            stdout=subprocess.DEVNULL, stderr=self.handle)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def saw(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events())

    def wait_started(self) -> None:
        wait_until(lambda: self.saw("follow.started") or self.proc.poll() is not None,
                   60, "follow to start")
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.handle.close()


@pytest.fixture
def follows(db_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[Follow] = []

    def start(*args: str) -> Follow:
        f = Follow(db_url, tmp_path / f"follow-{len(started)}.log", *args)
        started.append(f)
        return f

    yield start
    for f in started:
        if f.proc.poll() is None:
            f.proc.kill()
            f.proc.wait()
        f.handle.close()


def _enriched(raw: psycopg.Connection[Any], ids: list[Any]) -> bool:
    row = raw.execute("SELECT count(*) FROM conversations WHERE conversation_id = ANY(%s) "
                      "AND enrichment_status = 'enriched'", (ids,)).fetchone()
    return row is not None and row[0] == len(ids)


def _queue_depth(raw: psycopg.Connection[Any]) -> int:
    row = raw.execute("SELECT count(*) FROM enrichment_queue").fetchone()
    assert row is not None
    return int(row[0])


def test_a_conversation_inserted_while_follow_runs_is_enriched(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any], follows: Any) -> None:
    seed(engine, tmp_path, count=0)
    follow = follows("--poll-interval", NO_POLL)
    follow.wait_started()
    with raw.transaction():
        ids = insert_generated(raw, 1)  # plain SQL, as the generator stores it
    wait_until(lambda: _enriched(raw, ids), 30, "the notification to be acted on")
    wait_until(lambda: _queue_depth(raw) == 0, 10, "the queue to empty")
    assert follow.stop() == 0
    batches = [e for e in follow.events() if e["event"] == "follow.batch"]
    assert sum(b["dequeued"] for b in batches) == 1
    assert batches[-1]["mark_to_write_ms_median"] >= 0


def test_a_conversation_inserted_while_no_worker_runs_is_enriched_at_start(
        db_url: str, engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any],
        follows: Any) -> None:
    seed(engine, tmp_path, count=0)
    with raw.transaction():
        ids = insert_generated(raw, 3)
    follow = follows("--poll-interval", NO_POLL)
    wait_until(lambda: _enriched(raw, ids), 60, "follow to drain at start")
    wait_until(lambda: follow.saw("follow.backlog_drained"), 10, "the backlog to be logged")

    # status shows the running worker; status --json stays the array of backfill runs.
    status = run_cli(db_url, "status")
    assert status.returncode == 0, status.stderr
    assert "follow queue: 0 conversation(s) marked" in status.stdout
    assert follow.saw("follow.started")
    assert any(" running " in line for line in status.stdout.splitlines()), status.stdout
    assert json.loads(run_cli(db_url, "status", "--json").stdout) == []
    assert follow.stop() == 0
    workers = json.loads(run_cli(db_url, "workers", "--json").stdout)
    assert workers["queue"]["depth"] == 0
    (worker,) = workers["workers"]
    assert (worker["state"], worker["rows_processed"], worker["rows_enriched"]) == \
        ("stopped", 3, 3)


def test_an_arc_rename_re_enriches_exactly_its_conversations_in_batches(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any], follows: Any) -> None:
    seed(engine, tmp_path, count=120)
    everything = [r[0] for r in raw.execute("SELECT conversation_id FROM conversations")]
    enrich_conversations(engine, everything)
    assert _queue_depth(raw) == 0
    before = dict(raw.execute("SELECT conversation_id, enriched_at FROM conversations"
                              ).fetchall())
    users = {r[0] for r in raw.execute(
        "SELECT c.conversation_id FROM conversations c JOIN emotional_arcs a "
        "ON a.id = c.emotional_arc_id WHERE a.arc_key = 'confusion_to_clarity'")}
    assert len(users) > 10

    follow = follows("--poll-interval", NO_POLL, "--batch-size", "7")
    follow.wait_started()
    raw.execute("UPDATE emotional_arcs SET name = 'Confusion → Understanding' "
                "WHERE arc_key = 'confusion_to_clarity'")

    def renamed() -> set[Any]:
        return {r[0] for r in raw.execute(
            "SELECT conversation_id FROM conversations "
            "WHERE enriched_json->'input_parameters'->>'emotional_arc_name' "
            "    = 'Confusion → Understanding'")}

    wait_until(lambda: renamed() == users, 60, "the arc's conversations to be re-enriched")
    wait_until(lambda: _queue_depth(raw) == 0, 10, "the queue to empty")
    assert follow.stop() == 0
    after = dict(raw.execute("SELECT conversation_id, enriched_at FROM conversations"
                             ).fetchall())
    assert {cid for cid in after if after[cid] != before[cid]} == users
    worker = raw.execute("SELECT batches, rows_processed, rows_enriched "
                         "FROM follow_workers").fetchall()
    # Batched: ceil(n / 7) batches, not one transaction per row.
    assert worker == [(-(-len(users) // 7), len(users), len(users))]


def test_two_follow_processes_enrich_each_marked_row_once(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any], follows: Any) -> None:
    seed(engine, tmp_path, count=0)
    # Every write of an enriched document, by whichever process.
    raw.execute("""
        CREATE TABLE test_writes (conversation_id uuid, pid integer);
        CREATE FUNCTION test_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO test_writes VALUES (NEW.conversation_id, pg_backend_pid());
            RETURN NULL;
        END $$;
        CREATE TRIGGER test_log_write AFTER UPDATE OF enriched_json ON conversations
        FOR EACH ROW EXECUTE FUNCTION test_log_write();""")
    one = follows("--poll-interval", NO_POLL, "--batch-size", "4")
    two = follows("--poll-interval", NO_POLL, "--batch-size", "4")
    one.wait_started()
    two.wait_started()
    with raw.transaction():  # one commit: both workers wake on the same notification
        ids = insert_generated(raw, 240)
    wait_until(lambda: _enriched(raw, ids), 120, "every row to be enriched")
    wait_until(lambda: _queue_depth(raw) == 0, 10, "the queue to empty")
    assert one.stop() == 0 and two.stop() == 0

    writes = raw.execute("SELECT count(*), count(DISTINCT conversation_id) "
                         "FROM test_writes").fetchone()
    assert writes == (240, 240)
    per_worker = [r[0] for r in raw.execute("SELECT rows_processed FROM follow_workers")]
    assert len(per_worker) == 2
    assert sum(per_worker) == 240  # no row claimed by both
    assert min(per_worker) > 0, f"one worker did everything: {per_worker}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_0_and_records_the_stop(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any], follows: Any,
        sig: int) -> None:
    seed(engine, tmp_path, count=0)
    follow = follows("--poll-interval", NO_POLL)
    follow.wait_started()
    assert follow.stop(sig) == 0
    assert raw.execute("SELECT status FROM follow_workers").fetchall() == [("stopped",)]
    assert follow.saw("follow.stopped")


def test_a_lost_connection_is_retried(engine: Engine, tmp_path: Path,
                                      raw: psycopg.Connection[Any], follows: Any) -> None:
    seed(engine, tmp_path, count=0)
    follow = follows("--poll-interval", NO_POLL)
    follow.wait_started()
    raw.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'reenrich-follow' AND datname = current_database()")
    wait_until(lambda: follow.saw("follow.reconnected"), 60, "follow to reconnect")
    assert follow.proc.poll() is None
    reconnecting = [e for e in follow.events() if e["event"] == "follow.reconnecting"]
    assert reconnecting and reconnecting[0]["attempt"] == 1
    with raw.transaction():
        ids = insert_generated(raw, 1)
    wait_until(lambda: _enriched(raw, ids), 30, "enrichment after the reconnect")
    assert follow.stop() == 0


def test_missed_notifications_are_caught_by_the_poll(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any], follows: Any) -> None:
    seed(engine, tmp_path, count=0)
    follow = follows("--poll-interval", "0.5")
    follow.wait_started()
    time.sleep(1.0)  # past the start's drain: only a poll can find what comes next
    with raw.transaction():
        raw.execute("SET LOCAL session_replication_role = replica")  # triggers off: no NOTIFY
        ids = insert_generated(raw, 2)
        raw.execute("INSERT INTO enrichment_queue (conversation_id, reason) "
                    "SELECT unnest(%s::uuid[]), 'test'", (ids,))
    wait_until(lambda: _enriched(raw, ids), 30, "the poll to find the rows")
    wait_until(lambda: follow.saw("follow.poll_found_work"), 10, "the poll to be logged")
    assert follow.stop() == 0


def test_follow_picks_up_a_recorded_review(follows: Any, db_url: str, engine: Engine,
                                           raw: psycopg.Connection[Any], tmp_path: Path
                                           ) -> None:
    seed(engine, tmp_path, count=3)
    enrich_conversations(engine, [r[0] for r in raw.execute(
        "SELECT conversation_id FROM conversations").fetchall()])
    cid, pair = raw.execute("""
        SELECT c.conversation_id, p.pair FROM conversations c,
               jsonb_array_elements(c.enriched_json -> 'training_pairs') p(pair)
        WHERE jsonb_typeof(p.pair -> 'target_response') = 'string'
        ORDER BY 1 LIMIT 1""").fetchall()[0]
    raw.execute("DELETE FROM enrichment_queue")
    follow = follows("--poll-interval", NO_POLL)
    follow.wait_started()
    # A reviewer's tool writes the review with plain SQL: the trigger marks the conversation.
    raw.execute("""INSERT INTO reviews (conversation_id, turn_number, status, reviewer,
                                        content_sha256)
                   VALUES (%s, %s, 'approved', 'Ana',
                           review_content_sha256(%s, %s))""",
                (cid, pair["turn_number"], pair["current_user_input"], pair["target_response"]))

    def reviewed() -> bool:
        row = raw.execute("""
            SELECT p.pair #>> '{training_metadata,review_status}'
            FROM conversations c, jsonb_array_elements(c.enriched_json -> 'training_pairs') p(pair)
            WHERE c.conversation_id = %s AND p.pair -> 'turn_number' = %s::jsonb""",
                          (cid, json.dumps(pair["turn_number"]))).fetchone()
        return row is not None and row[0] == "approved"

    wait_until(reviewed, 60, "follow to re-enrich the reviewed conversation")
    assert follow.stop() == 0
