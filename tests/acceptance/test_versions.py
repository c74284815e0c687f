"""Dataset versions on real PostgreSQL: recorded per export, diffed, re-exported, verified;
the quality tier `rejected` default; options recorded generically."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import run_cli
from tests.dataset_helpers import backfill, enriched, read_jsonl
from tests.helpers import import_records
from worker import synthetic
from worker.config import EnrichmentConfig
from worker.dataset.export import ExportError, ExportOptions, run_export
from worker.dataset.sampling import SamplingSpec
from worker.dataset.versions import MemberPair, diff_members, from_json, to_json
from worker.db.dataset import DatasetFilters
from worker.enrichment.enrich import ENRICHMENT_VERSION

SAMPLE = ["--stratify-by", "persona", "--split-validation", "0.3", "--seed", "3",
          "--include-rejected-tier"]


def _export(db_url: str, name: str, out: Path, *extra: str, fmt: str = "chat") -> str:
    args = ["export", "--format", fmt, "--output", str(out / "train.jsonl"),
            "--validation-output", str(out / "validation.jsonl"), *SAMPLE, "--name", name,
            *extra]
    result = run_cli(db_url, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _ids(path: Path) -> set[str]:
    return {row["conversation_id"] for row in read_jsonl(path)}


def _members(engine: Engine, name: str) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT m.conversation_id, m.split, m.enriched_hash FROM dataset_version_members m "
            "JOIN dataset_versions v USING (version_id) WHERE v.name = :name"), {"name": name})
        return {str(r.conversation_id): (r.split, r.enriched_hash) for r in rows}


def _json(db_url: str, *args: str) -> Any:
    result = run_cli(db_url, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _rerun_backfill(engine: Engine, config: EnrichmentConfig) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM backfill_runs"))
    backfill(engine, config)


# ------------------------------------------------------------------ recording


def test_every_export_records_a_version_with_hashes_members_and_options(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out = tmp_path / "v1"
    stdout = _export(db_url, "adapter-v1", out, "--condition", "system")
    assert "dataset version: adapter-v1 (" in stdout
    train, validation = out / "train.jsonl", out / "validation.jsonl"
    shown = _json(db_url, "datasets", "show", "adapter-v1")
    files = {f["name"]: f for f in shown["files"]}
    assert set(files) == {"train.jsonl", "validation.jsonl"}
    for path in (train, validation):
        record = files[path.name]
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record["size_bytes"] == path.stat().st_size
        assert record["path"] == str(path.resolve())
    assert shown["contract_version"] == ENRICHMENT_VERSION and shown["format"] == "chat"
    assert shown["splits"] == {
        "train": {"rows": len(read_jsonl(train)), "conversations": len(_ids(train)),
                  "pairs": shown["splits"]["train"]["pairs"]},
        "validation": {"rows": len(read_jsonl(validation)),
                       "conversations": len(_ids(validation)),
                       "pairs": shown["splits"]["validation"]["pairs"]}}
    options = shown["options"]
    assert options["condition"] == "system" and options["sampling"]["seed"] == 3
    assert options["sampling"]["validation_fraction"] == 0.3
    assert options["filters"]["include_rejected_tier"] is True
    # Members: exactly the conversations of each file, with the hash of the stored document.
    members = _members(engine, "adapter-v1")
    assert {cid for cid, (split, _) in members.items() if split == "train"} == _ids(train)
    assert {cid for cid, (split, _) in members.items() if split == "validation"} \
        == _ids(validation)
    with engine.connect() as conn:
        stored = {str(r.conversation_id): r.enriched_hash for r in conn.execute(text(
            "SELECT conversation_id, enriched_hash FROM conversations"))}
    assert all(h == stored[cid] and h for cid, (_, h) in members.items())
    listed = _json(db_url, "datasets")
    assert [v["name"] for v in listed] == ["adapter-v1"]
    assert listed[0]["members"] == len(members)

    # Without --name a name is generated and printed; a taken name is refused up front.
    result = run_cli(db_url, "export", "--format", "prompt-completion", "--output",
                     str(tmp_path / "pc.jsonl"))
    assert result.returncode == 0, result.stderr
    generated = result.stdout.split("dataset version: ")[1].split(" ")[0]
    assert generated.startswith("prompt-completion-")
    again = tmp_path / "again"
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(again / "x.jsonl"),
                     "--name", "adapter-v1")
    assert result.returncode == 1 and "already exists" in result.stderr
    assert not again.exists()
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(again / "x.jsonl"),
                     "--name", "bad name/..")
    assert result.returncode == 2 and "--name" in result.stderr


# ------------------------------------------------------------------ diff


def test_diff_is_exact_after_rows_were_edited_added_and_removed(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    _export(db_url, "a", tmp_path / "a")
    a_train, a_val = _ids(tmp_path / "a" / "train.jsonl"), _ids(tmp_path / "a" / "validation.jsonl")
    in_a = a_train | a_val
    edited = sorted(in_a)[:3]
    removed = sorted(in_a)[3:5]
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversations SET quality_score = 4.95 "
                          "WHERE conversation_id = ANY(:ids)"),
                     {"ids": [uuid.UUID(c) for c in edited]})
        conn.execute(text("DELETE FROM conversations WHERE conversation_id = ANY(:ids)"),
                     {"ids": [uuid.UUID(c) for c in removed]})
    new = list(synthetic.conversation_records(6, seed=123))
    import_records(engine, tmp_path, new, name="new.jsonl")
    _rerun_backfill(engine, config)
    _export(db_url, "b", tmp_path / "b")
    b_train, b_val = _ids(tmp_path / "b" / "train.jsonl"), _ids(tmp_path / "b" / "validation.jsonl")
    in_b = b_train | b_val
    diff = _json(db_url, "datasets", "diff", "a", "b")
    got = {(split, change): set(ids) for split, per in diff["splits"].items()
           for change, ids in per.items()}

    def side(cid: str, train: set[str]) -> str:
        return "train" if cid in train else "validation"

    expected: dict[tuple[str, str], set[str]] = {}
    for cid in in_b - in_a:
        expected.setdefault((side(cid, b_train), "added"), set()).add(cid)
    for cid in in_a - in_b:
        expected.setdefault((side(cid, a_train), "removed"), set()).add(cid)
    for cid in in_a & in_b:
        if side(cid, a_train) != side(cid, b_train):
            expected.setdefault((side(cid, b_train), "moved"), set()).add(cid)
        if cid in edited:
            expected.setdefault((side(cid, b_train), "changed"), set()).add(cid)
    assert {k: v for k, v in got.items() if v} == expected
    assert {change for _, change in expected} >= {"added", "removed", "changed"}
    assert set(removed) <= {c for (_, change), ids in got.items() if change == "removed"
                            for c in ids}
    assert {c for (_, change), ids in got.items() if change == "changed" for c in ids} \
        == set(edited)
    assert {c for (_, change), ids in got.items() if change == "added"
            for c in ids} == {r["conversation_id"] for r in new} & in_b
    assert diff["unchanged"] == len(in_a & in_b) - len(
        {c for (_, change), ids in got.items() if change in ("moved", "changed") for c in ids})
    text_diff = run_cli(db_url, "datasets", "diff", "a", "b")
    assert text_diff.returncode == 0
    assert f"  changed {edited[0]}" in text_diff.stdout


def test_diff_members_classifies_each_case() -> None:
    ids = [uuid.UUID(int=i) for i in range(6)]
    pairs = [MemberPair(ids[0], "train", "train", "h", "h"),
             MemberPair(ids[1], None, "validation", None, "h"),
             MemberPair(ids[2], "validation", None, "h", None),
             MemberPair(ids[3], "train", "validation", "h", "h"),
             MemberPair(ids[4], "train", "train", "h", "h2"),
             MemberPair(ids[5], "validation", "train", "h", "h2")]
    diff = diff_members("a", "b", pairs).as_json()
    assert diff["unchanged"] == 1
    assert diff["splits"] == {
        "train": {"added": [], "removed": [], "moved": [str(ids[5])],
                  "changed": [str(ids[4]), str(ids[5])]},
        "validation": {"added": [str(ids[1])], "removed": [str(ids[2])],
                       "moved": [str(ids[3])], "changed": []}}


# ------------------------------------------------------------------ re-export, verify


def test_reexport_from_version_rebuilds_the_same_members(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    first = tmp_path / "v1"
    _export(db_url, "v1", first, "--per-stratum", "3", fmt="prompt-completion")
    # The table grows: a fresh sample would take some of the new conversations.
    import_records(engine, tmp_path, list(synthetic.conversation_records(30, seed=99)),
                   name="more.jsonl")
    backfill(engine, config)
    second = tmp_path / "v1-again"
    result = run_cli(db_url, "export", "--from-version", "v1", "--output",
                     str(second / "train.jsonl"), "--validation-output",
                     str(second / "validation.jsonl"), "--name", "v1-again")
    assert result.returncode == 0, result.stderr
    assert "0 changed since, 0 no longer exist" in result.stdout
    for name in ("train.jsonl", "validation.jsonl"):
        assert (second / name).read_bytes() == (first / name).read_bytes()
    assert _members(engine, "v1-again") == _members(engine, "v1")
    shown = _json(db_url, "datasets", "show", "v1-again")
    assert shown["from_version"] == "v1" and shown["format"] == "prompt-completion"
    fresh = run_cli(db_url, "export", "--format", "prompt-completion", "--output",
                    str(tmp_path / "fresh" / "t.jsonl"), "--validation-output",
                    str(tmp_path / "fresh" / "v.jsonl"), *SAMPLE, "--per-stratum", "3")
    assert fresh.returncode == 0
    fresh_ids = _ids(tmp_path / "fresh" / "t.jsonl") | _ids(tmp_path / "fresh" / "v.jsonl")
    assert fresh_ids != set(_members(engine, "v1"))  # the new rows do change a fresh sample

    # A member edited and one deleted: reported, and the rest is still rebuilt.
    members = sorted(_members(engine, "v1"))
    edited, gone = uuid.UUID(members[0]), uuid.UUID(members[1])
    with engine.begin() as conn:
        conn.execute(text("UPDATE conversations SET quality_score = 4.95 "
                          "WHERE conversation_id = :id"), {"id": edited})
        conn.execute(text("DELETE FROM conversations WHERE conversation_id = :id"),
                     {"id": gone})
    _rerun_backfill(engine, config)
    report_path = tmp_path / "r.json"
    third = tmp_path / "v1-third"
    result = run_cli(db_url, "export", "--from-version", "v1", "--output",
                     str(third / "train.jsonl"), "--validation-output",
                     str(third / "validation.jsonl"), "--report", str(report_path))
    assert result.returncode == 0, result.stderr
    assert "1 changed since, 1 no longer exist" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["from_version"]["changed"] == [str(edited)]
    assert report["from_version"]["missing"] == [str(gone)]
    assert report["removed"]["member_missing"] == 1
    assert _ids(third / "train.jsonl") | _ids(third / "validation.jsonl") \
        == set(members) - {str(gone)}

    # Options come from the version: a flag that would change them is refused.
    refused = run_cli(db_url, "export", "--from-version", "v1", "--output",
                      str(tmp_path / "x.jsonl"), "--validation-output", str(tmp_path / "y.jsonl"),
                      "--seed", "4", "--format", "chat")
    assert refused.returncode == 2  # a usage error
    assert "leave out --format, --seed" in refused.stderr
    missing_val = run_cli(db_url, "export", "--from-version", "v1", "--output",
                          str(tmp_path / "x.jsonl"))
    assert missing_val.returncode == 1 and "--validation-output" in missing_val.stderr
    unknown = run_cli(db_url, "export", "--from-version", "nope", "--output",
                      str(tmp_path / "x.jsonl"))
    assert unknown.returncode == 1 and "no dataset version named 'nope'" in unknown.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_verify_catches_an_altered_file(engine: Engine, db_url: str, tmp_path: Path,
                                        config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out = tmp_path / "v"
    _export(db_url, "v", out)
    ok = run_cli(db_url, "datasets", "verify", "v")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 of 2 files match" in ok.stdout
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert run_cli(db_url, "datasets", "verify", "v", str(copy)).returncode == 0
    validation = copy / "validation.jsonl"
    data = bytearray(validation.read_bytes())
    data[10] = ord("X") if data[10] != ord("X") else ord("Y")
    validation.write_bytes(bytes(data))
    bad = run_cli(db_url, "datasets", "verify", "v", str(copy))
    assert bad.returncode == 1
    assert "DIFFERS  validation.jsonl" in bad.stdout and "OK       train.jsonl" in bad.stdout
    result = run_cli(db_url, "datasets", "verify", "v", str(validation), "--json")
    assert result.returncode == 1
    verdict = json.loads(result.stdout)
    assert verdict["ok"] is False and verdict["files"][0]["outcome"] == "differs"
    (out / "train.jsonl").unlink()
    gone = run_cli(db_url, "datasets", "verify", "v")
    assert gone.returncode == 1 and "MISSING  train.jsonl" in gone.stdout
    stranger = run_cli(db_url, "datasets", "verify", "v", str(tmp_path / "other.jsonl"))
    assert stranger.returncode == 1 and "not one of the version's files" in stranger.stderr
    nothing = run_cli(db_url, "datasets", "show", "nope")
    assert nothing.returncode == 1 and "no dataset version named" in nothing.stderr


# ------------------------------------------------------------------ defaults and options


def test_quality_tier_rejected_is_left_out_unless_kept(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=30)
    with engine.connect() as conn:
        rejected = {str(r[0]) for r in conn.execute(text(
            "SELECT conversation_id FROM conversations "
            "WHERE enriched_json #>> '{dataset_metadata,quality_tier}' = 'rejected'"))}
    assert rejected
    out = tmp_path / "chat.jsonl"
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert not _ids(out) & rejected
    assert f"left out {len(rejected)} conversations of quality tier rejected (keep them with " \
           "--include-rejected-tier)" in result.stdout
    kept = run_cli(db_url, "export", "--format", "chat", "--output", str(out),
                   "--include-rejected-tier")
    assert kept.returncode == 0 and rejected <= _ids(out)
    asked = run_cli(db_url, "export", "--format", "chat", "--output", str(out),
                    "--tier", "rejected")
    assert asked.returncode == 0 and _ids(out) == rejected


def test_options_round_trip_through_json() -> None:
    options = ExportOptions(
        format="prompt-completion", output=Path("/tmp/a.jsonl"),
        validation_output=Path("/tmp/b.jsonl"),
        filters=DatasetFilters(personas=("p1", "p2"), tiers=("production",), min_quality=3,
                               since=datetime(2025, 1, 2, tzinfo=UTC),
                               include_rejected_tier=True),
        sampling=SamplingSpec(stratify_by=("persona", "arc"), per_stratum=4, seed=9,
                              validation_fraction=0.2),
        condition="system", tokenizer=Path("/tmp/tok.json"), max_tokens=100,
        drop_over_max=True)
    data = json.loads(json.dumps(to_json(options)))
    assert from_json(ExportOptions, data) == options
    # A version recorded before an option existed gets the option's default.
    del data["drop_over_max"], data["filters"]["include_rejected_tier"]
    older = from_json(ExportOptions, data)
    assert older.drop_over_max is False and older.filters.include_rejected_tier is False


def test_run_export_records_a_version_and_refuses_a_taken_name(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config)
    out = tmp_path / "f.json"
    report = run_export(engine, ExportOptions(format="full-json", output=out),
                        consultant_profile=config.consultant_profile, name="full").as_dict()
    assert report["dataset_version"]["name"] == "full"
    assert report["dataset_version"]["files"][0]["sha256"] == hashlib.sha256(
        out.read_bytes()).hexdigest()
    out.unlink()
    with pytest.raises(ExportError, match="already exists"):
        run_export(engine, ExportOptions(format="full-json", output=out),
                   consultant_profile=config.consultant_profile, name="full")
    assert not out.exists()
