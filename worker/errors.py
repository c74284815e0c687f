"""The project's one error base class.

Every error a user can cause or meet (bad input, bad flags, an unreachable
database, a run held by another process) is a `ReenrichError`: the CLI prints
its message as one line and exits with its `exit_code`; a traceback is shown
only at debug log level. Messages say what went wrong and what to do.

Driver errors (psycopg, SQLAlchemy) are turned into `DatabaseError` in one
place, `worker.db.engine.database_error`, which names host, port, database
and user, never the password.
"""

from __future__ import annotations

# The exit statuses of `reenrich` (the README's table).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_ROWS_FAILED = 3
EXIT_RUN_BUSY = 4
EXIT_CANCELLED = 5
EXIT_INTERRUPTED = 130


class ReenrichError(Exception):
    """Base of every error reenrich raises on purpose; the message is one line."""

    exit_code: int = EXIT_ERROR


class UsageError(ReenrichError):
    """A flag or argument is wrong; detected before any work is done."""

    exit_code = EXIT_USAGE


class ConfirmationRequired(UsageError):
    """A destructive command was not confirmed (`--yes`); nothing was changed."""


class DatabaseError(ReenrichError):
    """The database could not be reached or refused what was asked of it."""


class FileError(ReenrichError):
    """A file or folder named on the command line cannot be read or written."""
