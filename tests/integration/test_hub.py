"""`reenrich export --hub DIR` on real PostgreSQL: a folder `datasets` loads offline with the
declared splits, features and rows; the card's YAML and prose; shards; the trainer findings."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from sqlalchemy import Engine, text

from tests.conftest import run_cli
from tests.dataset_helpers import enriched, read_jsonl
from worker.config import EnrichmentConfig
from worker.dataset.card import render_card
from worker.dataset.export_report import (
    ExportSummary,
    LengthStats,
    SamplingSummary,
    SplitSummary,
    Stratum,
)
from worker.enrichment.enrich import ENRICHMENT_VERSION

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
SPLIT = ["--stratify-by", "topic", "--split-validation", "0.25", "--seed", "2"]


def card_header(path: Path) -> dict[str, Any]:
    header: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8").split("---\n")[1])
    return header


def _hub(db_url: str, directory: Path, fmt: str, *extra: str) -> str:
    result = run_cli(db_url, "export", "--format", fmt, "--hub", str(directory), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_hub_folder_loads_offline_with_its_splits_features_and_the_jsonl_rows(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    datasets = pytest.importorskip("datasets")
    enriched(engine, tmp_path, config, count=40)
    hub, report_path = tmp_path / "hub", tmp_path / "report.json"
    _hub(db_url, hub, "chat", *SPLIT, "--condition", "system", "--license", "cc-by-4.0",
         "--name", "adapter-v3", "--report", str(report_path))
    jsonl = tmp_path / "jsonl"
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(jsonl / "t.jsonl"),
                     "--validation-output", str(jsonl / "v.jsonl"), *SPLIT,
                     "--condition", "system")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (hub / "data").iterdir()) == [
        "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    report = json.loads(report_path.read_text())
    loaded = datasets.load_dataset(str(hub), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"}
    header = card_header(hub / "README.md")
    declared = datasets.Features._from_yaml_list(header["dataset_info"]["features"])
    for split, path in (("train", jsonl / "t.jsonl"), ("validation", jsonl / "v.jsonl")):
        rows = read_jsonl(path)
        assert loaded[split].num_rows == len(rows) == report["splits"][split]["rows"] > 0
        assert loaded[split].features == declared
        assert loaded[split].to_list() == rows  # the same rows as the JSON Lines export
    assert str(loaded["train"].features["messages"]) == \
        "List({'role': Value('string'), 'content': Value('string')})"
    for shard in (hub / "data").iterdir():
        metadata = pq.ParquetFile(shard).metadata
        assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_card_yaml_keys_and_prose(engine: Engine, db_url: str, tmp_path: Path,
                                  config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    hub = tmp_path / "hub"
    _hub(db_url, hub, "prompt-completion", *SPLIT, "--name", "pc-v1")
    card = (hub / "README.md").read_text(encoding="utf-8")
    header = card_header(hub / "README.md")
    assert list(header) == ["configs", "dataset_info", "license", "language", "task_categories",
                            "tags", "size_categories", "pretty_name"]
    assert header["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "validation", "path": "data/validation-*.parquet"}]}]
    info = header["dataset_info"]
    assert [f["name"] for f in info["features"]] == [
        "prompt", "completion", "conversation_id", "persona_archetype", "emotional_arc_key",
        "training_topic_key", "quality_score", "quality_tier", "turn_number"]
    assert info["features"][0] == {"name": "prompt", "list": [
        {"name": "role", "dtype": "string"}, {"name": "content", "dtype": "string"}]}
    assert {f["name"]: f.get("dtype") for f in info["features"]}["quality_score"] == "float64"
    shards = {p.name: p for p in (hub / "data").iterdir()}
    for split in info["splits"]:
        shard = shards[f"{split['name']}-00000-of-00001.parquet"]
        assert split["num_examples"] == pq.ParquetFile(shard).metadata.num_rows
        assert split["num_bytes"] > 0
    assert info["download_size"] == sum(p.stat().st_size for p in shards.values())
    assert header["license"] == "other" and header["language"] == ["en"]
    assert header["task_categories"] == ["text-generation"]
    assert "format-prompt-completion" in header["tags"]
    assert header["size_categories"] == ["n<1K"] and header["pretty_name"] == "pc-v1"
    assert "Dataset version `pc-v1`:" in card
    assert f"contract version {ENRICHMENT_VERSION}" in card
    assert "Loss on the completion only" in card
    assert "--dataset_test_split validation" in card
    assert "left out unless the export keeps it (`--include-rejected-tier`)" in card
    # The card is one of the version's files; verify checks the folder (as a clone would be).
    verified = run_cli(db_url, "datasets", "verify", "pc-v1", str(hub))
    assert verified.returncode == 0, verified.stdout
    assert "3 of 3 files match" in verified.stdout


def test_shards_stay_under_the_shard_size_and_stale_shards_go(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    datasets = pytest.importorskip("datasets")
    enriched(engine, tmp_path, config, count=40)
    hub = tmp_path / "hub"
    limit_mb = 0.1
    stdout = _hub(db_url, hub, "prompt-completion", "--shard-size", str(limit_mb),
                  "--include-rejected-tier")
    shards = sorted((hub / "data").iterdir())
    assert len(shards) >= 3
    total = len(shards)
    assert [p.name for p in shards] == [f"train-{i:05d}-of-{total:05d}.parquet"
                                        for i in range(total)]
    assert all(p.stat().st_size <= limit_mb * (1 << 20) for p in shards)
    rows = int(re.search(r": (\d+) rows", stdout).group(1))  # type: ignore[union-attr]
    loaded = datasets.load_dataset(str(hub), split="train", cache_dir=str(tmp_path / "c"))
    assert loaded.num_rows == rows == sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    # Row groups are smaller than a shard: a reader can stream them.
    assert pq.ParquetFile(shards[0]).metadata.num_row_groups >= 1
    _hub(db_url, hub, "prompt-completion", "--include-rejected-tier")  # default 500 MB
    assert sorted(p.name for p in (hub / "data").iterdir()) == ["train-00000-of-00001.parquet"]


def _word_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))
    return path


def _words(row: dict[str, Any]) -> int:
    return sum(len(m["content"].split()) for m in row["prompt"] + row["completion"])


def test_drop_over_max_stats_card_and_sequence_length(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    pytest.importorskip("tokenizers")
    enriched(engine, tmp_path, config)
    tokenizer = _word_tokenizer(tmp_path / "tokenizer.json")
    data = tmp_path / "data"
    out, card, report_path = data / "pc.jsonl", data / "README.md", data / "report.json"
    full = run_cli(db_url, "export", "--format", "prompt-completion", "--output", str(out),
                   "--include-rejected-tier")
    assert full.returncode == 0
    lengths = sorted(_words(r) for r in read_jsonl(out))
    limit = lengths[len(lengths) // 2]
    result = run_cli(db_url, "export", "--format", "prompt-completion", "--output", str(out),
                     "--include-rejected-tier", "--tokenizer", str(tokenizer), "--max-tokens",
                     str(limit), "--drop-over-max", "--report", str(report_path),
                     "--card", str(card))
    assert result.returncode == 0, result.stderr
    kept = read_jsonl(out)
    dropped = len(lengths) - len(kept)
    assert dropped > 0
    report = json.loads(report_path.read_text())
    # Every length statistic describes the rows kept (chars and tokens alike).
    chars = sorted(sum(len(m["content"]) for m in r["prompt"] + r["completion"]) for r in kept)
    assert report["lengths"]["chars"]["total"]["max"] == chars[-1]
    assert report["lengths"]["chars"]["total"]["min"] == chars[0]
    assert report["lengths"]["tokens"]["total"]["max"] == max(_words(r) for r in kept)
    sequence = report["sequence_length"]
    p95 = report["lengths"]["tokens"]["total"]["p95"]
    assert sequence["p95_tokens"] == p95 and sequence["recommended"] % 256 == 0
    assert sequence["recommended"] >= p95 and sequence["covers_every_row"] >= sequence[
        "recommended"]
    assert f"sequence length: {sequence['recommended']} covers the p95 row" in result.stdout
    text_card = card.read_text(encoding="utf-8")
    assert "tokenizer `tokenizer.json`" in text_card
    assert f"Limit {limit} tokens: {dropped} rows over it, {dropped} of them dropped" \
        in text_card
    assert f"`max_length={sequence['recommended']}`" in text_card
    assert f"`sequence_len: {sequence['recommended']}`" in text_card


def test_refusals_card_away_from_data_and_hub_formats(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out, card = tmp_path / "data" / "train.jsonl", tmp_path / "cards" / "README.md"
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(out),
                     "--card", str(card))
    assert result.returncode == 2 and "cannot reach ../ paths" in result.stderr
    assert not out.exists() and not card.exists()
    hub = tmp_path / "hub"
    for args, message in (
            (["--format", "brightrun-v4", "--hub", str(hub)], "chat and prompt-completion"),
            (["--format", "chat", "--hub", str(hub), "--output", str(out)], "leave out"),
            (["--format", "chat", "--hub", str(hub), "--card", str(card)], "DIR/README.md"),
            (["--format", "chat", "--output", str(out), "--license", "mit"], "--hub DIR only"),
            (["--format", "chat", "--hub", str(hub), "--license", "a b"], "not a license id"),
            (["--format", "chat"], "--output PATH")):
        result = run_cli(db_url, "export", *args)
        assert result.returncode == 2, (args, result.stderr)  # usage errors, before any work
        assert message in result.stderr, (args, result.stderr)
    assert not hub.exists() and not out.exists()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dataset_versions")).scalar() == 0


def test_brightrun_meta_card_says_the_first_line_is_not_a_row(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out, card = tmp_path / "pairs.jsonl", tmp_path / "README.md"
    result = run_cli(db_url, "export", "--format", "brightrun-v4", "--meta", "--output",
                     str(out), "--card", str(card))
    assert result.returncode == 0, result.stderr
    assert "_meta" in read_jsonl(out)[0]
    assert "**The first line is a `_meta` line**" in card.read_text(encoding="utf-8")


def test_card_escapes_hostile_keys(engine: Engine, db_url: str, tmp_path: Path,
                                   config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    hostile = "<img src=x onerror=alert(1)>\n# Injected heading | `code` \\| [link](http://x)"
    with engine.begin() as conn:
        conn.execute(text(
            "UPDATE conversations SET enriched_json = jsonb_set(enriched_json, "
            "'{input_parameters,persona_key}', to_jsonb(CAST(:key AS text))) "
            "WHERE conversation_id = (SELECT conversation_id FROM conversations "
            "WHERE enriched_json -> 'input_parameters' ->> 'persona_key' IS NOT NULL "
            "ORDER BY conversation_id LIMIT 1)"), {"key": hostile})
    hub = tmp_path / "hub"
    _hub(db_url, hub, "chat", "--stratify-by", "persona", "--include-rejected-tier")
    card = (hub / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"(?<!\\)<", card.split("---\n", 2)[2])  # every < escaped
    assert "](http" not in card
    assert not any(line.startswith("# Injected") for line in card.splitlines())
    persona_table = card.split("### Persona")[1].split("###")[0]
    rows = [line for line in persona_table.splitlines() if line.startswith("| ")]
    # Every row has as many cells as the header: no pipe from the data opened a cell.
    cells = {len(re.split(r"(?<!\\)\|", line)) for line in rows}
    assert len(cells) == 1, rows
    assert "\\<img src\\=x onerror\\=alert\\(1\\)\\>" in persona_table


def test_render_card_escapes_every_data_value() -> None:
    hostile = "</table><script>x</script>\n## Pwned"
    split = SplitSummary(path="/d/train.jsonl", rows=1, conversations=1, pairs=1,
                         personas={hostile: 1}, emotional_arcs={"`a`": 1},
                         training_topics={"t\\|x": 1})
    report = ExportSummary(
        format="chat", strip_metadata=False, splits={"train": split},
        sampling=SamplingSummary(stratify_by=("persona",), per_stratum=None, balance=False,
                                 seed=0, split_validation=None),
        strata={hostile: Stratum(available=1, picked=1, shortfall=0)},
        filters={"persona": [hostile]}, removed={}, conversations_in_table=1,
        enrichment_versions={"1": 1}, condition="none",
        chars=LengthStats(None, None, None), tokens=None)
    card = render_card(report, Path("/d/README.md"))
    assert not re.search(r"(?<!\\)<", card.split("---\n", 2)[2])
    assert not any(line.startswith("## Pwned") for line in card.splitlines())
    assert "`a`" not in card.split("### Emotional arc")[1]
