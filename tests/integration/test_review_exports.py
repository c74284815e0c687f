"""What exports, sheets and stats do with reviews (reviews.md, export-formats.md)."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.conftest import run_cli
from tests.dataset_helpers import enriched, read_jsonl, stored
from worker.api import enrich_conversations
from worker.config import EnrichmentConfig
from worker.dataset.export import ExportError, ExportOptions, run_export
from worker.dataset.review_rules import ReviewRules
from worker.dataset.reviews import ReviewInput, ReviewStatus
from worker.dataset.sampling import SamplingSpec
from worker.dataset.stats import collect
from worker.dataset.stats_html import render
from worker.db import reviews as db_reviews
from worker.db.dataset import DatasetFilters
from worker.enrichment.models import content_sha256

Key = tuple[str, int]


def export(engine: Engine, config: EnrichmentConfig, fmt: str, output: Path,
           **rules: bool) -> dict[str, Any]:
    options = ExportOptions(format=fmt, output=output, review=ReviewRules(**rules))
    return run_export(engine, options, consultant_profile=config.consultant_profile).as_dict()


def assistant(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in document["training_pairs"] if p["target_response"] is not None]


def review(engine: Engine, config: EnrichmentConfig,
           marks: list[tuple[dict[str, Any], ReviewStatus, bool]]) -> None:
    """Record (pair, status, seed example) reviews of the pairs' current text, re-enrich."""
    with engine.begin() as conn:
        db_reviews.record(conn, [ReviewInput(
            0, uuid.UUID(pair["conversation_id"]), pair["turn_number"], status, "Ana", None,
            seed, 0, content_sha256(pair["current_user_input"], pair["target_response"]))
            for pair, status, seed in marks], "test")
    ids = list(dict.fromkeys(uuid.UUID(p["conversation_id"]) for p, _, _ in marks))
    assert all(r.ok for r in enrich_conversations(engine, ids, config=config))


@pytest.fixture
def reviewed(engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> dict[str, Any]:
    """A: second assistant turn rejected; B: first rejected; C: all approved, first a seed."""
    enriched(engine, tmp_path, config, count=16)
    baseline = export(engine, config, "chat", tmp_path / "baseline.jsonl")
    chat_ids = [row["conversation_id"] for row in read_jsonl(tmp_path / "baseline.jsonl")]
    documents = {str(cid): doc for cid, doc in stored(engine)}
    usable = [cid for cid in chat_ids if len(assistant(documents[cid])) >= 2]
    a, b, c = usable[:3]
    pa, pb, pc = assistant(documents[a]), assistant(documents[b]), assistant(documents[c])
    review(engine, config, [(pa[0], ReviewStatus.APPROVED, False),
                            (pa[1], ReviewStatus.REJECTED, False),
                            (pb[0], ReviewStatus.REJECTED, False),
                            (pb[1], ReviewStatus.NEEDS_REVISION, False),
                            *[(p, ReviewStatus.APPROVED, i == 0) for i, p in enumerate(pc)]])
    return {"a": a, "b": b, "c": c, "pa": pa, "pb": pb, "pc": pc, "baseline": baseline,
            "documents": documents}


def keys(rows: list[dict[str, Any]]) -> set[Key]:
    return {(row["conversation_id"], row["turn_number"]) for row in rows}


def test_pair_formats_leave_rejected_pairs_out_by_default(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig, reviewed: dict[str, Any]
        ) -> None:
    rejected = {(reviewed["a"], reviewed["pa"][1]["turn_number"]),
                (reviewed["b"], reviewed["pb"][0]["turn_number"])}
    for fmt in ("prompt-completion", "brightrun-v4"):
        everything = export(engine, config, fmt, tmp_path / f"all-{fmt}.jsonl",
                            include_rejected=True)
        kept = export(engine, config, fmt, tmp_path / f"{fmt}.jsonl")
        all_rows = read_jsonl(tmp_path / f"all-{fmt}.jsonl")
        rows = read_jsonl(tmp_path / f"{fmt}.jsonl")
        assert rejected <= keys(all_rows)
        assert keys(rows) == keys(all_rows) - rejected
        assert kept["rows"] == everything["rows"] - 2
        assert kept["review"]["pairs_removed"] == {"rejected": 2}
        assert everything["review"]["pairs_removed"] == {}
        assert kept["review"]["rules"]["include_rejected"] is False


def test_chat_cuts_before_the_first_rejected_turn(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig, reviewed: dict[str, Any]
        ) -> None:
    report = export(engine, config, "chat", tmp_path / "chat.jsonl")
    rows = {row["conversation_id"]: row for row in read_jsonl(tmp_path / "chat.jsonl")}
    a, pa = reviewed["a"], reviewed["pa"]
    # A keeps its turns up to its first assistant turn (approved); the rejected one and
    # everything after it are cut.
    messages = rows[a]["messages"]
    assert messages[-1] == {"role": "assistant", "content": pa[0]["target_response"]}
    assert all(m["content"] != pa[1]["target_response"] for m in messages)
    # B's first assistant turn is rejected: nothing is left, the conversation is dropped.
    assert reviewed["b"] not in rows
    assert report["removed"]["review"] == 1
    after = len(pa) - 2 + len(reviewed["pb"]) - 1
    assert report["review"]["pairs_removed"] == {"rejected": 2, **(
        {"after_rejected": after} if after else {})}
    kept = export(engine, config, "chat", tmp_path / "all.jsonl", include_rejected=True)
    assert kept["rows"] == reviewed["baseline"]["rows"]
    assert read_jsonl(tmp_path / "all.jsonl") == read_jsonl(tmp_path / "baseline.jsonl")


def test_approved_only_and_seed_examples_only(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig, reviewed: dict[str, Any]
        ) -> None:
    a, c, pa, pc = reviewed["a"], reviewed["c"], reviewed["pa"], reviewed["pc"]
    export(engine, config, "prompt-completion", tmp_path / "pc.jsonl", approved_only=True)
    assert keys(read_jsonl(tmp_path / "pc.jsonl")) == {
        (a, pa[0]["turn_number"]), *((c, p["turn_number"]) for p in pc)}
    report = export(engine, config, "chat", tmp_path / "chat.jsonl", approved_only=True)
    assert [row["conversation_id"] for row in read_jsonl(tmp_path / "chat.jsonl")] == [c]
    assert report["review"]["pairs_removed"]["not_approved"] > 0
    export(engine, config, "brightrun-v4", tmp_path / "seed.jsonl", seed_examples_only=True)
    seeds = read_jsonl(tmp_path / "seed.jsonl")
    assert [(row["conversation_id"], row["turn_number"]) for row in seeds] == [
        (c, pc[0]["turn_number"])]
    assert seeds[0]["training_metadata"]["use_as_seed_example"] is True
    with pytest.raises(ExportError, match="--approved-only already"):
        ExportOptions(format="chat", output=tmp_path / "x.jsonl",
                      review=ReviewRules(approved_only=True, include_rejected=True)).check()


def test_full_json_counts_pairs_with_a_current_review(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig, reviewed: dict[str, Any]
        ) -> None:
    export(engine, config, "full-json", tmp_path / "full.json", include_rejected=True)
    document = json.loads((tmp_path / "full.json").read_text(encoding="utf-8"))
    summary = document["training_file_metadata"]["quality_summary"]
    expected = 4 + len(reviewed["pc"])  # A: 2, B: 2, C: all
    assert summary["human_reviewed_count"] == expected
    total = document["training_file_metadata"]["total_training_pairs"]
    assert summary["human_reviewed_percentage"] == round(100 * expected / total, 2)
    export(engine, config, "full-json", tmp_path / "default.json")
    default = json.loads((tmp_path / "default.json").read_text(encoding="utf-8"))
    statuses = [p["training_metadata"]["review_status"] for conv in default["conversations"]
                for p in conv["training_pairs"]]
    assert "rejected" not in statuses
    assert default["training_file_metadata"]["quality_summary"]["human_reviewed_count"] \
        == expected - 2


def test_stats_review_coverage(engine: Engine, db_url: str, tmp_path: Path,
                               config: EnrichmentConfig, reviewed: dict[str, Any]) -> None:
    stats = collect(engine)
    cover = stats["review_coverage"]
    n = 4 + len(reviewed["pc"])
    assert (cover["reviewed"], cover["approved"], cover["rejected"], cover["needs_revision"],
            cover["seed_examples"], cover["stale"]) == (n, 1 + len(reviewed["pc"]), 2, 1, 1, 0)
    assert cover["assistant_pairs"] == stats["assistant_pairs"]
    assert cover["share_reviewed"] == round(n / stats["assistant_pairs"], 4)
    persona_of = {cid: (doc["input_parameters"] or {}).get("persona_key")
                  for cid, doc in reviewed["documents"].items()}
    by_persona = {e["persona"]: e for e in cover["by_persona"]}
    counts = ((reviewed["a"], 2), (reviewed["b"], 2), (reviewed["c"], len(reviewed["pc"])))
    for cid, count in counts:
        assert by_persona[persona_of[cid]]["reviewed"] >= count
    assert sum(e["reviewed"] for e in cover["by_arc"]) == n
    assert sum(e["assistant_pairs"] for e in cover["by_topic"]) == stats["assistant_pairs"]
    result = run_cli(db_url, "stats", "--json")
    data = json.loads(result.stdout)
    assert data["review_coverage"]["approved"] == cover["approved"]
    assert data["review_coverage"]["rejected"] == 2
    text_out = run_cli(db_url, "stats")
    assert f"review coverage: {n} of {stats['assistant_pairs']}" in text_out.stdout
    page = render(stats)
    assert "<h2>Review coverage</h2>" in page and "needs_revision" in page


def test_sheet_stratified_picks_the_export_sample(engine: Engine, db_url: str, tmp_path: Path,
                                                  config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    spec = SamplingSpec(stratify_by=("arc",), per_stratum=2, seed=7)
    # The sheet lists every enriched conversation, quality tier rejected included.
    run_export(engine, ExportOptions(format="brightrun-v4", output=tmp_path / "e.jsonl",
                                     sampling=spec,
                                     filters=DatasetFilters(include_rejected_tier=True)),
               consultant_profile=config.consultant_profile)
    exported = keys(read_jsonl(tmp_path / "e.jsonl"))
    paths = [tmp_path / "s1.csv", tmp_path / "s2.csv"]
    for path in paths:
        result = run_cli(db_url, "review", "sheet", "--output", str(path), "--select", "all",
                         "--stratify-by", "arc", "--per-stratum", "2", "--seed", "7")
        assert result.returncode == 0, result.stderr
        assert "strata by arc, seed 7" in result.stdout
    assert paths[0].read_bytes() == paths[1].read_bytes()  # same seed, same sheet
    with paths[0].open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["conversation_id"], int(r["turn_number"])) for r in rows} == exported
    other = run_cli(db_url, "review", "sheet", "--output", str(tmp_path / "s3.csv"),
                    "--select", "all", "--stratify-by", "arc", "--per-stratum", "2",
                    "--seed", "8")
    assert other.returncode == 0
    assert (tmp_path / "s3.csv").read_bytes() != paths[0].read_bytes()
