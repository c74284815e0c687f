"""The queue triggers of migration 0003, and the races of the write step (in-process)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tests.generated import insert_generated, wait_until
from tests.helpers import import_records, seed
from worker import enrich_conversations, synthetic
from worker.config import EnrichmentConfig
from worker.db import queue
from worker.db.engine import libpq_url
from worker.enrichment.processing import PageOutcome, Processor
from worker.enrichment.rows import StoredRow
from worker.jobs.follow import Follower, FollowOptions
from worker.jobs.writes import enrich_batch


def _queued(raw: psycopg.Connection[Any]) -> dict[uuid.UUID, tuple[int, str]]:
    return {r[0]: (r[1], r[2]) for r in raw.execute(
        "SELECT conversation_id, marks, reason FROM enrichment_queue")}


def _all_ids(raw: psycopg.Connection[Any]) -> list[uuid.UUID]:
    return [r[0] for r in raw.execute("SELECT conversation_id FROM conversations")]


def _clear(raw: psycopg.Connection[Any]) -> None:
    raw.execute("DELETE FROM enrichment_queue")


def test_new_conversations_are_pending_not_queued_and_logs_are_marked(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=12)
    statuses = {r[0] for r in raw.execute("SELECT enrichment_status FROM conversations")}
    assert statuses == {"pending"}  # a new row's own status is its mark (migration 0009)
    assert {reason for _, reason in _queued(raw).values()} <= {"generation_log"}
    _clear(raw)
    with raw.transaction():
        raw.execute("INSERT INTO conversations (parsed_json) VALUES ('{}'), ('{}')")
    assert _queued(raw) == {}
    with raw.transaction():
        ids = insert_generated(raw, 3)  # each with a generation log: the log marks
    assert set(_queued(raw)) == set(ids)


def test_only_changes_to_enrichment_inputs_mark(engine: Engine, tmp_path: Path,
                                                raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=6)
    ids = _all_ids(raw)
    enrich_conversations(engine, ids)
    assert _queued(raw) == {}, "the worker's own writes must not mark"
    one = ids[0]
    raw.execute("UPDATE conversations SET updated_at = now(), enrichment_error = 'x' "
                "WHERE conversation_id = %s", (one,))
    raw.execute("UPDATE conversations SET quality_score = quality_score, "
                "parsed_json = parsed_json WHERE conversation_id = %s", (one,))
    raw.execute("UPDATE emotional_arcs SET arc_strategy = 'not an input'")
    assert _queued(raw) == {}
    raw.execute("UPDATE conversations SET quality_score = 1.5 WHERE conversation_id = %s",
                (one,))
    assert _queued(raw) == {one: (1, "conversation")}
    raw.execute("UPDATE conversations SET quality_score = 1.7 WHERE conversation_id = %s",
                (one,))
    assert _queued(raw) == {one: (2, "conversation")}


def test_reimporting_the_same_file_marks_nothing(engine: Engine, tmp_path: Path,
                                                 raw: psycopg.Connection[Any]) -> None:
    records = [*synthetic.scaffolding_records(), *synthetic.conversation_records(8, seed=3)]
    import_records(engine, tmp_path, records)
    _clear(raw)
    import_records(engine, tmp_path, records, name="again.jsonl")
    assert _queued(raw) == {}


def test_a_scaffolding_edit_records_one_row_whatever_its_users(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=40)
    for table, key_column, key, kind in (
            ("personas", "persona_key", "anxious_planner", "persona"),
            ("emotional_arcs", "arc_key", "shame_to_acceptance", "emotional_arc"),
            ("training_topics", "topic_key", "roth_conversion", "training_topic"),
            ("prompt_templates", "template_name", "Template - Crisis Response",
             "prompt_template")):
        _clear(raw)
        raw.execute("DELETE FROM scaffolding_edits")
        edit = ("SET category = coalesce(category, '') || '!'" if table == "prompt_templates"
                else "SET name = name || '!'")
        raw.execute(f"UPDATE {table} {edit} WHERE {key_column} = %s", (key,))
        raw.execute(f"UPDATE {table} {edit} WHERE {key_column} = %s", (key,))
        (sid,) = raw.execute(f"SELECT id FROM {table} WHERE {key_column} = %s",
                             (key,)).fetchone()  # type: ignore[misc]
        assert raw.execute("SELECT kind, scaffold_id, edits, cursor FROM scaffolding_edits"
                           ).fetchall() == [(kind, sid, 2, None)], table
        assert _queued(raw) == {}, table


def test_generation_log_edits_mark_and_cascade_deletes_work(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=2)
    with raw.transaction():
        one, two = insert_generated(raw, 2)
    _clear(raw)
    raw.execute("UPDATE generation_logs SET system_prompt = 'Changed.' "
                "WHERE conversation_id = %s", (one,))
    assert _queued(raw) == {one: (1, "generation_log")}
    _clear(raw)
    raw.execute("DELETE FROM generation_logs WHERE conversation_id = %s", (one,))
    assert _queued(raw) == {one: (1, "generation_log")}
    # Deleting a conversation deletes its logs and queue row; nothing is marked.
    raw.execute("DELETE FROM conversations WHERE conversation_id IN (%s, %s)", (one, two))
    assert _queued(raw) == {}


class _EditsMidway(Processor):
    """Commits an edit of the row's arc while the batch is being enriched."""

    def __init__(self, config: EnrichmentConfig, url: str) -> None:
        super().__init__(config)
        self.url = url

    def process(self, rows: list[StoredRow]) -> PageOutcome:
        outcome = super().process(rows)
        with psycopg.connect(libpq_url(self.url), autocommit=True) as editor:
            editor.execute("UPDATE emotional_arcs SET name = 'Fear → Courage' "
                           "WHERE arc_key = 'fear_to_confidence'")
        return outcome


def test_an_edit_made_while_the_row_is_enriched_is_never_left_stale(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any], db_url: str,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=0)
    with raw.transaction():
        (cid,) = insert_generated(raw, 1, arc_key="fear_to_confidence")

    def arc_name() -> Any:
        row = raw.execute("SELECT enriched_json->'input_parameters'->>'emotional_arc_name' "
                          "FROM conversations WHERE conversation_id = %s", (cid,)).fetchone()
        return row[0] if row else None

    with engine.connect() as conn:
        enrich_batch(conn, _EditsMidway(config, db_url), [cid], skip_locked=True)
    # Built before the arc was renamed: the rename is recorded as one edit ...
    assert arc_name() == "Fear → Confidence"
    assert raw.execute("SELECT kind FROM scaffolding_edits").fetchall() == [("emotional_arc",)]
    # ... which a follower expands into its conversations, read after the edit.
    stop = threading.Event()
    follower = Follower(engine, db_url, Processor(config), FollowOptions(poll_interval=0.2),
                        stop)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    wait_until(lambda: arc_name() == "Fear → Courage", what="the expansion")
    wait_until(lambda: raw.execute("SELECT count(*) FROM scaffolding_edits").fetchone() == (0,),
               what="the edit to be done")
    stop.set()
    thread.join(timeout=30)


def test_the_follow_step_skips_a_row_an_editor_holds(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any], db_url: str,
        config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=0)
    with raw.transaction():
        held, free = sorted(insert_generated(raw, 2))
    with psycopg.connect(libpq_url(db_url)) as editor:
        editor.execute("UPDATE conversations SET quality_score = 2.0 "
                       "WHERE conversation_id = %s", (held,))
        # The editor's transaction is open: the row is locked.
        with engine.connect() as conn:
            conn.exec_driver_sql("SET lock_timeout = '5s'")  # waiting would fail the test
            conn.commit()
            result = enrich_batch(conn, Processor(config), [held, free], skip_locked=True)
        assert result.not_locked == [held]
        assert list(result.dequeued) == [free]
        editor.commit()
    assert set(_queued(raw)) == {held}
    with engine.connect() as conn:
        assert list(enrich_batch(conn, Processor(config), [held],
                                 skip_locked=True).dequeued) == [held]


def test_claims_skip_claimed_rows_until_the_lease_ends(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=5)
    raw.execute("UPDATE conversations SET enrichment_status = 'enriched'")  # not new rows
    raw.execute("SELECT reenrich_mark(ARRAY(SELECT conversation_id FROM conversations), 'x')")
    with engine.begin() as conn:
        first = queue.claim(conn, worker="a", limit=3, lease_seconds=60)
    with engine.begin() as conn:
        second = queue.claim(conn, worker="b", limit=10, lease_seconds=60)
    assert len(first) == 3 and len(second) == 2
    assert not {c.conversation_id for c in first} & {c.conversation_id for c in second}
    with engine.begin() as conn:
        assert queue.claim(conn, worker="c", limit=10, lease_seconds=60) == []
    raw.execute("UPDATE enrichment_queue SET claimed_at = claimed_at - interval '2 minutes' "
                "WHERE claimed_by = 'a'")
    with engine.begin() as conn:  # a's lease ran out (a crashed): c takes its rows over
        taken = queue.claim(conn, worker="c", limit=10, lease_seconds=60)
    assert {c.conversation_id for c in taken} == {c.conversation_id for c in first}


def test_every_lane_logs_with_the_worker_id(engine: Engine, tmp_path: Path,
                                           raw: psycopg.Connection[Any], db_url: str,
                                           config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=0)
    with raw.transaction():
        insert_generated(raw, 80)
    stop = threading.Event()
    # A burst of full batches starts the second lane, a thread of its own.
    follower = Follower(engine, db_url, Processor(config),
                        FollowOptions(poll_interval=0.2, batch_size=5, lanes=2,
                                      heartbeat_seconds=0.05), stop)
    with capture_logs(processors=[merge_contextvars]) as logs:
        thread = threading.Thread(target=follower.run, daemon=True)
        thread.start()
        wait_until(lambda: raw.execute("SELECT count(*) FROM conversations "
                                       "WHERE enrichment_status = 'pending'").fetchone() == (0,),
                   what="the burst to be drained")
        stop.set()
        thread.join(timeout=30)
    batches = [e for e in logs if e["event"] == "follow.batch"]
    assert sum(e["rows"] for e in batches) == 80
    assert {e.get("worker") for e in logs if e["event"].startswith("follow.")} == \
        {follower.worker}
