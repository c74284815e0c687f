"""Review coverage for `reenrich stats` (text, JSON, HTML): overall and per persona, arc, topic.

"reviewed" counts current reviews (the pair's text is the one reviewed);
approved / rejected / needs_revision split them; "stale" counts reviews whose
text changed since (they count as no review); the share reviewed is reviewed
over the assistant pairs of the enriched documents.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from worker.db import reviews as db

COUNTS = ("reviewed", "approved", "rejected", "needs_revision", "seed_examples", "stale")
# GROUPING() values of persona alone, arc alone, topic alone, and everything.
GROUP = {"persona": 3, "arc": 5, "topic": 6}
OVERALL = 7
NONE_LABEL = "(none)"


def _entry(assistant_pairs: int, counts: dict[str, Any] | None) -> dict[str, Any]:
    values = {name: int((counts or {}).get(name) or 0) for name in COUNTS}
    share = round(values["reviewed"] / assistant_pairs, 4) if assistant_pairs else 0.0
    return {"assistant_pairs": assistant_pairs, **values, "share_reviewed": share}


def coverage(conn: Connection, composition: list[dict[str, Any]]) -> dict[str, Any]:
    """`composition`: the rows of `dataset.composition` (assistant pairs per crossing)."""
    reviewed = db.coverage(conn)
    grand = next((r for r in composition if r["g"] == OVERALL), None)
    out = _entry(int(grand["assistant_pairs"] or 0) if grand else 0,
                 next((r for r in reviewed if r["g"] == OVERALL), None))
    for name, g in GROUP.items():
        pairs = {r[name]: int(r["assistant_pairs"] or 0) for r in composition if r["g"] == g}
        counts = {r[name]: r for r in reviewed if r["g"] == g}
        keys = sorted(pairs.keys() | counts.keys(), key=lambda k: (k is None, k or ""))
        out[f"by_{name}"] = [{name: key, **_entry(pairs.get(key, 0), counts.get(key))}
                             for key in keys]
    return out


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _row(label: Any, entry: dict[str, Any]) -> list[str]:
    return [NONE_LABEL if label is None else str(label), str(entry["assistant_pairs"]),
            *(str(entry[name]) for name in COUNTS), _percent(entry["share_reviewed"])]


HEADER = ["", "assistant_pairs", *COUNTS, "share_reviewed"]


def print_text(cover: dict[str, Any], out: Callable[[str], None]) -> None:
    from worker.dataset.stats import table

    out("")
    out(f"review coverage: {cover['reviewed']} of {cover['assistant_pairs']} assistant pairs "
        f"reviewed ({_percent(cover['share_reviewed'])}): approved {cover['approved']}, "
        f"rejected {cover['rejected']}, needs revision {cover['needs_revision']}, seed "
        f"examples {cover['seed_examples']}; stale {cover['stale']}")
    for name in GROUP:
        rows = [_row(entry[name], entry) for entry in cover[f"by_{name}"]
                if entry["reviewed"] or entry["stale"]]
        if rows:
            out("")
            out(f"review coverage by {name}")
            table(rows, [name, *HEADER[1:]], out)


def html_section(cover: dict[str, Any], table: Callable[[list[str], list[list[Any]]], str],
                 ) -> str:
    parts = ["<h2>Review coverage</h2>",
             f"<p>{cover['reviewed']} of {cover['assistant_pairs']} assistant pairs reviewed "
             f"({html.escape(_percent(cover['share_reviewed']))}); {cover['stale']} stale "
             "review(s) (the text changed since: listed by <code>reenrich review list "
             "--stale</code>).</p>"]
    parts.append(table(HEADER, [_row("all", cover)]))
    for name in GROUP:
        parts.append(f"<h3>By {html.escape(name)}</h3>")
        parts.append(table([name, *HEADER[1:]],
                           [_row(entry[name], entry) for entry in cover[f"by_{name}"]]))
    return "\n".join(parts)
