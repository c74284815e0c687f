"""Alembic environment: one transaction per migration, serialized by an advisory lock."""

from __future__ import annotations

import logging
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, text

from worker.config import load_settings
from worker.db.engine import database_url, make_engine

# Any constant works; it only has to be the same for every deploy of reenrich.
MIGRATION_LOCK_KEY = 0x5EE1C400


def _run(connection: Connection) -> None:
    # Two deploys migrating at once would race; the second waits for the first.
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    connection.execute(text("SET lock_timeout = '10s'"))
    try:
        context.configure(connection=connection, target_metadata=None,
                          transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        # The session may have an open transaction after the last migration.
        connection.commit()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
        connection.commit()


def run_migrations_online() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = context.config.attributes.get("url") or database_url(load_settings())
    engine = make_engine(url, application_name="reenrich-migrate")
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


# Run by the `alembic` command (alembic.ini): its [loggers] put Alembic's lines on stderr.
# Run by `reenrich migrate` there is no file and reenrich's own logging is in place.
if context.config.config_file_name is not None and not logging.getLogger().handlers:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    raise SystemExit("reenrich migrations run online only: set DATABASE_URL or use the embedded database")
run_migrations_online()
