"""Plain-text pieces every report prints with: the label of a missing key, a table.

Light on purpose (no imports beyond the standard library): the command's
`--help` and the reports share `label` without loading anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Out = Callable[[str], None]
NONE_LABEL = "(none)"  # a conversation without that scaffolding key


def label(value: Any) -> str:
    """A scaffolding key, or (none) when a conversation has none."""
    return NONE_LABEL if value is None else str(value)


def table(rows: list[list[str]], header: list[str], out: Out) -> None:
    """Left-aligned columns, upper-case header (the reports' text tables)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    out("  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
