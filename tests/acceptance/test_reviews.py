"""Human review (reviews.md): the commands, sheets, staleness, and what a review rewrites."""

from __future__ import annotations

import csv
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, text

from tests.conftest import run_cli
from tests.dataset_helpers import backfill, enriched, stored
from tests.helpers import import_records
from worker import synthetic
from worker.config import EnrichmentConfig
from worker.dataset.reviews import SHEET_COLUMNS
from worker.db import reviews as db_reviews
from worker.enrichment.models import content_sha256
from worker.enrichment.processing import Processor
from worker.jobs.backfill import BackfillOptions, run_backfill

HOSTILE = 'Good, but "too formal"; ok,\nsecond line\r\nthird — naïve café ✓ 日本語 =SUM(A1)'


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """As a spreadsheet saves it: every column, RFC 4180 quoting, CRLF rows."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SHEET_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def sheet(db_url: str, path: Path, *args: str) -> None:
    result = run_cli(db_url, "review", "sheet", "--output", str(path), *args)
    assert result.returncode == 0, result.stderr


def review_list(db_url: str, *args: str) -> list[dict[str, Any]]:
    result = run_cli(db_url, "review", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)
    return items


def pair_of(engine: Engine, cid: uuid.UUID, turn: int) -> dict[str, Any]:
    document = dict(stored(engine))[cid]
    return next(p for p in document["training_pairs"] if p["turn_number"] == turn)


def xmins(raw: psycopg.Connection[Any]) -> dict[uuid.UUID, str]:
    rows = raw.execute("SELECT conversation_id, xmin::text FROM conversations").fetchall()
    return dict(rows)


# ------------------------------------------------------------------ sheet + import


def test_csv_round_trip_keeps_hostile_notes_exactly(engine: Engine, db_url: str, tmp_path: Path,
                                                     config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=6)
    path = tmp_path / "sheet.csv"
    sheet(db_url, path)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # spreadsheets detect UTF-8
    rows = read_csv(path)
    assert rows and list(rows[0]) == list(SHEET_COLUMNS)
    assert all(r["status"] == "" and r["reviewer"] == "" for r in rows)
    # The sheet's texts are the stored pair's, and the hash binds them.
    first = rows[0]
    cid = uuid.UUID(first["conversation_id"])
    pair = pair_of(engine, cid, int(first["turn_number"]))
    assert first["target_response"] == pair["target_response"]
    assert first["content_sha256"] == content_sha256(pair["current_user_input"],
                                                     pair["target_response"])
    first.update(status="approved", reviewer="Ana Lima", notes=HOSTILE,
                 use_as_seed_example="TRUE", generate_variations_count="2")
    rows[1].update(status="Needs revision", reviewer="Bo", notes="")
    write_csv(path, rows)

    result = run_cli(db_url, "review", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert "2 review(s) recorded (0 stale)" in result.stdout
    assert f"{len(rows) - 2} row(s) without a status skipped" in result.stdout

    listed = {(r["conversation_id"], r["turn_number"]): r for r in review_list(db_url)}
    got = listed[(str(cid), int(first["turn_number"]))]
    assert got["notes"] == HOSTILE  # commas, quotes, CR/LF, non-ASCII: byte for byte
    assert (got["status"], got["reviewer"], got["stale"]) == ("approved", "Ana Lima", False)
    assert got["use_as_seed_example"] is True and got["generate_variations_count"] == 2
    assert listed[(rows[1]["conversation_id"], int(rows[1]["turn_number"]))]["status"] \
        == "needs_revision"
    # The next "unreviewed" sheet leaves the two reviewed pairs out.
    again = tmp_path / "again.csv"
    sheet(db_url, again)
    left = {(r["conversation_id"], r["turn_number"]) for r in read_csv(again)}
    assert left == {(r["conversation_id"], r["turn_number"]) for r in rows[2:]}
    # The import re-enriched the reviewed conversation: the pair carries the review.
    tm = pair_of(engine, cid, int(first["turn_number"]))["training_metadata"]
    assert tm["human_reviewed"] is True and tm["review_status"] == "approved"
    assert tm["reviewer_notes"] == HOSTILE  # CR and LF are not removed: not controls here
    assert tm["use_as_seed_example"] is True and tm["generate_variations_count"] == 2


def test_jsonl_sheet_round_trip(engine: Engine, db_url: str, tmp_path: Path,
                                config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=4)
    path = tmp_path / "sheet.jsonl"
    sheet(db_url, path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert list(rows[0]) == list(SHEET_COLUMNS) and rows[0]["status"] is None
    rows[0].update(status="rejected", reviewer="Ana", notes=HOSTILE, use_as_seed_example=False,
                   generate_variations_count=0)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    result = run_cli(db_url, "review", "import", str(path))
    assert result.returncode == 0, result.stderr
    (got,) = review_list(db_url)
    assert got["notes"] == HOSTILE and got["status"] == "rejected"


def test_bad_rows_reported_with_their_line_good_rows_recorded(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=6)
    path = tmp_path / "sheet.csv"
    sheet(db_url, path)
    rows = read_csv(path)[:6]
    rows[0].update(status="approved", reviewer="Ana", notes="multi\nline\nnote")  # lines 2-4
    rows[1].update(status="great", reviewer="Ana")  # line 5: unknown status
    rows[2].update(status="approved", reviewer="   ")  # line 6: blank reviewer
    rows[3].update(status="approved", reviewer="Ana", generate_variations_count="-1")  # 7
    rows[4].update(status="approved", reviewer="Ana", turn_number="99")  # 8: unknown pair
    rows[5].update(status="rejected", reviewer="Bo", use_as_seed_example="maybe")  # 9
    write_csv(path, rows)
    result = run_cli(db_url, "review", "import", str(path))
    assert result.returncode == 1
    assert "1 review(s) recorded" in result.stdout and "5 bad row(s)" in result.stdout
    lines = [line.strip() for line in result.stdout.splitlines() if line.startswith("  line")]
    assert [line.split(":")[0] for line in lines] == [
        "line 5", "line 6", "line 7", "line 8", "line 9"]
    assert "unknown status 'great'" in lines[0]
    assert "reviewer is blank" in lines[1]
    assert "generate_variations_count '-1'" in lines[2]
    assert "unknown pair" in lines[3] and "turn 99" in lines[3]
    assert "use_as_seed_example 'maybe'" in lines[4]
    (got,) = review_list(db_url)
    assert got["conversation_id"] == rows[0]["conversation_id"]
    assert got["notes"] == "multi\nline\nnote"


def test_wrong_hash_at_import_is_recorded_stale_and_reported(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=4)
    path = tmp_path / "sheet.csv"
    sheet(db_url, path)
    rows = read_csv(path)[:1]
    rows[0].update(status="approved", reviewer="Ana",
                   content_sha256=content_sha256("an older", "text"))
    write_csv(path, rows)
    result = run_cli(db_url, "review", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert "1 review(s) recorded (1 stale)" in result.stdout
    assert "line 2: stale" in result.stdout
    (got,) = review_list(db_url, "--stale")
    assert got["stale"] is True
    cid = uuid.UUID(rows[0]["conversation_id"])
    tm = pair_of(engine, cid, int(rows[0]["turn_number"]))["training_metadata"]
    assert tm["human_reviewed"] is False and tm["review_status"] is None  # never approves it


def test_text_change_makes_a_review_stale_nothing_deleted(
        engine: Engine, db_url: str, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=4)
    cid, _ = stored(engine)[0]
    turn = next(p["turn_number"] for p in pair_list(engine, cid) if p["target_response"])
    result = run_cli(db_url, "review", "set", str(cid), str(turn), "--status", "approved",
                     "--reviewer", "Ana", "--notes", "fine", "--seed-example",
                     "--variations", "3")
    assert result.returncode == 0, result.stderr
    assert pair_of(engine, cid, turn)["training_metadata"]["use_as_seed_example"] is True
    assert review_list(db_url, "--stale") == []
    # The generator rewrites the answer: the next enrichment drops the review from the pair.
    raw.execute("""UPDATE conversations SET parsed_json = jsonb_set(parsed_json,
                   ARRAY['turns', %s::text, 'content'],
                   to_jsonb((parsed_json #>> ARRAY['turns', %s::text, 'content']) || ' New.'))
                   WHERE conversation_id = %s""", (turn - 1, turn - 1, cid))
    backfill(engine, config)
    tm = pair_of(engine, cid, turn)["training_metadata"]
    assert (tm["human_reviewed"], tm["reviewer_notes"], tm["use_as_seed_example"],
            tm["generate_variations_count"], tm["review_status"]) == (False, None, False, 0, None)
    (got,) = review_list(db_url, "--stale")
    assert (got["conversation_id"], got["turn_number"], got["notes"]) == (str(cid), turn, "fine")
    stale_sheet = tmp_path / "stale.csv"
    sheet(db_url, stale_sheet, "--select", "stale")
    assert [(r["conversation_id"], int(r["turn_number"])) for r in read_csv(stale_sheet)] \
        == [(str(cid), turn)]


def pair_list(engine: Engine, cid: uuid.UUID) -> list[dict[str, Any]]:
    pairs: list[dict[str, Any]] = dict(stored(engine))[cid]["training_pairs"]
    return pairs


# ------------------------------------------------------------------ set + list


def test_set_list_filters_and_history(engine: Engine, db_url: str, tmp_path: Path,
                                      config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=4)
    (a, _), (b, _) = stored(engine)[:2]
    turn_a = next(p["turn_number"] for p in pair_list(engine, a) if p["target_response"])
    turn_b = next(p["turn_number"] for p in pair_list(engine, b) if p["target_response"])
    for args in ((a, turn_a, "rejected", "Ana"), (b, turn_b, "approved", "Bo"),
                 (a, turn_a, "needs_revision", "Cy")):
        result = run_cli(db_url, "review", "set", str(args[0]), str(args[1]), "--status",
                         args[2], "--reviewer", args[3])
        assert result.returncode == 0, result.stderr
        assert "re-enriched 1 reviewed conversation(s)" in result.stdout
    current = review_list(db_url)
    assert {(r["conversation_id"], r["status"], r["reviewer"]) for r in current} == {
        (str(a), "needs_revision", "Cy"), (str(b), "approved", "Bo")}
    for item in current:
        assert {"conversation_id", "turn_number", "status", "reviewer", "notes", "reviewed_at",
                "stale"} <= item.keys()
    assert [r["reviewer"] for r in review_list(db_url, "--status", "approved")] == ["Bo"]
    assert [r["status"] for r in review_list(db_url, "--reviewer", "Cy")] == ["needs_revision"]
    history = review_list(db_url, "--history", "--reviewer", "Ana")
    assert [(r["status"], r["current"]) for r in history] == [("rejected", False)]
    text_out = run_cli(db_url, "review", "list")
    assert text_out.returncode == 0 and "needs_revision" in text_out.stdout
    assert pair_of(engine, a, turn_a)["training_metadata"]["review_status"] == "needs_revision"


def test_set_refuses_what_it_cannot_record(engine: Engine, db_url: str, tmp_path: Path,
                                           config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=2)
    cid, document = stored(engine)[0]
    user_turn = next(p["turn_number"] for p in document["training_pairs"]
                     if p["target_response"] is None)
    result = run_cli(db_url, "review", "set", str(cid), str(user_turn), "--status", "approved",
                     "--reviewer", "Ana")
    assert result.returncode == 1
    assert "has no enriched assistant pair" in result.stderr
    blank = run_cli(db_url, "review", "set", str(cid), "2", "--status", "approved",
                    "--reviewer", " ")
    assert blank.returncode == 2 and "--reviewer is blank" in blank.stderr
    bad = run_cli(db_url, "review", "set", str(cid), "2", "--status", "fine", "--reviewer", "A")
    assert bad.returncode == 2
    assert review_list(db_url, "--history") == []


# ------------------------------------------------------------------ re-enrichment


def test_a_review_rewrites_exactly_its_conversations(
        engine: Engine, db_url: str, raw: psycopg.Connection[Any], tmp_path: Path,
        config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=10)
    before = xmins(raw)
    path = tmp_path / "sheet.csv"
    sheet(db_url, path)
    rows = read_csv(path)
    reviewed = sorted({rows[0]["conversation_id"], rows[-1]["conversation_id"]})
    for row in (rows[0], rows[-1]):
        row.update(status="approved", reviewer="Ana")
    write_csv(path, rows)
    result = run_cli(db_url, "review", "import", "--no-enrich", str(path))
    assert result.returncode == 0, result.stderr
    assert "re-enriched" not in result.stdout
    assert xmins(raw) == before  # recording a review writes no conversation
    # follow's trigger marked exactly the reviewed conversations
    marks = raw.execute("SELECT conversation_id::text, reason FROM enrichment_queue "
                        "WHERE reason = 'review' ORDER BY 1").fetchall()
    assert marks == [(cid, "review") for cid in reviewed]
    run = run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())
    assert (run.status, run.updated) == ("succeeded", 2)
    after = xmins(raw)
    changed = sorted(str(cid) for cid in after if after[cid] != before[cid])
    assert changed == reviewed
    # a second backfill has nothing to do
    again = run_backfill(engine, Processor(config), BackfillOptions(restart=False),
                         threading.Event())
    assert again.updated == 0


def test_version_one_rows_are_re_enriched(engine: Engine, tmp_path: Path,
                                          config: EnrichmentConfig, db_url: str) -> None:
    enriched(engine, tmp_path, config, count=5)
    with engine.begin() as conn:  # what a version-1 worker wrote: short ids, no review_status
        for cid, document in stored(engine):
            for pair in document["training_pairs"]:
                pair["id"] = pair["id"].removesuffix(str(cid)) + cid.hex[:8]
                del pair["training_metadata"]["review_status"]
            conn.execute(text(
                "UPDATE conversations SET enriched_json = CAST(:doc AS jsonb), "
                "enrichment_version = 1, enrichment_input_hash = 'v1', enriched_hash = 'v1' "
                "WHERE conversation_id = :id"), {"doc": json.dumps(document), "id": cid})
    status = run_cli(db_url, "status")
    assert "v1: 5" in status.stdout and "5 row(s) behind" in status.stdout
    run = run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())
    assert run.updated == 5
    status = run_cli(db_url, "status")
    assert "v2: 5" in status.stdout and "behind" not in status.stdout
    for cid, document in stored(engine):
        assert all(p["id"].endswith(f"_{cid}") and "review_status" in p["training_metadata"]
                   for p in document["training_pairs"])


def test_uuid7_conversations_get_unique_pair_ids(engine: Engine, db_url: str,
                                                 tmp_path: Path, config: EnrichmentConfig
                                                 ) -> None:
    from tests.unit.test_enrich import uuid7

    start = 1_764_500_000_000 // 65536 * 65536
    records = list(synthetic.conversation_records(5, seed=3, bare_share=0, legacy_share=0))
    for i, record in enumerate(records):
        record["conversation_id"] = str(uuid7(start + 1000 * i, 12345 + i))
    assert len({r["conversation_id"][:8] for r in records}) == 1
    import_records(engine, tmp_path, [*synthetic.scaffolding_records(), *records])
    backfill(engine, config)
    result = run_cli(db_url, "validate", "--json")
    assert "pair_id_not_unique" not in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout


def test_sql_hash_equals_the_python_hash(engine: Engine) -> None:
    samples = [("", "x"), ("naïve café ✓ 日本語", 'a "quoted",\nline'), ("tab\there", "\r\n"),
               ("emoji 🙂", "ß")]
    with engine.connect() as conn:
        for user_input, response in samples:
            got = conn.execute(text("SELECT review_content_sha256(:u, :r)"),
                               {"u": user_input, "r": response}).scalar_one()
            assert got == content_sha256(user_input, response)


def test_concurrent_recorders_of_one_pair_both_land(engine: Engine, tmp_path: Path,
                                                    config: EnrichmentConfig) -> None:
    from worker.dataset.reviews import ReviewInput, ReviewStatus

    enriched(engine, tmp_path, config, count=2)
    cid, document = stored(engine)[0]
    pair = next(p for p in document["training_pairs"] if p["target_response"])
    sha = content_sha256(pair["current_user_input"], pair["target_response"])

    def review(who: str) -> ReviewInput:
        return ReviewInput(0, cid, pair["turn_number"], ReviewStatus.APPROVED, who, None,
                           False, 0, sha)

    with engine.connect() as first, engine.connect() as second:
        first.begin()
        db_reviews.record(first, [review("A")], "test")
        done = threading.Event()

        def other() -> None:
            with second.begin():
                db_reviews.record(second, [review("B")], "test")
            done.set()

        thread = threading.Thread(target=other)
        thread.start()
        assert not done.wait(0.5)  # waits for the first recorder
        first.commit()
        thread.join(10)
        assert done.is_set()
    with engine.connect() as conn:
        items = db_reviews.list_reviews(conn, history=True)
    assert [(r.reviewer, r.superseded_at is None) for r in items] == [("A", False), ("B", True)]


def test_a_pair_named_twice_in_one_sheet_keeps_the_later_row(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    enriched(engine, tmp_path, config, count=2)
    path = tmp_path / "sheet.jsonl"
    sheet(db_url, path)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    rows = [{**first, "status": "rejected", "reviewer": "Ana"},
            {**first, "status": "approved", "reviewer": "Bo"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run_cli(db_url, "review", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert [(r["status"], r["current"]) for r in review_list(db_url, "--history")] == [
        ("rejected", False), ("approved", True)]
