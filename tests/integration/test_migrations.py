"""Migrations go up and down cleanly, from code and from the `alembic` command."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg

from tests.conftest import ROOT, cli_env, run_cli
from worker.db import migrate
from worker.db.engine import libpq_url

TABLES = {"personas", "emotional_arcs", "training_topics", "prompt_templates", "conversations",
          "generation_logs", "backfill_runs", "backfill_slices", "enrichment_failures",
          "enrichment_queue", "follow_workers", "reviews"}


def _tables(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows} - {"alembic_version"}


def _compression(url: str) -> dict[str, Any]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("""SELECT attname, attcompression FROM pg_attribute
                               WHERE attrelid = 'conversations'::regclass
                                 AND attname IN ('enriched_json', 'parsed_json')""")
        return dict(rows.fetchall())


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    assert _tables(empty_db_url) >= TABLES
    migrate.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == set()
    migrate.upgrade(empty_db_url)
    assert _tables(empty_db_url) >= TABLES


def test_alembic_command_from_project_root(empty_db_url: str) -> None:
    alembic = [sys.executable, "-m", "alembic"]
    env = cli_env(empty_db_url)
    up = subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, capture_output=True,
                        text=True, check=False)
    assert up.returncode == 0, up.stderr
    assert _tables(empty_db_url) >= TABLES
    down = subprocess.run([*alembic, "downgrade", "base"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    assert down.returncode == 0, down.stderr
    assert _tables(empty_db_url) == set()


def test_reenrich_migrate_and_compression_choice(empty_db_url: str) -> None:
    result = run_cli(empty_db_url, "migrate")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(libpq_url(empty_db_url)) as conn:
        has_lz4 = conn.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                               "WHERE name = 'default_toast_compression'").fetchone()
    expected = "l" if has_lz4 and has_lz4[0] else "p"  # pg_attribute's codes
    assert _compression(empty_db_url) == {"enriched_json": expected, "parsed_json": expected}


def test_commands_refuse_an_unmigrated_server_database(empty_db_url: str) -> None:
    result = run_cli(empty_db_url, "status")
    assert result.returncode == 1
    assert "reenrich migrate" in result.stderr


def test_schema_head_constant_matches_alembic() -> None:
    assert migrate.alembic_head() == migrate.SCHEMA_HEAD
