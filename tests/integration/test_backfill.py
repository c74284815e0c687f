"""The backfill on real PostgreSQL: idempotence, checkpoints, failures, resume, refusal."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from sqlalchemy import Engine, event, text

from tests.conftest import ROOT, cli_env, run_cli
from tests.helpers import import_records, seed
from worker.config import EnrichmentConfig
from worker.db import repository
from worker.db.repository import Filters
from worker.enrichment.enrich import enrich
from worker.enrichment.processing import Processor
from worker.jobs.backfill import BackfillOptions, BackfillResult, run_backfill


def backfill(engine: Engine, config: EnrichmentConfig, **options: Any) -> BackfillResult:
    return run_backfill(engine, Processor(config), BackfillOptions(**options), threading.Event())


def xmins(raw: psycopg.Connection[Any]) -> dict[str, str]:
    rows = raw.execute("SELECT conversation_id::text, xmin::text FROM conversations")
    return dict(rows.fetchall())


def good_parsed() -> dict[str, Any]:
    return {"conversation_metadata": {"client_persona": "Dana - The Saver",
                                      "session_context": "Morning call about savings",
                                      "conversation_phase": "opening",
                                      "expected_outcome": "A plan"},
            "turns": [{"turn_number": 1, "role": "user", "content": "I keep overspending.",
                       "emotional_context": {"primary_emotion": "shame", "intensity": 0.7}},
                      {"turn_number": 2, "role": "assistant",
                       "content": "That is common; let's look at it together.",
                       "emotional_context": {"primary_emotion": "calm", "intensity": 0.4}}]}


def conversation(cid: str, parsed: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "conversation", "conversation_id": cid, "parsed_json": parsed,
            "created_at": "2025-07-01T10:00:00Z", **extra}


HOSTILE: dict[str, Any] = {
    "wrong types": {"conversation_metadata": {"client_persona": 1, "session_context": [],
                                              "conversation_phase": {}}, "turns": "many"},
    "missing fields": {"turns": []},
    "system role": "system",
    "intensity high": "high",
    "intensity 7": 7,
    "string document": "I am not JSON",
    "array document": [1, 2, 3],
    "control characters": "ctrl",
}


def hostile_records() -> list[dict[str, Any]]:
    records = []
    for i, (name, value) in enumerate(HOSTILE.items()):
        cid = f"00000000-0000-4000-8000-{i:012d}"
        parsed: Any = value
        if value == "system":
            parsed = good_parsed()
            parsed["turns"][1]["role"] = "system"
        elif value in ("high", 7):
            parsed = good_parsed()
            parsed["turns"][0]["emotional_context"]["intensity"] = value
        elif value == "ctrl":  # valid but dirty: enriched, with a warning
            parsed = good_parsed()
            parsed["turns"][0]["content"] = "I keep\x07 overspending\x1b."
        records.append(conversation(cid, parsed, name=name))
    return records


# ------------------------------------------------------------ idempotence


def test_second_run_writes_no_row(engine: Engine, tmp_path: Path, config: EnrichmentConfig,
                                  raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=40, extra=hostile_records())
    first = backfill(engine, config, batch_size=9)
    assert (first.processed, first.failed) == (48, 7)
    assert first.updated == 41 and first.exit_code == 3
    before = xmins(raw)
    failures_before = raw.execute("SELECT conversation_id, attempts FROM enrichment_failures "
                                  "ORDER BY 1").fetchall()
    second = backfill(engine, config, batch_size=9)
    assert (second.processed, second.updated, second.unchanged, second.failed) == (48, 0, 41, 7)
    assert xmins(raw) == before  # not one conversation row rewritten, failed ones included
    after = raw.execute("SELECT conversation_id, attempts FROM enrichment_failures "
                        "ORDER BY 1").fetchall()
    assert [a for _, a in after] == [a + 1 for _, a in failures_before]


def test_persona_rename_rewrites_exactly_its_rows(engine: Engine, tmp_path: Path,
                                                  config: EnrichmentConfig,
                                                  raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=60)
    backfill(engine, config)
    before = xmins(raw)
    raw.execute("UPDATE personas SET name = 'Dave Chen' WHERE persona_key = 'pragmatic_optimist'")
    users = {r[0] for r in raw.execute(
        "SELECT c.conversation_id::text FROM conversations c JOIN personas p "
        "ON p.id = c.persona_id WHERE p.persona_key = 'pragmatic_optimist'")}
    assert users
    result = backfill(engine, config)
    assert result.updated == len(users)
    after = xmins(raw)
    assert {cid for cid in after if after[cid] != before[cid]} == users
    names = raw.execute(
        "SELECT DISTINCT enriched_json->'input_parameters'->>'persona_name' FROM conversations c "
        "JOIN personas p ON p.id = c.persona_id WHERE p.persona_key = 'pragmatic_optimist'")
    assert names.fetchall() == [("Dave Chen",)]


def test_new_generation_log_rewrites_only_that_row(engine: Engine, tmp_path: Path,
                                                   config: EnrichmentConfig,
                                                   raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=15)
    backfill(engine, config)
    cid = raw.execute("SELECT conversation_id FROM conversations LIMIT 1").fetchall()[0][0]
    before = xmins(raw)
    raw.execute("INSERT INTO generation_logs (conversation_id, system_prompt) VALUES (%s, %s)",
                (cid, "A newer prompt"))
    assert backfill(engine, config).updated == 1
    after = xmins(raw)
    assert [k for k in after if after[k] != before[k]] == [str(cid)]
    prompt = raw.execute("SELECT enriched_json->'training_pairs'->0->>'system_prompt' "
                         "FROM conversations WHERE conversation_id = %s", (cid,)).fetchone()
    assert prompt == ("A newer prompt",)


def test_documents_match_the_pure_function(engine: Engine, tmp_path: Path,
                                           config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=12)
    backfill(engine, config)
    with engine.connect() as conn:
        rows = repository.read_page(conn, after=None, upper=None, filters=Filters(), limit=100)
        stored: dict[Any, Any] = dict(conn.exec_driver_sql(
            "SELECT conversation_id, enriched_hash FROM conversations").fetchall())
    for row in rows:
        expected = orjson.dumps(enrich(row.inputs, config).document)
        assert stored[row.inputs.conversation_id] == hashlib.sha256(expected).hexdigest()


# --------------------------------------------------------------- failures


def test_hostile_documents_fail_while_the_rest_of_the_page_is_written(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig,
        raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=5, extra=hostile_records())
    result = backfill(engine, config, batch_size=500)  # everything in one page
    assert (result.processed, result.failed, result.updated) == (13, 7, 6)
    codes = dict(raw.execute("SELECT conversation_id::text, error_code FROM enrichment_failures"
                             ).fetchall())
    assert sorted(codes.values()) == ["invalid_intensity", "invalid_intensity", "invalid_role",
                                      "missing_conversation_metadata", "missing_metadata_field",
                                      "not_an_object", "not_an_object"]
    statuses = dict(raw.execute("SELECT enrichment_status, count(*) FROM conversations "
                                "GROUP BY 1").fetchall())
    assert statuses == {"enriched": 6, "failed": 7}
    dirty = raw.execute("SELECT validation_report, enriched_json::text FROM conversations "
                        "WHERE conversation_id = '00000000-0000-4000-8000-000000000007'"
                        ).fetchall()[0]
    assert [w["code"] for w in dirty[0]["warnings"]] == ["control_characters_removed"]
    assert "\\u0007" not in dirty[1] and "I keep overspending." in dirty[1]


def test_failed_row_keeps_last_good_document_and_is_resolved_later(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig,
        raw: psycopg.Connection[Any]) -> None:
    cid = "0a000000-0000-4000-8000-000000000001"
    import_records(engine, tmp_path, [conversation(cid, good_parsed())])
    backfill(engine, config)
    good = raw.execute("SELECT enriched_json, enriched_hash FROM conversations").fetchone()
    bad = good_parsed()
    bad["turns"][0]["emotional_context"]["intensity"] = "high"
    raw.execute("UPDATE conversations SET parsed_json = %s", (json.dumps(bad),))
    assert backfill(engine, config).failed == 1
    row = raw.execute("SELECT enriched_json, enriched_hash, enrichment_status, enrichment_error "
                      "FROM conversations").fetchall()[0]
    assert row[:2] == good and row[2] == "failed" and "intensity" in row[3]
    raw.execute("UPDATE conversations SET parsed_json = %s", (json.dumps(good_parsed()),))
    fixed = backfill(engine, config)
    assert (fixed.failed, fixed.updated) == (0, 1) and fixed.exit_code == 0
    assert raw.execute("SELECT enrichment_status, enrichment_error FROM conversations"
                       ).fetchone() == ("enriched", None)
    assert raw.execute("SELECT resolved_at IS NOT NULL FROM enrichment_failures").fetchall() == \
        [(True,)]


# ------------------------------------------------------------ checkpoints


def test_interrupted_run_resumes_and_counts_each_row_once(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig,
        raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=50)
    part = backfill(engine, config, run_name="r1", batch_size=8, max_pages=3)
    assert part.status == "interrupted" and part.processed == 24 and part.exit_code == 130
    run = raw.execute("SELECT status, processed, updated, total FROM backfill_runs").fetchone()
    assert run == ("interrupted", 24, 24, 50)
    rest = backfill(engine, config, run_name="r1", batch_size=8)
    assert rest.status == "succeeded"
    run = raw.execute("SELECT status, processed, updated, unchanged, failed FROM backfill_runs"
                      ).fetchone()
    assert run == ("succeeded", 50, 50, 0, 0)
    assert raw.execute("SELECT count(*) FROM conversations WHERE enrichment_status = 'enriched'"
                       ).fetchone() == (50,)


def test_resume_without_name_picks_the_unfinished_run(engine: Engine, tmp_path: Path,
                                                      config: EnrichmentConfig,
                                                      raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=20)
    first = backfill(engine, config, batch_size=5, max_pages=1)
    resumed = backfill(engine, config, batch_size=5)
    assert resumed.run_name == first.run_name and resumed.processed == 20
    again = backfill(engine, config)  # nothing unfinished: a new run, nothing to write
    assert again.run_name != first.run_name
    assert (again.processed, again.updated, again.unchanged) == (20, 0, 20)


def test_finished_run_does_nothing_unless_restarted(engine: Engine, tmp_path: Path,
                                                    config: EnrichmentConfig,
                                                    raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=10)
    backfill(engine, config, run_name="once")
    again = backfill(engine, config, run_name="once")
    assert again.processed == 0
    assert raw.execute("SELECT processed FROM backfill_runs").fetchone() == (10,)
    restarted = backfill(engine, config, run_name="once", restart=True)
    assert (restarted.processed, restarted.unchanged) == (10, 10)
    assert raw.execute("SELECT processed, unchanged FROM backfill_runs").fetchone() == (10, 10)


def test_dry_run_writes_nothing(engine: Engine, tmp_path: Path, config: EnrichmentConfig,
                                raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=10, extra=hostile_records()[:2])
    before = xmins(raw)
    result = backfill(engine, config, dry_run=True)
    assert (result.processed, result.updated, result.failed) == (12, 10, 2)
    assert xmins(raw) == before
    assert raw.execute("SELECT (SELECT count(*) FROM backfill_runs), "
                       "(SELECT count(*) FROM enrichment_failures)").fetchone() == (0, 0)


def test_filters_limit_the_run(engine: Engine, tmp_path: Path, config: EnrichmentConfig,
                               raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=40)
    expected = raw.execute("SELECT count(*) FROM conversations c JOIN emotional_arcs a "
                           "ON a.id = c.emotional_arc_id WHERE a.arc_key = 'fear_to_confidence'"
                           ).fetchall()[0][0]
    result = backfill(engine, config, filters=Filters(arc="fear_to_confidence"))
    assert result.processed == expected > 0
    assert raw.execute("SELECT total FROM backfill_runs").fetchone() == (expected,)


def test_one_query_reads_each_page(engine: Engine, tmp_path: Path, config: EnrichmentConfig,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seed(engine, tmp_path, count=30)
    reads: list[str] = []
    page_reads: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM conversations" in statement and statement.lstrip().startswith("SELECT"):
            reads.append(statement)

    # The page read runs on the driver (binary results), beside SQLAlchemy's
    # events: record it where it is sent, and still send it.
    send = repository._read

    def read(conn: Any, sql: str, params: dict[str, Any]) -> Any:
        page_reads.append(sql)
        return send(conn, sql, params)

    monkeypatch.setattr(repository, "_read", read)
    backfill(engine, config, batch_size=7)
    assert page_reads == [repository.PAGE_SQL] * 5  # 4 full pages of 7 + the short last one
    assert not any("personas" in s and "count(" not in s for s in reads)


# ----------------------------------------------- processes: kill and refuse


@pytest.fixture
def row_lock(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection that can hold a row lock to freeze a backfill in the middle of a page."""
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql")) as conn:
        yield conn


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _blocked_backends(raw: psycopg.Connection[Any]) -> int:
    return int(raw.execute("SELECT count(*) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND application_name = 'reenrich'"
                           " AND wait_event_type = 'Lock'").fetchall()[0][0])


def _start_backfill(db_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "worker", "backfill", *args], cwd=ROOT,
                            env=cli_env(db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_sigkill_mid_page_resumes_to_the_uninterrupted_state(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig,
        raw: psycopg.Connection[Any], row_lock: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=60)
    engine.dispose()  # its pooled connections would count as ours below
    ids = [r[0] for r in raw.execute("SELECT conversation_id FROM conversations ORDER BY 1")]
    # Lock a row of the third page: pages 1-2 commit, page 3 blocks inside its transaction.
    row_lock.execute("SELECT 1 FROM conversations WHERE conversation_id = %s FOR UPDATE",
                     (ids[24],))
    proc = _start_backfill(db_url, "--run", "killed", "--batch-size", "10")
    _wait_for(lambda: _blocked_backends(raw) == 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    row_lock.rollback()
    _wait_for(lambda: raw.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                  "current_database() AND application_name = 'reenrich'"
                                  ).fetchall()[0][0] == 0)
    run = raw.execute("SELECT status, processed, updated FROM backfill_runs").fetchone()
    assert run == ("running", 20, 20)  # exactly the two committed pages
    assert raw.execute("SELECT cursor FROM backfill_slices").fetchone() == (ids[19],)
    assert raw.execute("SELECT count(*) FROM conversations WHERE enriched_json IS NOT NULL"
                       ).fetchone() == (20,)

    resumed = run_cli(db_url, "backfill", "--run", "killed", "--batch-size", "10")
    assert resumed.returncode == 0, resumed.stderr
    assert raw.execute("SELECT status, processed, updated, unchanged, failed FROM backfill_runs"
                       ).fetchone() == ("succeeded", 60, 60, 0, 0)
    # The same final state as an uninterrupted run: nothing left to change.
    check = backfill(engine, config, dry_run=True)
    assert (check.processed, check.updated, check.failed) == (60, 0, 0)


def test_second_process_on_the_same_run_is_refused(
        engine: Engine, db_url: str, tmp_path: Path, raw: psycopg.Connection[Any],
        row_lock: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=30)
    first_id = raw.execute("SELECT min(conversation_id::text) FROM conversations").fetchall()[0][0]
    row_lock.execute("SELECT 1 FROM conversations WHERE conversation_id = %s FOR UPDATE",
                     (first_id,))
    holder = _start_backfill(db_url, "--run", "busy", "--batch-size", "10")
    try:
        _wait_for(lambda: _blocked_backends(raw) == 1)
        second = run_cli(db_url, "backfill", "--run", "busy")
        assert second.returncode == 4
        assert "being processed by" in second.stderr
    finally:
        row_lock.rollback()
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=60)
    assert holder.returncode in (0, 130)


def test_sigterm_finishes_the_page_and_marks_interrupted(
        engine: Engine, db_url: str, tmp_path: Path, raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=40)
    proc = _start_backfill(db_url, "--run", "term", "--batch-size", "5", "--sleep", "0.5")
    _wait_for(lambda: (raw.execute("SELECT coalesce(max(processed), 0) FROM backfill_runs"
                                   ).fetchall()[0][0]) >= 5)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    status, processed = raw.execute("SELECT status, processed FROM backfill_runs").fetchall()[0]
    assert status == "interrupted" and 5 <= processed < 40 and processed % 5 == 0
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "signal.received" in events and "backfill.interrupted" in events


# ------------------------------------------------------------------ seeing it


def test_status_failures_show_json(engine: Engine, db_url: str, tmp_path: Path,
                                   config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=6, extra=hostile_records()[:1])
    result = run_cli(db_url, "backfill", "--run", "seen")
    assert result.returncode == 3  # rows failed: the documented distinct status
    logs = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert all(entry.get("run") == "seen" for entry in logs if
               entry["event"].startswith("backfill."))
    # Every line names its logger, so reenrich's lines and a library's are told apart.
    assert all(entry.get("logger") for entry in logs)
    assert {entry["logger"] for entry in logs if entry["event"] == "backfill.page"} == \
        {"reenrich.backfill"}
    assert {"backfill.page", "backfill.row_failed", "backfill.finished",
            "backfill.scaffolding_added"} <= {entry["event"] for entry in logs}
    status = json.loads(run_cli(db_url, "status", "--json").stdout)
    assert status[0]["name"] == "seen"
    assert {k: status[0][k] for k in ("status", "processed", "updated", "unchanged", "failed",
                                      "total")} == \
        {"status": "finished_with_failures", "processed": 7, "updated": 6, "unchanged": 0,
         "failed": 1, "total": 7}
    failures = json.loads(run_cli(db_url, "failures", "--run", "seen", "--json").stdout)
    assert [(f["conversation_id"], f["error_code"]) for f in failures] == \
        [("00000000-0000-4000-8000-000000000000", "missing_metadata_field")]
    assert failures[0]["message"]
    with engine.connect() as conn:
        some = [str(r[0]) for r in conn.exec_driver_sql(
            "SELECT conversation_id FROM conversations WHERE enriched_json IS NOT NULL "
            "ORDER BY 1 LIMIT 2")]
    shown = run_cli(db_url, "show", *some)
    lines = shown.stdout.splitlines()
    assert shown.returncode == 0 and len(lines) == 2
    document = json.loads(lines[0])
    assert list(document) == ["input_parameters", "dataset_metadata", "consultant_profile",
                              "training_pairs"]
    assert list(document["training_pairs"][0])[:3] == ["id", "conversation_id", "turn_number"]
    assert len(run_cli(db_url, "show", "--all").stdout.splitlines()) == 6
    missing = run_cli(db_url, "show", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no conversation" in missing.stderr


def test_hostile_copy_does_not_leak_between_tests() -> None:
    # HOSTILE is shared module state: the records builder must not mutate it.
    before = copy.deepcopy(HOSTILE)
    hostile_records()
    assert before == HOSTILE


def test_cancelled_run_stops_after_its_page(engine: Engine, db_url: str, tmp_path: Path,
                                            raw: psycopg.Connection[Any]) -> None:
    seed(engine, tmp_path, count=120)
    proc = _start_backfill(db_url, "--run", "stopme", "--batch-size", "5", "--sleep", "0.3")
    _wait_for(lambda: (raw.execute("SELECT coalesce(max(processed), 0) FROM backfill_runs"
                                   ).fetchall()[0][0]) >= 5)
    cancel = run_cli(db_url, "cancel", "stopme")
    assert cancel.returncode == 0, cancel.stderr
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err  # cancelled: its own exit status, not success
    status, processed = raw.execute("SELECT status, processed FROM backfill_runs").fetchall()[0]
    assert status == "cancelled" and processed < 120
    assert "backfill.cancelled" in err
    again = run_cli(db_url, "backfill", "--run", "stopme")  # finished: nothing without --restart
    assert again.returncode == 0 and "already_finished" in again.stderr
    assert run_cli(db_url, "cancel", "stopme").returncode == 1


def test_documents_are_stored_with_the_columns_own_compression(
        engine: Engine, tmp_path: Path, config: EnrichmentConfig,
        raw: psycopg.Connection[Any]) -> None:
    # A staging table compressing with another method would leak it into the column.
    seed(engine, tmp_path, count=8)
    backfill(engine, config)
    setting = raw.execute("SELECT attcompression FROM pg_attribute WHERE attrelid = "
                          "'conversations'::regclass AND attname = 'enriched_json'").fetchall()[0]
    expected = {"l": "lz4", "p": "pglz"}[setting[0]]
    stored = raw.execute("SELECT DISTINCT pg_column_compression(enriched_json) "
                         "FROM conversations").fetchall()
    assert stored == [(expected,)]


def test_pages_are_never_prepared_statements(engine: Engine, tmp_path: Path) -> None:
    # A prepared page query turns generic after a few pages: its optional bounds
    # can then not use the key index, and every page sorts the rest of the table.
    seed(engine, tmp_path, count=30)
    with engine.connect() as conn:
        after = None
        for _ in range(15):
            rows = repository.read_page(conn, after=after, upper=None, filters=Filters(),
                                        limit=2)
            after = rows[-1].conversation_id
        prepared = conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()
    assert prepared == 0
