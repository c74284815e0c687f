"""`reenrich export` on real PostgreSQL: each format's shape against export-formats.md,
loading with `datasets`, filters, reproducible stratified samples, splits, tokens, the card."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text

from tests.conftest import run_cli
from tests.dataset_helpers import enriched, params_key, read_jsonl, stored
from tests.helpers import import_records
from worker import synthetic
from worker.config import EnrichmentConfig
from worker.dataset.export import ExportError, ExportOptions, run_export
from worker.dataset.formats import METADATA_COLUMNS
from worker.dataset.sampling import SamplingSpec
from worker.dataset.validate import check_file
from worker.db.dataset import DatasetFilters
from worker.enrichment.contract import KEY_ORDER

# `datasets` reads local files only here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def export(engine: Engine, config: EnrichmentConfig, fmt: str, output: Path,
           **kwargs: Any) -> dict[str, Any]:
    # These tests compare the files with every stored document: keep quality tier `rejected`
    # (left out by default; tests/test_versions.py checks that default).
    kwargs["filters"] = dataclasses.replace(kwargs.get("filters", DatasetFilters()),
                                            include_rejected_tier=True)
    options = ExportOptions(format=fmt, output=output, **kwargs)
    return run_export(engine, options, consultant_profile=config.consultant_profile).as_dict()


def assistant_pairs(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in document["training_pairs"] if p["target_response"] is not None]


def metadata_of(document: dict[str, Any], pair: dict[str, Any]) -> dict[str, Any]:
    meta = pair["conversation_metadata"]
    return {"conversation_id": pair["conversation_id"],
            "persona_archetype": meta["persona_archetype"],
            "emotional_arc_key": meta["emotional_arc_key"],
            "training_topic_key": meta["training_topic_key"],
            "quality_score": pair["training_metadata"]["quality_score"],
            "quality_tier": document["dataset_metadata"]["quality_tier"]}


# ------------------------------------------------------------------ shapes


def test_chat_rows_one_per_conversation_each_assistant_turn_once(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out = tmp_path / "chat.jsonl"
    report = export(engine, config, "chat", out)
    rows = read_jsonl(out)
    documents = stored(engine)
    assert [r["conversation_id"] for r in rows] == [str(cid) for cid, _ in documents]
    assert report["rows"] == report["conversations"] == len(rows)
    for row, (_, document) in zip(rows, documents, strict=True):
        assert list(row) == ["messages", *METADATA_COLUMNS]
        assert row == {"messages": row["messages"],
                       **metadata_of(document, document["training_pairs"][0])}
        messages = row["messages"]
        pairs = document["training_pairs"]
        assert messages[0] == {"role": "system", "content": pairs[0]["system_prompt"]}
        assert all(list(m) == ["role", "content"] for m in messages)
        last = max(i for i, p in enumerate(pairs) if p["target_response"] is not None)
        expected = [{"role": "assistant", "content": p["target_response"]}
                    if p["target_response"] is not None
                    else {"role": "user", "content": p["current_user_input"]}
                    for p in pairs[:last + 1]]
        assert messages[1:] == expected  # every assistant turn once, ending on the last one
    assert report["pairs"] == sum(len(assistant_pairs(d)) for _, d in documents)
    raw = out.read_bytes()
    assert "é".encode() in raw and b"\\u00e9" not in raw  # UTF-8, non-ASCII kept


def test_prompt_completion_rows_one_per_assistant_pair(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out = tmp_path / "pc.jsonl"
    report = export(engine, config, "prompt-completion", out)
    rows = read_jsonl(out)
    expected_pairs = [(d, p) for _, d in stored(engine) for p in assistant_pairs(d)]
    assert len(rows) == len(expected_pairs) == report["rows"] == report["pairs"]
    for row, (document, pair) in zip(rows, expected_pairs, strict=True):
        assert list(row) == ["prompt", "completion", *METADATA_COLUMNS, "turn_number"]
        assert row["prompt"][0] == {"role": "system", "content": pair["system_prompt"]}
        assert row["prompt"][1:] == [{"role": h["role"], "content": h["content"]}
                                     for h in pair["conversation_history"]]
        assert row["prompt"][-1]["role"] == "user"
        assert row["prompt"][-1]["content"] == pair["current_user_input"]
        assert row["completion"] == [{"role": "assistant", "content": pair["target_response"]}]
        assert {k: row[k] for k in METADATA_COLUMNS} == metadata_of(document, pair)
        assert row["turn_number"] == pair["turn_number"]


def test_brightrun_v4_is_the_stored_pairs_in_contract_order(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out = tmp_path / "pairs.jsonl"
    export(engine, config, "brightrun-v4", out, meta=True)
    lines = read_jsonl(out)
    pairs = [p for _, d in stored(engine) for p in assistant_pairs(d)]
    assert lines[0] == {"_meta": {"file_name": "pairs.jsonl", "total_pairs": len(pairs),
                                  "version": "4.0.0"}}
    assert lines[1:] == pairs
    pair_order = list(KEY_ORDER["training_pairs"])
    meta_order = list(KEY_ORDER["training_pairs"]["conversation_metadata"])
    training_order = list(KEY_ORDER["training_pairs"]["training_metadata"])
    for line in lines[1:]:
        assert list(line) == pair_order
        assert list(line["conversation_metadata"]) == meta_order
        assert list(line["training_metadata"]) == training_order
    export(engine, config, "brightrun-v4", out)  # without --meta: pairs only
    assert read_jsonl(out) == pairs


def test_full_json_document_and_scaffolding_distribution_match_the_data(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    out = tmp_path / "training.json"
    export(engine, config, "full-json", out, target_model="meta-llama/Llama-3.1-8B-Instruct")
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert list(doc) == ["training_file_metadata", "consultant_profile", "conversations"]
    meta = doc["training_file_metadata"]
    assert list(meta) == ["file_name", "version", "created_date", "last_updated", "format_spec",
                          "target_model", "vertical", "total_conversations",
                          "total_training_pairs", "quality_summary", "scaffolding_distribution"]
    documents = [d for _, d in stored(engine)]
    assert meta["file_name"] == "training.json" and meta["version"] == "4.0.0"
    assert meta["format_spec"] == "brightrun-lora-v4"
    assert meta["target_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert meta["created_date"].endswith("Z")
    assert meta["total_conversations"] == len(documents) == len(doc["conversations"])
    all_pairs = [p for d in documents for p in d["training_pairs"]]
    assert meta["total_training_pairs"] == len(all_pairs)
    scores = [p["training_metadata"]["quality_score"] for p in all_pairs]
    assert meta["quality_summary"] == {
        "avg_quality_score": round(sum(scores) / len(scores) + 1e-9, 2),
        "min_quality_score": min(scores), "max_quality_score": max(scores),
        "human_reviewed_count": 0, "human_reviewed_percentage": 0.0}
    # scaffolding_distribution: conversations per key, straight from the database.
    with engine.connect() as conn:
        def counts(key: str) -> dict[str, int]:
            rows = conn.execute(text(
                "SELECT enriched_json -> 'input_parameters' ->> :key AS k, count(*) AS n "
                "FROM conversations WHERE enriched_json IS NOT NULL "
                "AND enriched_json -> 'input_parameters' ->> :key IS NOT NULL GROUP BY 1"),
                {"key": key})
            return {row.k: row.n for row in rows}
        expected = {"personas": counts("persona_key"),
                    "emotional_arcs": counts("emotional_arc_key"),
                    "training_topics": counts("training_topic_key")}
    assert meta["scaffolding_distribution"] == expected
    assert sum(expected["personas"].values()) < len(documents)  # rows without one: not counted
    assert doc["consultant_profile"] == documents[0]["consultant_profile"]
    first = doc["conversations"][0]
    assert list(first) == ["conversation_metadata", "training_pairs"]
    cmeta = first["conversation_metadata"]
    assert list(cmeta) == ["conversation_id", "source_file", "created_date", "total_turns",
                           "quality_tier", "scaffolding"]
    assert list(cmeta["scaffolding"]) == ["persona_key", "persona_name", "emotional_arc_key",
                                          "emotional_arc", "training_topic_key",
                                          "training_topic"]
    assert cmeta["source_file"] == f"fp_conversation_{cmeta['conversation_id']}.json"
    assert first["training_pairs"] == documents[0]["training_pairs"]
    assert list(first["training_pairs"][0]) == list(KEY_ORDER["training_pairs"])


def test_condition_system_and_strip_metadata(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out = tmp_path / "chat.jsonl"
    export(engine, config, "chat", out, condition="system", strip_metadata=True)
    rows = read_jsonl(out)
    documents = stored(engine)
    with_block = without_block = 0
    for row, (_, document) in zip(rows, documents, strict=True):
        assert list(row) == ["messages"]
        pair = document["training_pairs"][0]
        meta = pair["conversation_metadata"]
        lines = [f"{label}: {meta[key]}" for label, key in (
            ("Client persona", "persona_archetype"), ("Emotional arc", "emotional_arc"),
            ("Training topic", "training_topic")) if meta[key] is not None]
        expected = pair["system_prompt"] + ("\n\n" + "\n".join(lines) if lines else "")
        assert row["messages"][0]["content"] == expected
        with_block += bool(lines)
        without_block += not lines
    assert with_block and without_block  # both cases occur in the data
    export(engine, config, "prompt-completion", out, condition="system")
    for row in read_jsonl(out):
        system = row["prompt"][0]["content"]
        if row["persona_archetype"] is not None:
            assert f"\n\nClient persona: {row['persona_archetype']}\n" in system
        assert "Client persona" not in row["completion"][0]["content"]


def test_chat_and_prompt_completion_load_with_datasets(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    datasets = pytest.importorskip("datasets")
    enriched(engine, tmp_path, config)
    chat, pc = tmp_path / "chat.jsonl", tmp_path / "pc.jsonl"
    chat_report = export(engine, config, "chat", chat)
    pc_report = export(engine, config, "prompt-completion", pc, condition="system")
    cache = str(tmp_path / "hf-cache")
    loaded = datasets.load_dataset("json", data_files=str(chat), split="train", cache_dir=cache)
    assert loaded.num_rows == chat_report["rows"]
    assert loaded.column_names == ["messages", *METADATA_COLUMNS]
    assert loaded[0]["messages"][0]["role"] == "system"
    loaded = datasets.load_dataset("json", data_files={"train": str(pc)}, cache_dir=cache)
    assert loaded["train"].num_rows == pc_report["rows"]
    assert set(loaded["train"].column_names) >= {"prompt", "completion", "turn_number"}
    assert loaded["train"][0]["completion"][0]["role"] == "assistant"


# ------------------------------------------------------------------ filters


def test_filters_and_the_removal_report(engine: Engine, tmp_path: Path,
                                        config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    documents = dict(stored(engine))
    personas = ["anxious_planner", "pragmatic_optimist"]
    out = tmp_path / "f.jsonl"
    report = export(engine, config, "chat", out, filters=DatasetFilters(
        personas=tuple(personas), min_quality=3.0, require_scaffolding=True))
    with engine.connect() as conn:
        scores: dict[uuid.UUID, float] = dict(conn.execute(text(
            "SELECT conversation_id, coalesce(quality_score, 3.0) FROM conversations")).all())
    expected = [cid for cid, d in documents.items()
                if params_key(d, "persona_key") in personas and scores[cid] >= 3.0]
    got = [uuid.UUID(r["conversation_id"]) for r in read_jsonl(out)]
    assert sorted(got) == sorted(expected) and expected
    assert report["conversations_in_table"] == 30
    assert sum(report["removed"].values()) + report["conversations"] == 30
    assert report["removed"]["persona"] == sum(
        1 for d in documents.values() if params_key(d, "persona_key") not in personas)
    assert report["filters"] == {"persona": personas, "min_quality": 3.0,
                                 "require_scaffolding": True, "include_rejected_tier": True}

    # --require-scaffolding alone leaves out exactly the documents missing a key.
    report = export(engine, config, "chat", out,
                    filters=DatasetFilters(require_scaffolding=True, tiers=("production",)))
    assert all(r["quality_tier"] == "production" and r["persona_archetype"]
               and r["emotional_arc_key"] and r["training_topic_key"] for r in read_jsonl(out))
    assert report["removed"]["missing_scaffolding"] == sum(
        1 for d in documents.values() if None in (
            params_key(d, "persona_key"), params_key(d, "emotional_arc_key"),
            params_key(d, "training_topic_key")))


def test_time_window_failures_and_not_enriched(engine: Engine, tmp_path: Path,
                                              config: EnrichmentConfig) -> None:
    from datetime import UTC, datetime

    enriched(engine, tmp_path, config, count=20)
    # A conversation whose document breaks (it keeps its old enriched document, and an open
    # failure), and one that was never enriched.
    victim = stored(engine)[0][0]
    records = [*synthetic.conversation_records(1, seed=99)]
    import_records(engine, tmp_path, records, name="late.jsonl")
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversations SET parsed_json = '\"broken\"' "
                          "WHERE conversation_id = :id"), {"id": victim})
    from tests.dataset_helpers import backfill
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM backfill_runs"))
        conn.execute(text("UPDATE conversations SET enriched_json = NULL, "
                          "enrichment_status = 'pending' WHERE conversation_id = :id"),
                     {"id": uuid.UUID(records[0]["conversation_id"])})
    with contextlib.suppress(AssertionError):  # the run records the failure
        backfill(engine, config)
    out = tmp_path / "w.jsonl"
    report = export(engine, config, "chat", out, filters=DatasetFilters(exclude_failed=True))
    ids = {r["conversation_id"] for r in read_jsonl(out)}
    assert str(victim) not in ids
    assert report["removed"]["failed"] == 1
    report = export(engine, config, "chat", out)
    assert str(victim) in {r["conversation_id"] for r in read_jsonl(out)}  # old document
    # The time window: synthetic rows are 7 minutes apart from 2025-06-01.
    report = export(engine, config, "chat", out, filters=DatasetFilters(
        since=datetime(2025, 6, 1, 1, 0, tzinfo=UTC), until=datetime(2025, 6, 1, 2, 0,
                                                                       tzinfo=UTC)))
    with engine.connect() as conn:
        window = conn.execute(text(
            "SELECT count(*) FROM conversations WHERE created_at >= '2025-06-01T01:00Z' "
            "AND created_at < '2025-06-01T02:00Z' AND enriched_json IS NOT NULL")).scalar()
    assert report["conversations"] == window and 0 < window < 20
    assert report["removed"]["since"] > 0 and report["removed"]["until"] > 0


# ------------------------------------------------------------------ sampling


def test_stratified_sample_same_seed_same_bytes_other_seed_other_sample(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=40)
    spec = SamplingSpec(stratify_by=("persona",), per_stratum=2, seed=5)
    first, second, other = tmp_path / "1.jsonl", tmp_path / "2.jsonl", tmp_path / "3.jsonl"
    report = export(engine, config, "prompt-completion", first, sampling=spec)
    export(engine, config, "prompt-completion", second, sampling=spec)
    assert first.read_bytes() == second.read_bytes()
    export(engine, config, "prompt-completion", other,
           sampling=SamplingSpec(stratify_by=("persona",), per_stratum=2, seed=6))
    ids = {r["conversation_id"] for r in read_jsonl(first)}
    assert ids != {r["conversation_id"] for r in read_jsonl(other)}
    per_persona = Counter(r["persona_archetype"] for r in read_jsonl(first)
                          if r["turn_number"] == 2)
    assert set(per_persona.values()) <= {1, 2}
    documents = dict(stored(engine))
    assert report["removed"]["stratum_key_null"] == sum(
        1 for d in documents.values() if params_key(d, "persona_key") is None)
    for label, stratum in report["strata"].items():
        available = sum(1 for d in documents.values() if params_key(d, "persona_key") == label)
        assert stratum["available"] == available
        assert stratum["shortfall"] == max(0, 2 - available)
        assert stratum["train_rows"] == sum(1 for r in read_jsonl(first)
                                            if r["persona_archetype"] == label)


def test_sample_unchanged_by_inserting_conversations_that_rank_behind(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    """Earlier conversations keep their places; the file changes only by new ones ranking in."""
    from worker.dataset.sampling import SAMPLE_PURPOSE, keyed_hash

    enriched(engine, tmp_path, config, count=30)
    spec = SamplingSpec(stratify_by=("arc",), per_stratum=3, seed=1)
    before = tmp_path / "before.jsonl"
    export(engine, config, "chat", before, sampling=spec)
    old_rows = read_jsonl(before)
    old_ids = {r["conversation_id"] for r in old_rows}

    # New conversations: the same generator, later created_at, fresh ids.
    new = list(synthetic.conversation_records(30, seed=77))
    import_records(engine, tmp_path, new, name="new.jsonl")
    from tests.dataset_helpers import backfill
    backfill(engine, config)
    after = tmp_path / "after.jsonl"
    export(engine, config, "chat", after, sampling=spec)
    new_rows = read_jsonl(after)
    new_ids = {r["conversation_id"] for r in new_rows}
    fresh = {r["conversation_id"] for r in new}
    assert (new_ids - fresh) <= old_ids  # no earlier conversation enters
    worst: dict[str, int] = {}
    for row in old_rows:
        rank = keyed_hash(1, uuid.UUID(row["conversation_id"]), SAMPLE_PURPOSE)
        worst[row["emotional_arc_key"]] = max(worst.get(row["emotional_arc_key"], 0), rank)
    for cid in old_ids - new_ids:  # each earlier pick that left was outranked by a new one
        arc = next(r["emotional_arc_key"] for r in old_rows if r["conversation_id"] == cid)
        rank = keyed_hash(1, uuid.UUID(cid), SAMPLE_PURPOSE)
        assert any(r["emotional_arc_key"] == arc and r["conversation_id"] in fresh
                   and keyed_hash(1, uuid.UUID(r["conversation_id"]), SAMPLE_PURPOSE) < rank
                   for r in new_rows)
    # The rows of conversations in both samples are byte for byte the same.
    old_lines = {json.loads(line)["conversation_id"]: line
                 for line in before.read_text(encoding="utf-8").splitlines()}
    for line in after.read_text(encoding="utf-8").splitlines():
        cid = json.loads(line)["conversation_id"]
        if cid in old_lines:
            assert line == old_lines[cid]
    # Keep only the new conversations that rank behind every earlier pick of a full stratum
    # (or have no arc): with them inserted, the sample is byte for byte the old one.
    picks = Counter(r["emotional_arc_key"] for r in old_rows)
    documents = dict(stored(engine))
    ahead = []
    for cid in fresh:
        arc = params_key(documents[uuid.UUID(cid)], "emotional_arc_key")
        rank = keyed_hash(1, uuid.UUID(cid), SAMPLE_PURPOSE)
        if arc is not None and (picks[arc] < 3 or rank < worst[arc]):
            ahead.append(uuid.UUID(cid))
    assert 0 < len(ahead) < len(fresh)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM conversations WHERE conversation_id = ANY(:ids)"),
                     {"ids": ahead})
    again = tmp_path / "again.jsonl"
    export(engine, config, "chat", again, sampling=spec)
    assert again.read_bytes() == before.read_bytes()


def test_validation_split_has_no_conversation_on_both_sides(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=40)
    train, validation = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    report = export(engine, config, "prompt-completion", train, validation_output=validation,
                    sampling=SamplingSpec(stratify_by=("topic",), validation_fraction=0.25,
                                          seed=2))
    train_ids = {r["conversation_id"] for r in read_jsonl(train)}
    val_ids = {r["conversation_id"] for r in read_jsonl(validation)}
    assert train_ids and val_ids and not train_ids & val_ids
    documents = dict(stored(engine))
    topics = Counter(params_key(d, "training_topic_key") for d in documents.values())
    for topic, size in topics.items():
        if topic is None:
            continue
        val_topics = {r["training_topic_key"] for r in read_jsonl(validation)}
        if size >= 2:
            assert topic in val_topics  # at least one per stratum of two or more
    splits = report["splits"]
    assert splits["train"]["conversations"] == len(train_ids)
    assert splits["validation"]["conversations"] == len(val_ids)
    assert splits["validation"]["rows"] == len(read_jsonl(validation))
    assert report["rows"] == splits["train"]["rows"] + splits["validation"]["rows"]


# ------------------------------------------------------------------ tokens, card, CLI


def _word_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))
    return path


def test_tokenizer_counts_and_drop_over_max(engine: Engine, tmp_path: Path,
                                            config: EnrichmentConfig) -> None:
    pytest.importorskip("tokenizers")
    enriched(engine, tmp_path, config)
    tokenizer = _word_tokenizer(tmp_path / "tokenizer.json")
    out = tmp_path / "pc.jsonl"
    full = export(engine, config, "prompt-completion", out)
    rows = read_jsonl(out)

    def words(row: dict[str, Any]) -> int:
        return sum(len(m["content"].split()) for m in row["prompt"] + row["completion"])

    limit = sorted(words(r) for r in rows)[len(rows) // 2]
    over = [r for r in rows if words(r) > limit]
    report = export(engine, config, "prompt-completion", out, tokenizer=tokenizer,
                    max_tokens=limit)
    assert report["rows_over_max_tokens"] == len(over) and report["rows"] == len(rows)
    assert report["lengths"]["tokens"]["total"]["max"] == max(words(r) for r in rows)
    report = export(engine, config, "prompt-completion", out, tokenizer=tokenizer,
                    max_tokens=limit, drop_over_max=True)
    kept = read_jsonl(out)
    assert len(kept) == len(rows) - len(over) == report["rows"]
    assert all(words(r) <= limit for r in kept)
    assert report["rows_dropped_over_max_tokens"] == len(over)
    assert report["lengths"]["chars"]["total"]["max"] <= full["lengths"]["chars"]["total"]["max"]


def test_cli_export_report_card_and_validate(engine: Engine, db_url: str, tmp_path: Path,
                                             config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    train, val = tmp_path / "data" / "train.jsonl", tmp_path / "data" / "validation.jsonl"
    report_path, card = tmp_path / "data" / "report.json", tmp_path / "data" / "README.md"
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(train),
                     "--stratify-by", "persona,arc", "--per-stratum", "2", "--seed", "4",
                     "--split-validation", "0.3", "--validation-output", str(val),
                     "--condition", "system", "--persona", "anxious_planner",
                     "--persona", "pragmatic_optimist", "--report", str(report_path),
                     "--card", str(card))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"train: {train}: ")
    assert "removed conversations: " in result.stdout and "shortfall" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["condition"] == "system" and report["sampling"]["seed"] == 4
    assert report["filters"] == {"persona": ["anxious_planner", "pragmatic_optimist"]}
    text_card = card.read_text(encoding="utf-8")
    header = yaml.safe_load(text_card.split("---\n")[1])
    assert header["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "train.jsonl"},
        {"split": "validation", "path": "validation.jsonl"}]}]
    assert "seed 4" in text_card and "persona=['anxious_planner', 'pragmatic_optimist']" \
        in text_card
    assert "Client persona: <persona_archetype>" in text_card
    assert "| `anxious_planner` |" in text_card
    check = run_cli(db_url, "validate", "--file", str(train))
    assert check.returncode == 0, check.stdout
    assert check.stdout.strip().endswith("0 violations")
    assert check_file(val).ok


def test_options_that_do_not_fit_are_refused_before_anything_is_written(
        db_url: str, tmp_path: Path, engine: Engine, config: EnrichmentConfig) -> None:
    out = tmp_path / "x.jsonl"
    result = run_cli(db_url, "export", "--output", str(out), "--format", "chat", "--balance")
    assert result.returncode == 2 and "--balance needs --stratify-by" in result.stderr
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sampling": SamplingSpec(validation_fraction=0.1)}, "--validation-output"),
        ({"validation_output": out}, "--split-validation"),
        ({"sampling": SamplingSpec(validation_fraction=0.1), "validation_output": out},
         "must differ"),
        ({"format": "brightrun-v4", "condition": "system"}, "chat and prompt-completion"),
        ({"format": "full-json", "strip_metadata": True}, "chat and prompt-completion"),
        ({"meta": True}, "--meta"),
        ({"target_model": "m"}, "--target-model"),
        ({"max_tokens": 100}, "--tokenizer"),
        ({"tokenizer": tmp_path / "none.json"}, "no tokenizer file"),
        ({"tokenizer": tmp_path / "t.json", "drop_over_max": True}, "--max-tokens"),
    ]
    for kwargs, message in cases:
        fmt = kwargs.pop("format", "chat")
        with pytest.raises(ExportError, match=message):
            export(engine, config, fmt, out, **kwargs)
    assert not out.exists()
