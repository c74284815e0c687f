"""`reenrich import` against real PostgreSQL: upserts, idempotence, per-record errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine

from tests.conftest import run_cli
from tests.helpers import import_records, write_jsonl
from worker import synthetic
from worker.jobs.importer import import_path

PARSED = {"conversation_metadata": {"client_persona": "A - B", "session_context": "ctx",
                                    "conversation_phase": "p"},
          "turns": [{"turn_number": 1, "role": "user", "content": "hello there, friend",
                     "emotional_context": {"primary_emotion": "fear", "intensity": 0.5}},
                    {"turn_number": 2, "role": "assistant", "content": "hello back, friend",
                     "emotional_context": {"primary_emotion": "calm", "intensity": 0.4}}]}
CID = "11111111-2222-4333-8444-555555555555"


def _snapshot(raw: psycopg.Connection[Any]) -> dict[str, Any]:
    tables = ["personas", "emotional_arcs", "training_topics", "prompt_templates",
              "conversations", "generation_logs"]
    return {t: raw.execute(f"SELECT xmin::text, * FROM {t} ORDER BY 2").fetchall()
            for t in tables}


def test_reimport_leaves_database_as_after_first(engine: Engine, tmp_path: Path,
                                                 raw: psycopg.Connection[Any]) -> None:
    records = [*synthetic.scaffolding_records(), *synthetic.conversation_records(20, seed=3)]
    first = import_records(engine, tmp_path, records)
    assert first.failed == 0
    assert first.counts["conversation.inserted"] == 20
    before = _snapshot(raw)
    second = import_records(engine, tmp_path, records)
    assert second.failed == 0
    assert set(second.counts) == {"persona.unchanged", "emotional_arc.unchanged",
                                  "training_topic.unchanged", "prompt_template.unchanged",
                                  "conversation.unchanged"}
    assert _snapshot(raw) == before  # same rows, same xmin: nothing rewritten


def test_ids_derived_from_keys_are_stable(engine: Engine, tmp_path: Path,
                                          raw: psycopg.Connection[Any]) -> None:
    import_records(engine, tmp_path, synthetic.scaffolding_records())
    ids = raw.execute("SELECT persona_key, id FROM personas ORDER BY 1").fetchall()
    raw.execute("DELETE FROM personas")
    import_records(engine, tmp_path, synthetic.scaffolding_records())
    assert raw.execute("SELECT persona_key, id FROM personas ORDER BY 1").fetchall() == ids


def test_created_at_kept_when_absent_and_prompt_logged_once(
        engine: Engine, tmp_path: Path, raw: psycopg.Connection[Any]) -> None:
    record = {"type": "conversation", "conversation_id": CID, "parsed_json": PARSED,
              "system_prompt": "Prompt A", "quality_score": 4}
    import_records(engine, tmp_path, [record])
    created = raw.execute("SELECT created_at FROM conversations").fetchone()
    import_records(engine, tmp_path, [record])
    assert raw.execute("SELECT created_at FROM conversations").fetchone() == created
    assert raw.execute("SELECT count(*) FROM generation_logs").fetchone() == (1,)
    import_records(engine, tmp_path, [{**record, "system_prompt": "Prompt B"}])
    import_records(engine, tmp_path, [{**record, "system_prompt": "Prompt B"}])
    assert raw.execute("SELECT system_prompt FROM generation_logs ORDER BY id").fetchall() == \
        [("Prompt A",), ("Prompt B",)]


def test_per_record_errors_with_line_numbers(engine: Engine, tmp_path: Path,
                                             raw: psycopg.Connection[Any]) -> None:
    good = {"type": "conversation", "conversation_id": CID, "parsed_json": PARSED}
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"type": "persona", "persona_key": "p1", "name": "P", "archetype": "The P"}),
        json.dumps({"type": "persona", "name": "no key", "archetype": "x"}),           # 2
        "{not json",                                                                    # 3
        json.dumps({"type": "alien"}),                                                  # 4
        json.dumps({**good, "conversation_id": "not-a-uuid"}),                          # 5
        json.dumps({**good, "persona_key": "nobody"}),                                  # 6
        json.dumps({**good, "quality_score": 7}),                                       # 7
        json.dumps({**good, "parsed_json": None}),                                      # 8
        json.dumps({"type": "training_topic", "topic_key": "t", "name": "T",
                    "complexity_level": "expert"}),                                     # 9
        json.dumps({**good, "persona_key": "p1"}),                                      # 10
        "",
        json.dumps({"type": "conversation", "conversation_id":
                    "21111111-2222-4333-8444-555555555555", "parsed_json": "prose"}),   # 12
    ]
    path.write_text("\n".join(lines) + "\n")
    summary = import_path(engine, path)
    failed = {e["where"]: e["reason"] for e in summary.errors}
    assert sorted(failed) == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 7",
                              "line 8", "line 9"]
    assert "persona_key" in failed["line 2"]
    assert "not valid JSON" in failed["line 3"]
    assert "alien" in failed["line 4"]
    assert "conversation_id" in failed["line 5"]
    assert "unknown persona_key 'nobody'" in failed["line 6"]
    assert "quality_score" in failed["line 7"]
    assert "parsed_json" in failed["line 8"]
    assert "complexity_level" in failed["line 9"]
    # The good records went in, including a parsed_json that is not an object.
    assert raw.execute("SELECT count(*) FROM conversations").fetchone() == (2,)
    assert raw.execute("SELECT parsed_json FROM conversations WHERE conversation_id = "
                       "'21111111-2222-4333-8444-555555555555'").fetchone() == ("prose",)
    result = run_cli(str(engine.url.render_as_string(hide_password=False)), "import", str(path))
    assert result.returncode == 1
    assert "line 6: unknown persona_key 'nobody'" in result.stdout


def test_json_bundle_scaffolding_first_and_index_errors(engine: Engine, tmp_path: Path,
                                                        raw: psycopg.Connection[Any]) -> None:
    bundle = {
        "conversations": [{"conversation_id": CID, "persona_key": "p1", "parsed_json": PARSED},
                          {"conversation_id": CID}],
        "personas": [{"persona_key": "p1", "name": "P", "archetype": "The P",
                      "demographics": "Early 30s"}],
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    summary = import_path(engine, path)
    assert [e["where"] for e in summary.errors] == ["conversations[1]"]
    assert raw.execute("SELECT p.persona_key FROM conversations c JOIN personas p "
                       "ON p.id = c.persona_id").fetchall() == [("p1",)]


def test_nul_removed_with_warning_naming_the_record(engine: Engine, tmp_path: Path,
                                                    raw: psycopg.Connection[Any]) -> None:
    parsed = json.loads(json.dumps(PARSED))
    parsed["turns"][0]["content"] = "hello\u0000 there"
    path = write_jsonl(tmp_path / "nul.jsonl", [
        {"type": "conversation", "conversation_id": CID, "parsed_json": parsed}])
    summary = import_path(engine, path)
    assert summary.failed == 0
    assert summary.warnings[0]["record"] == CID and summary.warnings[0]["where"] == "line 1"
    stored = raw.execute("SELECT parsed_json->'turns'->0->>'content' FROM conversations"
                         ).fetchone()
    assert stored == ("hello there",)


def test_changed_record_updates_row(engine: Engine, tmp_path: Path,
                                    raw: psycopg.Connection[Any]) -> None:
    record = {"type": "conversation", "conversation_id": CID, "parsed_json": PARSED,
              "quality_score": 3.5}
    import_records(engine, tmp_path, [record])
    summary = import_records(engine, tmp_path, [{**record, "quality_score": 4.5}])
    assert summary.counts["conversation.updated"] == 1
    assert raw.execute("SELECT quality_score FROM conversations").fetchone() == (4.5,)


def test_missing_file_is_a_clear_error(db_url: str, tmp_path: Path) -> None:
    result = run_cli(db_url, "import", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr
