"""What command modules share to declare their flags: argument types, flag groups, `add_command`.

A type raises `argparse.ArgumentTypeError`, so a wrong value is a usage error
(one line, exit 2) before any work. Everything here is cheap to import: every
command builds the whole parser, `--help` included.
"""

from __future__ import annotations

import argparse
import difflib
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, TypeAlias

from worker.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from worker.cli.context import Context

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command: TypeAlias = "Callable[[argparse.Namespace, Context], int]"

MAX_BATCH_SIZE = 100_000  # as REENRICH_BATCH_SIZE allows
KEY_LABELS = {"persona": "persona", "arc": "emotional arc", "topic": "training topic"}
LISTED_KEYS = 20


# ------------------------------------------------------------------ argument types


def parse_when(value: str, *, end: bool = False) -> datetime:
    """A date (whole day, UTC) or an ISO 8601 timestamp. `end` makes a date inclusive."""
    try:
        if len(value) == 10:
            day = datetime.combine(datetime.fromisoformat(value).date(), time(), tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD) or ISO 8601 timestamp") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_until(value: str) -> datetime:
    return parse_when(value, end=True)


def parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from exc


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_positive(value: str) -> float:
    number = _number(value)
    if number is None or not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number above 0")
    return number


def parse_non_negative(value: str) -> float:
    number = _number(value)
    if number is None or number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of at least 0")
    return number


def parse_fraction(value: str) -> float:
    number = _number(value)
    if number is None or not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a fraction between 0 and 1 "
                                         "(exclusive), e.g. 0.1")
    return number


def parse_quality(value: str) -> float:
    number = _number(value)
    if number is None or not 1 <= number <= 5:
        raise argparse.ArgumentTypeError(f"{value!r} is not a quality score from 1 to 5")
    return number


def parse_count(value: str, *, least: int = 1, most: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least or (most is not None and number > most):
        upper = f" and at most {most:,}" if most is not None else ""
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a whole number of at least {least}{upper}")
    return number


def parse_count_or_zero(value: str) -> int:
    return parse_count(value, least=0)


def parse_batch_size(value: str) -> int:
    return parse_count(value, most=MAX_BATCH_SIZE)


def parse_level(value: str) -> str:
    from worker.config import LOG_LEVELS  # pydantic: only when the flag is given

    if value.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a log level: use {', '.join(LOG_LEVELS).lower()}")
    return value.upper()


def parse_fields(value: str) -> tuple[str, ...]:
    """--stratify-by: persona, arc, topic or a comma list of them."""
    from worker.dataset.sampling import SamplingError, parse_stratify_by

    try:
        return parse_stratify_by(value)
    except SamplingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


# ------------------------------------------------------------------ commands and flags


def add_command(commands: Subparsers, name: str, func: Command | None, help_: str, *,
                description: str | None = None,
                checked_level: bool = True) -> argparse.ArgumentParser:
    """A subcommand (a `Parser`, as its parent) whose `func` runs it; --log-level works after it.

    `checked_level=False` (review's parsers, as they always were) leaves the level to
    the settings, which refuse a bad one with exit 1 instead of a usage error.
    """
    p = commands.add_parser(name, help=help_, description=description or help_)
    if func is not None:
        p.set_defaults(func=func)
    if checked_level:
        p.add_argument("--log-level", type=parse_level, default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    else:
        p.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def add_dates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=parse_when, metavar="DATE",
                   help="created at or after (YYYY-MM-DD or ISO 8601, UTC)")
    p.add_argument("--until", type=parse_until, metavar="DATE",
                   help="created up to and including this date (or before this timestamp)")


def add_filters(p: argparse.ArgumentParser) -> None:
    """backfill: one persona, arc or topic key, and a creation window."""
    p.add_argument("--persona", metavar="KEY", help="only conversations of this persona key")
    p.add_argument("--arc", metavar="KEY", help="only this emotional arc key")
    p.add_argument("--topic", metavar="KEY", help="only this training topic key")
    add_dates(p)


def check_keys(engine: Engine, **wanted: Sequence[str]) -> None:
    """Every --persona/--arc/--topic key exists (UsageError with the known keys otherwise)."""
    from worker.db import dataset

    if not any(wanted.values()):
        return
    with engine.connect() as conn:
        known = dataset.known_keys(conn)
    for kind, keys in wanted.items():
        names = known.get(kind, [])
        for key in keys:
            if key in names:
                continue
            close = difflib.get_close_matches(key, names, n=1)
            listed = ", ".join(names[:LISTED_KEYS]) + (
                f" (+{len(names) - LISTED_KEYS} more)" if len(names) > LISTED_KEYS else "")
            raise UsageError(
                f"--{kind} {key!r}: no {KEY_LABELS[kind]} has that key"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; known keys: {listed or 'none yet (import the scaffolding first)'}")
