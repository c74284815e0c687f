"""What a command is given besides its flags: the settings, and a database made on first use.

Its own module so that command modules can name `Context` without importing
`app` (which imports every command module).
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

import structlog

from worker.errors import ReenrichError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from worker.config import Settings
    from worker.db.repository import Limits

log = structlog.get_logger("reenrich.cli")


class CommandError(ReenrichError):
    """A command cannot go on; the message says what to do. Exit status 1."""


class Context:
    """What a command needs, made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        from worker.db import engine as db_engine

        if self._url is None:
            self._url = db_engine.database_url(self.settings)
        return self._url

    @property
    def embedded(self) -> bool:
        return not self.settings.database_url

    def url_for_errors(self) -> str | None:
        """The URL a failed connection went to, without starting anything."""
        from worker.db import engine as db_engine

        if self._url is not None:
            return self._url
        try:
            return db_engine.normalize_url(self.settings.database_url) \
                if self.settings.database_url else None
        except ReenrichError:
            return None

    def database(self) -> str:
        """Which database this is, for messages (never a password)."""
        from worker.db import engine as db_engine

        if self.embedded:
            return f"the embedded database in {self.settings.data_dir.resolve()}"
        where = db_engine.target(self.url_for_errors())
        return f"DATABASE_URL ({where.where()})" if where else "DATABASE_URL"

    def engine(self, *, migrated: bool = True) -> Engine:
        from worker.db import engine as db_engine

        if self._engine is None:
            self._engine = db_engine.make_engine(self.url)
            if migrated:
                self.check_schema(self._engine)
        return self._engine

    def check_schema(self, engine: Engine) -> None:
        """The schema is at head: the embedded database is migrated, any other refused."""
        from worker.db import migrate as db_migrate

        head = db_migrate.SCHEMA_HEAD
        with engine.connect() as conn:
            current = db_migrate.current_revision(conn)
        if current == head:
            return
        if self.embedded:
            # The embedded database is ours: bring it up to date without asking.
            log.info("migrate.embedded", current=current, head=head)
            db_migrate.upgrade(self.url)
            return
        raise CommandError(f"the database schema is at {current or 'nothing'}, reenrich needs "
                           f"{head}: run `reenrich migrate` first")

    def write_limits(self) -> Limits:
        """The lock and statement timeouts of a writing transaction (backfill, follow)."""
        from worker.db.repository import Limits

        return Limits(lock_timeout_ms=self.settings.lock_timeout_ms,
                      statement_timeout_ms=self.settings.statement_timeout_ms)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set `stop`: a long command finishes its page or batch, then returns."""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            return
        log.warning("signal.received", signal=signal.Signals(signum).name,
                    message="finishing the current page, then stopping")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
