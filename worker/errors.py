"""The project's one error base class.

Every error a user can cause or meet (bad input, bad flags, an unreachable
database, a run held by another process) is a `ReenrichError`: the CLI prints
its message as one line and exits with its `exit_code`; a traceback is shown
only at debug log level. Messages say what went wrong and what to do.
"""

from __future__ import annotations


class ReenrichError(Exception):
    """Base of every error reenrich raises on purpose; the message is one line."""

    exit_code: int = 1


class UsageError(ReenrichError):
    """A flag or argument is wrong; detected before any work is done."""

    exit_code = 2


class DatabaseError(ReenrichError):
    """The database could not be reached or refused what was asked of it."""
