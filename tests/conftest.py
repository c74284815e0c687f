"""Test fixtures: one real PostgreSQL per session, one database per test.

The server is the embedded one (a fresh data directory per session) unless
DATABASE_URL is set. Migrations run once into a template database; each
test gets `CREATE DATABASE ... TEMPLATE` of it, which takes milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from worker.config import EnrichmentConfig, load_enrichment_config
from worker.db import migrate
from worker.db.engine import embedded_url, libpq_url, make_engine, normalize_url

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(url), autocommit=True)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    given = os.environ.get("DATABASE_URL")
    if given:
        return normalize_url(given)
    return embedded_url(tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    name = f"reenrich_template_{os.getpid()}"
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate.upgrade(_with_database(server_url, name))
    yield name
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _scratch_database(server_url: str, prefix: str, template: str | None) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    yield _with_database(server_url, name)
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A migrated database of this test's own, cloned from the template."""
    yield from _scratch_database(server_url, "reenrich_test", template_db)


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A database with no schema at all (migration tests)."""
    yield from _scratch_database(server_url, "reenrich_empty", None)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def raw(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit psycopg connection, for arranging and inspecting data."""
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def config() -> EnrichmentConfig:
    return load_enrichment_config()


def cli_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENRICH_")}
    env.update({"DATABASE_URL": db_url, "REENRICH_LOG_FORMAT": "json", **extra})
    return env


def run_cli(db_url: str, *args: str, timeout: float = 120, **env: str
            ) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a subprocess, logs on stderr, results on stdout."""
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT,
                          env=cli_env(db_url, **env), capture_output=True, text=True,
                          timeout=timeout, check=False)
