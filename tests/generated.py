"""Conversations stored the way the generation pipeline stores them: plain SQL INSERTs."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import psycopg

from worker import synthetic


def scaffolding_ids(raw: psycopg.Connection[Any], arc_key: str | None = None
                    ) -> dict[str, uuid.UUID]:
    """Some persona, arc (the given one, else any), topic and template ids."""
    row = raw.execute("""
        SELECT (SELECT id FROM personas ORDER BY persona_key LIMIT 1),
               (SELECT id FROM emotional_arcs WHERE arc_key = coalesce(%s, arc_key)
                ORDER BY arc_key LIMIT 1),
               (SELECT id FROM training_topics ORDER BY topic_key LIMIT 1),
               (SELECT id FROM prompt_templates ORDER BY template_name LIMIT 1)""",
                      (arc_key,)).fetchone()
    assert row is not None and row[0] is not None, "import the scaffolding first"
    return dict(zip(("persona", "arc", "topic", "template"), row, strict=True))


def insert_generated(conn: psycopg.Connection[Any], count: int, *, seed: int = 5,
                     arc_key: str | None = None) -> list[uuid.UUID]:
    """INSERT `count` new-format conversations (one statement each, caller's transaction
    or autocommit), each with a generation log, as the generator does."""
    rng = random.Random(seed)
    refs = scaffolding_ids(conn, arc_key)
    ids = []
    for _ in range(count):
        cid = uuid.uuid4()
        parsed = synthetic.parsed_document(rng, "David Chen - The Pragmatic Optimist", None,
                                           turns=4)
        conn.execute("""
            INSERT INTO conversations (conversation_id, persona_id, emotional_arc_id,
                                       training_topic_id, template_id, quality_score,
                                       parsed_json)
            VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)""",
                     (cid, refs["persona"], refs["arc"], refs["topic"], refs["template"],
                      4.0, orjson.dumps(parsed).decode()))
        conn.execute("INSERT INTO generation_logs (conversation_id, system_prompt) "
                     "VALUES (%s, %s)", (cid, "You are Elena Morales, CFP."))
        ids.append(cid)
    return ids


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
               ) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
