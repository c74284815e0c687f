"""Scaffolding edits expanded by the followers (issue 15): exact, restartable, shared."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine

from tests.generated import wait_until
from tests.helpers import seed
from worker.config import EnrichmentConfig
from worker.enrichment.processing import PageOutcome, Processor
from worker.enrichment.rows import StoredRow
from worker.jobs.backfill import BackfillOptions, run_backfill
from worker.jobs.follow import Follower, FollowOptions

ARC = "confusion_to_clarity"


def _count_writes(raw: psycopg.Connection[Any]) -> None:
    raw.execute("CREATE TABLE writes (conversation_id uuid)")
    raw.execute("""
        CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO writes VALUES (NEW.conversation_id); RETURN NULL; END $$""")
    raw.execute("CREATE TRIGGER count_write AFTER UPDATE OF enriched_json ON conversations "
                "FOR EACH ROW EXECUTE FUNCTION count_write()")


def _writes(raw: psycopg.Connection[Any]) -> Counter[Any]:
    return Counter(r[0] for r in raw.execute("SELECT conversation_id FROM writes"))


def _users(raw: psycopg.Connection[Any]) -> set[Any]:
    return {r[0] for r in raw.execute(
        "SELECT c.conversation_id FROM conversations c JOIN emotional_arcs a "
        "ON a.id = c.emotional_arc_id WHERE a.arc_key = %s", (ARC,))}


def _named(raw: psycopg.Connection[Any], name: str) -> set[Any]:
    return {r[0] for r in raw.execute(
        "SELECT conversation_id FROM conversations "
        "WHERE enriched_json->'input_parameters'->>'emotional_arc_name' = %s", (name,))}


def _idle(raw: psycopg.Connection[Any]) -> bool:
    row = raw.execute("SELECT (SELECT count(*) FROM scaffolding_edits) + "
                      "(SELECT count(*) FROM enrichment_queue)").fetchone()
    return row == (0,)


def _enriched_table(engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any],
                    config: EnrichmentConfig, count: int = 150) -> None:
    seed(engine, tmp_path, count=count)
    run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())
    raw.execute("DELETE FROM enrichment_queue")
    _count_writes(raw)


def _follow(engine: Engine, db_url: str, processor: Processor, stop: threading.Event,
            batch_size: int = 7) -> threading.Thread:
    follower = Follower(engine, db_url, processor,
                        FollowOptions(poll_interval=0.2, batch_size=batch_size), stop)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    return thread


def test_an_arc_rename_rewrites_each_of_its_conversations_exactly_once(
        engine: Engine, db_url: str, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    _enriched_table(engine, tmp_path, raw, config)
    users = _users(raw)
    assert len(users) > 14
    raw.execute("UPDATE emotional_arcs SET name = 'Confusion → Understanding' WHERE arc_key = %s",
                (ARC,))
    stop = threading.Event()
    thread = _follow(engine, db_url, Processor(config), stop)
    wait_until(lambda: _idle(raw) and _named(raw, "Confusion → Understanding") == users,
               what="the expansion")
    stop.set()
    thread.join(timeout=30)
    assert _writes(raw) == Counter(dict.fromkeys(users, 1))  # each once, nothing else


def test_an_edit_during_the_expansion_restarts_it_and_nothing_is_left_stale(
        engine: Engine, db_url: str, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    _enriched_table(engine, tmp_path, raw, config)
    users = _users(raw)
    raw.execute("UPDATE emotional_arcs SET name = 'First' WHERE arc_key = %s", (ARC,))
    pages = 0

    class EditsOnTheSecondPage(Processor):
        def process(self, rows: list[StoredRow]) -> PageOutcome:
            nonlocal pages
            pages += 1
            if pages == 2:
                raw.execute("UPDATE emotional_arcs SET name = 'Second' WHERE arc_key = %s",
                            (ARC,))
            return super().process(rows)

    stop = threading.Event()
    thread = _follow(engine, db_url, EditsOnTheSecondPage(config), stop, batch_size=5)
    wait_until(lambda: _idle(raw) and _named(raw, "Second") == users, what="the restart")
    stop.set()
    thread.join(timeout=30)
    assert set(_writes(raw)) == users  # nothing but the arc's conversations


def test_two_followers_share_an_expansion_without_double_work(
        engine: Engine, db_url: str, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    _enriched_table(engine, tmp_path, raw, config, count=200)
    users = _users(raw)
    raw.execute("UPDATE emotional_arcs SET name = 'Shared' WHERE arc_key = %s", (ARC,))
    raw.execute("UPDATE personas SET name = name || ' II' WHERE persona_key = "
                "(SELECT min(persona_key) FROM personas)")
    persona_users = {r[0] for r in raw.execute(
        "SELECT conversation_id FROM conversations WHERE persona_id = "
        "(SELECT id FROM personas WHERE persona_key = (SELECT min(persona_key) FROM personas))")}
    stop = threading.Event()
    threads = [_follow(engine, db_url, Processor(config), stop, batch_size=4) for _ in range(2)]
    wait_until(lambda: _idle(raw) and _named(raw, "Shared") == users, what="both expansions")
    stop.set()
    for t in threads:
        t.join(timeout=30)
    writes = _writes(raw)
    assert set(writes) == users | persona_users
    assert max(writes.values()) == 1, "a row was enriched twice"
