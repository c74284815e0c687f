"""`reenrich export --workers N` on real PostgreSQL: key-range slices rendered by N processes
give the files, report and dataset version of one worker; a failing slice leaves nothing."""

from __future__ import annotations

import copy
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, text

from tests.conftest import run_cli
from tests.dataset_helpers import enriched, read_jsonl, stored
from worker.config import EnrichmentConfig
from worker.dataset.export import ExportOptions, ExportUsageError, run_export
from worker.dataset.export_slices import ExportSliceError, cut
from worker.dataset.sampling import SamplingSpec
from worker.db.dataset import DatasetFilters

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# A filter and a stratified sample with a validation split: the selection decides, the
# slices only render.
FILTERS = DatasetFilters(require_scaffolding=True, include_rejected_tier=True)
SAMPLING = SamplingSpec(stratify_by=("topic",), per_stratum=5, seed=4, validation_fraction=0.3)
SUFFIX = {"chat": "jsonl", "prompt-completion": "jsonl", "brightrun-v4": "jsonl",
          "full-json": "json"}
FORMAT_OPTIONS: dict[str, dict[str, Any]] = {
    "chat": {"condition": "system"}, "prompt-completion": {}, "brightrun-v4": {"meta": True},
    "full-json": {"target_model": "m"}}


def _word_tokenizer(path: Path) -> Path:
    """A local tokenizer.json that counts words (one token per whitespace-split word)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))
    return path


def _export(engine: Engine, config: EnrichmentConfig, out: Path, fmt: str, workers: int,
            **kwargs: Any) -> dict[str, Any]:
    suffix = SUFFIX[fmt]
    options = ExportOptions(format=fmt, output=out / f"train.{suffix}",
                            validation_output=out / f"validation.{suffix}", filters=FILTERS,
                            sampling=SAMPLING, workers=workers, **kwargs)
    return run_export(engine, options, consultant_profile=config.consultant_profile,
                      name=f"{fmt}-{out.name}").as_dict()


def _hub(engine: Engine, config: EnrichmentConfig, directory: Path, workers: int,
         **kwargs: Any) -> dict[str, Any]:
    options = ExportOptions(format="chat", output=None, hub=directory, filters=FILTERS,
                            sampling=SAMPLING, workers=workers, **kwargs)
    return run_export(engine, options, consultant_profile=config.consultant_profile,
                      name=f"hub-{directory.name}").as_dict()


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what names the files (paths, the version's name, the shards)."""
    out = copy.deepcopy(report)
    del out["dataset_version"]
    for split in out["splits"].values():
        del split["path"]
    if out.get("hub"):
        del out["hub"]["directory"]
        for split in out["hub"]["splits"].values():
            del split["shards"], split["download_size"]
        del out["hub"]["download_size"]
    return out


def _version(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        version = conn.execute(text(
            "SELECT version_id, format, contract_version, options FROM dataset_versions "
            "WHERE name = :name"), {"name": name}).one()
        members = [tuple(r) for r in conn.execute(text(
            "SELECT conversation_id, split, enriched_hash FROM dataset_version_members "
            "WHERE version_id = :v ORDER BY conversation_id"), {"v": version.version_id})]
        splits = [tuple(r) for r in conn.execute(text(
            "SELECT split, rows, conversations, pairs FROM dataset_version_splits "
            "WHERE version_id = :v ORDER BY split"), {"v": version.version_id})]
        files = [tuple(r) for r in conn.execute(text(
            "SELECT name, split, size_bytes, sha256 FROM dataset_version_files "
            "WHERE version_id = :v ORDER BY name"), {"v": version.version_id})]
    options = {k: v for k, v in version.options.items()
               if k not in ("output", "validation_output", "hub", "workers")}
    return {"format": version.format, "contract_version": version.contract_version,
            "options": options, "members": members, "splits": splits, "files": files}


def _without_export_time(raw: bytes) -> bytes:
    """full-json's metadata holds the export time (to the second): the one varying part."""
    return re.sub(rb'"(created_date|last_updated)":"[^"]*"', rb'"\1":"T"', raw, count=2)


def test_cut_gives_contiguous_slices_of_even_size() -> None:
    ids = [uuid.UUID(int=i) for i in range(10)]
    slices = cut(ids, 3)
    assert [len(s) for s in slices] == [4, 3, 3]
    assert [cid for s in slices for cid in s] == ids
    assert cut(ids[:2], 4) == [ids[:1], ids[1:2]] and cut([], 3) == []


@pytest.mark.parametrize("fmt", ["chat", "prompt-completion", "brightrun-v4", "full-json"])
def test_jsonl_files_report_and_version_are_those_of_one_worker(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig, fmt: str) -> None:
    enriched(engine, tmp_path, config, count=30)
    extra = dict(FORMAT_OPTIONS[fmt])
    if fmt == "prompt-completion":  # token lengths, and rows dropped over --max-tokens
        pytest.importorskip("tokenizers")
        extra.update(tokenizer=_word_tokenizer(tmp_path / "tokenizer.json"), max_tokens=700,
                     drop_over_max=True)
    reports = {n: _export(engine, config, tmp_path / f"w{n}", fmt, n, **extra)
               for n in (1, 2, 3)}
    one = reports[1]
    assert one["splits"]["train"]["rows"] > 3 and one["splits"]["validation"]["rows"] > 0
    assert one["removed"]["missing_scaffolding"] and one["removed"]["not_sampled"]
    if fmt == "prompt-completion":
        assert one["rows_dropped_over_max_tokens"] > 0 and one["lengths"]["tokens"]
    for n in (2, 3):
        for split in ("train", "validation"):
            name = f"{split}.{SUFFIX[fmt]}"
            expected, got = ((tmp_path / f"w{k}" / name).read_bytes() for k in (1, n))
            if fmt == "full-json":
                expected, got = _without_export_time(expected), _without_export_time(got)
            assert got == expected, (n, split)
        assert _comparable(reports[n]) == _comparable(one)
        version = _version(engine, f"{fmt}-w{n}")
        expected_version = _version(engine, f"{fmt}-w1")
        if fmt == "full-json":  # the export time makes other bytes, other hashes
            version["files"] = [f[:2] for f in version["files"]]
            expected_version["files"] = [f[:2] for f in expected_version["files"]]
        assert version == expected_version
        leftovers = [p.name for p in (tmp_path / f"w{n}").iterdir() if p.name.startswith(".")]
        assert leftovers == []


def test_hub_shards_load_with_datasets_and_hold_the_rows_of_one_worker(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    datasets = pytest.importorskip("datasets")
    enriched(engine, tmp_path, config, count=30)
    one = _hub(engine, config, tmp_path / "w1", 1)
    three = _hub(engine, config, tmp_path / "w3", 3)
    small = _hub(engine, config, tmp_path / "small", 2, shard_size_mb=0.01)
    assert sorted(p.name for p in (tmp_path / "w3" / "data").iterdir()) == [
        *(f"train-0000{k}-of-00003.parquet" for k in range(3)),
        *(f"validation-0000{k}-of-00003.parquet" for k in range(3))]
    shards = sorted(p.name for p in (tmp_path / "small" / "data").glob("train-*"))
    assert len(shards) > 2 and shards == [f"train-{k:05d}-of-{len(shards):05d}.parquet"
                                          for k in range(len(shards))]
    expected = datasets.load_dataset(str(tmp_path / "w1"), cache_dir=str(tmp_path / "cache"))
    for name in ("w3", "small"):
        loaded = datasets.load_dataset(str(tmp_path / name), cache_dir=str(tmp_path / "cache"))
        for split in ("train", "validation"):
            assert loaded[split].to_list() == expected[split].to_list()
            assert loaded[split].features == expected[split].features
        glob = str(tmp_path / name / "data" / "train-*.parquet")
        plain = datasets.load_dataset("parquet", data_files={"train": glob},
                                      cache_dir=str(tmp_path / "cache"))
        assert plain["train"].to_list() == expected["train"].to_list()
    assert expected["train"].num_rows == one["splits"]["train"]["rows"] > 3
    for report, name in ((three, "w3"), (small, "small")):
        assert _comparable(report) == _comparable(one)
        version, expected_version = _version(engine, f"hub-{name}"), _version(engine, "hub-w1")
        assert version["members"] == expected_version["members"]
        assert version["splits"] == expected_version["splits"]
        assert {k: v for k, v in version["options"].items() if k != "shard_size_mb"} == \
            {k: v for k, v in expected_version["options"].items() if k != "shard_size_mb"}
        on_disk = sorted(p.relative_to(tmp_path / name).as_posix()
                         for p in (tmp_path / name).rglob("*") if p.is_file())
        assert [f[0] for f in version["files"]] == on_disk  # every shard, and the card
        listed = [s for split in report["hub"]["splits"].values() for s in split["shards"]]
        assert sorted(f"data/{s}" for s in listed) == [n for n in on_disk if n != "README.md"]
        card = (tmp_path / name / "README.md").read_text(encoding="utf-8")
        assert "data/train-*.parquet" in card
        rows = sum(pq.ParquetFile(tmp_path / name / p).metadata.num_rows
                   for p in on_disk if p.startswith("data/train-"))
        assert rows == one["splits"]["train"]["rows"]


def _set_in_last(engine: Engine, path: str, value: str) -> str:
    """Set `path` of the last conversation's document (in export order) to `value` (JSON);
    the value it had, as JSON."""
    last = stored(engine)[-1][0]
    with engine.begin() as conn:
        before: str = conn.execute(text(
            "SELECT CAST(enriched_json #> CAST(:path AS text[]) AS text) FROM conversations "
            "WHERE conversation_id = :id"), {"path": path, "id": last}).scalar_one()
        conn.execute(text(
            "UPDATE conversations SET enriched_json = jsonb_set(enriched_json, "
            "CAST(:path AS text[]), CAST(:value AS jsonb)) WHERE conversation_id = :id"),
            {"path": path, "value": value, "id": last})
    return before


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_a_failing_slice_fails_the_export_and_leaves_nothing(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    every = DatasetFilters(include_rejected_tier=True)
    output, hub_dir = tmp_path / "out" / "chat.jsonl", tmp_path / "hub"
    options = ExportOptions(format="chat", output=output, filters=every, workers=3)
    run_export(engine, options, consultant_profile=config.consultant_profile, name="before")
    run_export(engine, ExportOptions(format="chat", output=None, hub=hub_dir, filters=every),
               consultant_profile=config.consultant_profile, name="hub-before")
    before = output.read_bytes()
    hub_before = {p.name: p.read_bytes() for p in hub_dir.rglob("*") if p.is_file()}

    # A number where an assistant turn's text belongs: rendering raises in the last slice.
    turn = "{training_pairs,1,target_response}"
    text_before = _set_in_last(engine, turn, "42")
    with pytest.raises(ExportSliceError) as raised:
        run_export(engine, options, consultant_profile=config.consultant_profile, name="x1")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("export slice 3 of 3 (")
    assert "AttributeError" in message and "nothing was written" in message
    assert output.read_bytes() == before
    assert _no_leftovers(tmp_path / "out") == []
    _set_in_last(engine, turn, text_before)

    # A score Parquet cannot store as a float: the Parquet write fails in the last slice.
    _set_in_last(engine, "{training_pairs,0,training_metadata,quality_score}", '"high"')
    result = run_cli(db_url, "export", "--format", "chat", "--hub", str(hub_dir),
                     "--workers", "3", "--include-rejected-tier", "--name", "x2")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "export slice" in line]
    assert len(errors) == 1 and "export slice 3 of 3" in errors[0], result.stderr
    assert {p.name: p.read_bytes() for p in hub_dir.rglob("*") if p.is_file()} == hub_before
    assert _no_leftovers(hub_dir) == []
    with engine.connect() as conn:
        names = set(conn.execute(text("SELECT name FROM dataset_versions")).scalars())
    assert names == {"before", "hub-before"}


def test_workers_flag_usage_cli_and_from_version(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    for value in ("0", "-1", "two"):
        result = run_cli(db_url, "export", "--format", "chat", "--output",
                         str(tmp_path / "x.jsonl"), "--workers", value)
        assert result.returncode == 2 and "--workers" in result.stderr, result.stderr
    with pytest.raises(ExportUsageError, match="--workers"):
        ExportOptions(format="chat", output=tmp_path / "x.jsonl", workers=0).check()
    assert not (tmp_path / "x.jsonl").exists()
    enriched(engine, tmp_path, config, count=12)
    one, two, again = (tmp_path / n / "chat.jsonl" for n in ("one", "two", "again"))
    for path, workers, name in ((one, "1", "v-one"), (two, "2", "v-two")):
        result = run_cli(db_url, "export", "--format", "chat", "--output", str(path),
                         "--include-rejected-tier", "--workers", workers, "--name", name)
        assert result.returncode == 0, result.stderr
    assert two.read_bytes() == one.read_bytes() and read_jsonl(one)
    result = run_cli(db_url, "export", "--from-version", "v-one", "--output", str(again),
                     "--workers", "2", "--name", "v-again")
    assert result.returncode == 0, result.stderr
    assert again.read_bytes() == one.read_bytes()
    shown = json.loads(run_cli(db_url, "datasets", "show", "v-two", "--json").stdout)
    assert shown["options"]["workers"] == 2
    assert _version(engine, "v-again")["members"] == _version(engine, "v-one")["members"]
