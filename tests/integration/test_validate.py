"""`reenrich validate`: stored documents against the contract; exported files offline."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from tests.conftest import run_cli
from tests.dataset_helpers import enriched, stored
from worker.config import EnrichmentConfig
from worker.dataset.export import ExportOptions, run_export
from worker.dataset.validate import (
    check_chat_row,
    check_file,
    check_prompt_completion_row,
    check_stored,
)


def _codes(found: list[Any]) -> set[str]:
    return {v.code for v in found}


def test_stored_documents_pass_then_each_broken_rule_is_named(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=12)
    result = check_stored(engine)
    assert result.checked == 12 and result.violations == {}

    ids = [cid for cid, _ in stored(engine)]
    a, b, c, d, e, f = ids[:6]
    edits = [
        (a, "enriched_json #- '{training_pairs,0,conversation_metadata,persona_archetype}'"),
        (b, "jsonb_set(enriched_json, "
            "'{training_pairs,1,training_metadata,quality_criteria,clarity_score}', '7')"),
        (c, "jsonb_set(enriched_json, '{training_pairs,0,turn_number}', '5')"),
        (d, "jsonb_set(enriched_json, '{dataset_metadata,surprise}', '\"x\"')"),
    ]
    with engine.begin() as conn:
        for cid, expression in edits:
            conn.execute(text(f"UPDATE conversations SET enriched_json = {expression} "
                              "WHERE conversation_id = :id"), {"id": cid})
        # e's first pair takes f's first pair id: ids must be unique across the table.
        conn.execute(text(
            "UPDATE conversations SET enriched_json = jsonb_set(enriched_json, "
            "'{training_pairs,0,id}', (SELECT enriched_json #> '{training_pairs,0,id}' "
            "FROM conversations WHERE conversation_id = :f)) WHERE conversation_id = :e"),
            {"e": e, "f": f})
    result = check_stored(engine)
    found = {cid: _codes(v) for cid, v in result.violations.items()}
    assert found == {
        a: {"missing_scaffolding_field"},
        b: {"quality_out_of_range"},
        c: {"turn_numbers_not_sequential"},
        d: {"unknown_key"},
        e: {"pair_id_not_unique"},
        f: {"pair_id_not_unique"},
    }
    missing = result.violations[a][0]
    assert missing.path == "training_pairs[0].conversation_metadata.persona_archetype"

    cli = run_cli(db_url, "validate", "--json")
    assert cli.returncode == 1
    report = json.loads(cli.stdout)
    assert report["checked"] == 12 and report["conversations_with_violations"] == 6
    listed = {item["conversation_id"]: {v["code"] for v in item["violations"]}
              for item in report["violations"]}
    assert listed == {str(k): v for k, v in found.items()}


def _line(row: Any) -> str:
    return row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)


def test_file_check_names_each_violation_with_its_line(tmp_path: Path, db_url: str) -> None:
    ok_chat = {"messages": [{"role": "system", "content": "Be kind."},
                            {"role": "user", "content": "Hello"},
                            {"role": "assistant", "content": "Hi, how can I help?"}],
               "conversation_id": "x", "quality_score": 4}

    def chat(*messages: tuple[str, str], **extra: Any) -> dict[str, Any]:
        return {"messages": [{"role": r, "content": c, **extra} for r, c in messages]}

    lines = [
        ok_chat,                                                           # 1
        "{not json",                                                       # 2
        "[1, 2]",                                                          # 3
        chat(("user", "Hi"), ("tool", "{}")),                              # 4
        chat(("user", "Hi"), ("assistant", "Hello"), name="bob"),          # 5
        chat(("system", "S"), ("user", "Hi"), ("assistant", "A"), ("user", "Q")),  # 6
        chat(("user", "Hi"), ("assistant", "  ")),                         # 7
        chat(("user", "Hi"), ("user", "Again"), ("assistant", "A")),       # 8
        "",                                                                # 9
        {"messages": ok_chat["messages"], "quality_score": "high"},        # 10
        {"prompt": [{"role": "user", "content": "Q"}],
         "completion": [{"role": "assistant", "content": "A"}]},           # 11
        chat(("user", "Hi"), ("assistant", "A"), ("system", "late"), ("assistant", "B")),  # 12
    ]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(_line(r) for r in lines) + "\n", encoding="utf-8")
    result = check_file(path)
    got = {(line, v.code) for line, v in result.violations}
    assert got == {
        (2, "not_json"), (3, "not_an_object"), (4, "invalid_role"),
        (5, "unknown_message_key"), (6, "not_ending_on_assistant"), (7, "empty_content"),
        (8, "roles_not_alternating"), (9, "blank_line"), (10, "column_type_changed"),
        (11, "mixed_formats"), (12, "misplaced_system"),
    }
    assert not result.ok and result.lines == 12

    cli = run_cli(db_url, "validate", "--file", str(path))
    assert cli.returncode == 1
    assert f"{path}:2: not_json: " in cli.stdout
    assert f"{path}:4: invalid_role: messages[1].role is 'tool'" in cli.stdout
    assert cli.stdout.strip().endswith("12 lines (chat 8, prompt-completion 1), 12 violations")


def test_prompt_completion_rules() -> None:
    def pc(prompt: list[tuple[str, str]], completion: list[tuple[str, str]]) -> dict[str, Any]:
        return {"prompt": [{"role": r, "content": c} for r, c in prompt],
                "completion": [{"role": r, "content": c} for r, c in completion]}

    assert check_prompt_completion_row(pc([("system", "S"), ("user", "Q")],
                                          [("assistant", "A")])) == []
    assert check_prompt_completion_row({"prompt": "Q: why?", "completion": " Because."}) == []
    assert _codes(check_prompt_completion_row(pc([("user", "Q"), ("assistant", "A")],
                                                 [("assistant", "B")]))) \
        == {"not_ending_on_user"}
    assert _codes(check_prompt_completion_row(pc([("user", "Q")], [("user", "B")]))) \
        == {"completion_not_assistant"}
    assert _codes(check_prompt_completion_row({"prompt": "Q", "completion": ""})) \
        == {"invalid_text"}
    assert _codes(check_chat_row({"messages": []})) == {"invalid_messages"}
    assert _codes(check_chat_row({"messages": [{"role": "system", "content": "S"}]})) \
        == {"no_turns"}


def test_every_export_format_file_is_accepted(engine: Engine, tmp_path: Path,
                                              config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=16)
    for fmt, extra in (("chat", {"condition": "system"}),
                       ("prompt-completion", {"strip_metadata": True}),
                       ("brightrun-v4", {"meta": True})):
        out = tmp_path / f"{fmt}.jsonl"
        report = run_export(engine, ExportOptions(format=fmt, output=out, **extra),
                            consultant_profile=config.consultant_profile)
        result = check_file(out)
        assert result.ok, result.as_json()
        assert sum(result.formats.values()) == result.lines == \
            report.rows + (1 if fmt == "brightrun-v4" else 0)
    # A stored pair that breaks the contract is caught in a brightrun-v4 file too.
    broken = tmp_path / "brightrun-v4-broken.jsonl"
    lines = (tmp_path / "brightrun-v4.jsonl").read_text(encoding="utf-8").splitlines()
    pair = json.loads(lines[1])
    del pair["training_metadata"]["quality_criteria"]
    broken.write_text("\n".join([lines[0], json.dumps(pair), lines[0]]) + "\n")
    got = {(line, v.code) for line, v in check_file(broken).violations}
    assert got == {(2, "missing_key"), (3, "misplaced_meta")}
    assert uuid.UUID(pair["conversation_id"])
