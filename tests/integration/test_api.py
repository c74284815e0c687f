"""`enrich_conversations` (the API the generator calls) and `reenrich enrich`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
from sqlalchemy import Engine

from tests.conftest import run_cli
from tests.generated import insert_generated
from tests.helpers import seed
from worker import EnrichResult, enrich_conversations


def _add_invalid(raw: psycopg.Connection[Any]) -> uuid.UUID:
    cid = uuid.uuid4()
    raw.execute("INSERT INTO conversations (conversation_id, parsed_json) VALUES (%s, %s::jsonb)",
                (cid, orjson.dumps("not a document").decode()))
    return cid


def test_enrich_conversations_reports_each_id(engine: Engine, tmp_path: Path,
                                              raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=0)
    with raw.transaction():
        good = insert_generated(raw, 2)
    bad = _add_invalid(raw)
    missing = uuid.uuid4()

    results = enrich_conversations(engine, [good[0], str(good[1]), bad, missing, good[0]])

    assert [r.conversation_id for r in results] == [good[0], good[1], bad, missing]
    assert [r.outcome for r in results] == ["enriched", "enriched", "failed", "not_found"]
    assert results[2].code == "not_an_object" and results[2].reason
    assert [r.ok for r in results] == [True, True, False, False]
    rows = dict(raw.execute("SELECT conversation_id, enrichment_status FROM conversations"
                            ).fetchall())
    assert rows == {good[0]: "enriched", good[1]: "enriched", bad: "failed"}
    failure = raw.execute("SELECT conversation_id, run_name, error_code "
                          "FROM enrichment_failures WHERE resolved_at IS NULL").fetchall()
    assert failure == [(bad, None, "not_an_object")]
    # Every conversation handled was dequeued: a running follow will not redo them.
    assert raw.execute("SELECT count(*) FROM enrichment_queue").fetchone() == (0,)

    again = enrich_conversations(engine, good)
    assert again == [EnrichResult(good[0], "unchanged"), EnrichResult(good[1], "unchanged")]


def test_enrich_conversations_takes_a_url(db_url: str, engine: Engine, tmp_path: Path,
                                          raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=0)
    with raw.transaction():
        (cid,) = insert_generated(raw, 1)
    assert enrich_conversations(db_url, [cid]) == [EnrichResult(cid, "enriched")]


def test_enrich_command_prints_a_line_per_id_and_fails_on_missing_ids(
        db_url: str, engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=0)
    with raw.transaction():
        (cid,) = insert_generated(raw, 1)
    bad = _add_invalid(raw)
    missing = uuid.uuid4()

    result = run_cli(db_url, "enrich", str(cid), str(missing))
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [f"{cid} enriched", f"{missing} not found"]

    result = run_cli(db_url, "enrich", str(cid), str(bad))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{cid} unchanged"
    assert lines[1].startswith(f"{bad} failed: not_an_object: ")

    result = run_cli(db_url, "enrich", str(cid))
    assert (result.returncode, result.stdout) == (0, f"{cid} unchanged\n"), result.stderr

    result = run_cli(db_url, "enrich", "not-a-uuid")
    assert result.returncode == 2
