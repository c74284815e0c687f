"""What commands print with: the stdout writer, cell text and the one table renderer.

stdout carries results (text, JSON, JSON Lines); logs and errors go to stderr.
A command prints through an `Out` (the stdout `write` here, or a list's append
in a test), so nothing below knows where its lines end up.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from worker.dataset.text import Out as Out  # the one alias: re-exported for the commands

"""Prints one line of text (without its newline)."""


Row = TypeVar("Row")


def write(line: str | bytes) -> None:
    """One line on stdout; bytes (orjson's UTF-8) go out as they are."""
    if isinstance(line, bytes):
        sys.stdout.buffer.write(line + b"\n")
    else:
        sys.stdout.write(line + "\n")


def one_line(value: Any) -> str:
    """A cell's text on one line: a control character (newline, escape) is shown escaped."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def first_line(value: Any) -> str:
    """The first non-empty line of a (possibly multi-line) error message."""
    for line in ("" if value is None else str(value)).splitlines():
        if line.strip():
            return one_line(line.strip())
    return ""


def flat(value: str | None) -> str:
    """Whitespace runs (newlines included) as one space: a message in one table cell."""
    return " ".join((value or "").split())


def clip(text: str, width: int) -> str:
    if width < 1:
        return ""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def terminal_width() -> int:
    """The terminal's width (COLUMNS, else the tty's, else 80), at least 40."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


@dataclass(frozen=True)
class Column(Generic[Row]):
    """A table column: its title and how a row's cell is read."""

    title: str
    value: Callable[[Row], Any]
    drop: int = 0  # 0: always shown; otherwise dropped (highest first) when too wide
    shrink: int = 0  # > 0: may be cut down to this many characters when too wide
    soft: int = 0  # > 0: cut to this first, before any column is dropped
    right: bool = False


def table(rows: Sequence[Row], columns: Sequence[Column[Row]], out: Out,
          width: int | None = None) -> None:
    """A table that fits `width` (None: no limit): optional columns go, then long ones shrink."""
    cells = [[one_line(c.value(r)) for r in rows] for c in columns]
    # An optional column with nothing in it (no ETA when nothing runs) is left out.
    shown = [i for i, c in enumerate(columns) if not c.drop or any(cells[i])]
    widths = [max([len(c.title)] + [len(v) for v in cells[i]]) for i, c in enumerate(columns)]
    if width is not None:
        _fit(columns, shown, widths, width)

    def line(values: list[str]) -> str:
        parts = []
        for i, value in zip(shown, values, strict=True):
            cut = clip(value, widths[i])
            parts.append(cut.rjust(widths[i]) if columns[i].right else cut.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    out(line([columns[i].title for i in shown]))
    for n in range(len(rows)):
        out(line([cells[i][n] for i in shown]))


def _fit(columns: Sequence[Column[Any]], shown: list[int], widths: list[int],
         width: int) -> None:
    """Narrow `widths` and drop from `shown` (both in place) until the table fits `width`."""

    def total() -> int:
        return sum(widths[i] for i in shown) + 2 * (len(shown) - 1)

    for i in shown:
        if columns[i].soft and total() > width:
            floor = max(columns[i].soft, len(columns[i].title))
            widths[i] = max(min(floor, widths[i]), widths[i] - (total() - width))
    for i in sorted((i for i in shown if columns[i].drop), key=lambda i: -columns[i].drop):
        if total() <= width:
            break
        shown.remove(i)
    for i in shown:
        if columns[i].shrink and total() > width:
            widths[i] = max(columns[i].shrink, widths[i] - (total() - width))
