"""Review coverage for `reenrich stats` (text, JSON, HTML): overall and per persona, arc, topic.

"reviewed" counts current reviews (the pair's text is the one reviewed);
approved / rejected / needs_revision split them; "stale" counts reviews whose
text changed since (they count as no review); the share reviewed is reviewed
over the assistant pairs of the enriched documents.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from worker.dataset.text import NONE_LABEL, table
from worker.db import reviews as db
from worker.db.dataset import CompositionRow

COUNTS = ("reviewed", "approved", "rejected", "needs_revision", "seed_examples", "stale")
# GROUPING() values of persona alone, arc alone, topic alone, and everything.
GROUP = {"persona": 3, "arc": 5, "topic": 6}
OVERALL = 7
HEADER = ["", "assistant_pairs", *COUNTS, "share_reviewed"]


@dataclass(frozen=True)
class ReviewCounts:
    """The reviews of a set of assistant pairs (all of them, or one key's)."""

    assistant_pairs: int
    reviewed: int
    approved: int
    rejected: int
    needs_revision: int
    seed_examples: int
    stale: int
    share_reviewed: float

    @classmethod
    def of(cls, assistant_pairs: int, row: Mapping[str, Any] | None) -> ReviewCounts:
        """`row`: a row of `reviews.coverage` (None: no review)."""
        values = {name: int((row or {}).get(name) or 0) for name in COUNTS}
        share = round(values["reviewed"] / assistant_pairs, 4) if assistant_pairs else 0.0
        return cls(assistant_pairs=assistant_pairs, share_reviewed=share, **values)

    def counts(self) -> list[int]:
        """The COUNTS, in their order."""
        return [self.reviewed, self.approved, self.rejected, self.needs_revision,
                self.seed_examples, self.stale]

    def as_dict(self) -> dict[str, Any]:
        return {"assistant_pairs": self.assistant_pairs,
                **dict(zip(COUNTS, self.counts(), strict=True)),
                "share_reviewed": self.share_reviewed}

    def row(self, label: str | None) -> list[str]:
        """A table row: the label, then every number (the share as a percentage)."""
        return [NONE_LABEL if label is None else label, str(self.assistant_pairs),
                *(str(n) for n in self.counts()), _percent(self.share_reviewed)]


@dataclass(frozen=True)
class KeyCounts:
    """The reviews of one persona, arc or topic key (None: the key is null)."""

    key: str | None
    counts: ReviewCounts


@dataclass(frozen=True)
class ReviewCoverage:
    overall: ReviewCounts
    by_persona: tuple[KeyCounts, ...]
    by_arc: tuple[KeyCounts, ...]
    by_topic: tuple[KeyCounts, ...]

    def by(self, name: str) -> tuple[KeyCounts, ...]:
        """By persona, arc or topic (the names of GROUP)."""
        return {"persona": self.by_persona, "arc": self.by_arc, "topic": self.by_topic}[name]

    def as_dict(self) -> dict[str, Any]:
        return {**self.overall.as_dict(),
                **{f"by_{name}": [{name: k.key, **k.counts.as_dict()} for k in self.by(name)]
                   for name in GROUP}}


def _by(name: str, composition: Sequence[CompositionRow],
        reviewed: Sequence[Mapping[str, Any]]) -> tuple[KeyCounts, ...]:
    pairs = {r.key(name): r.assistant_pairs for r in composition if r.g == GROUP[name]}
    counts = {r[name]: r for r in reviewed if r["g"] == GROUP[name]}
    keys = sorted(pairs.keys() | counts.keys(), key=lambda k: (k is None, k or ""))
    return tuple(KeyCounts(key, ReviewCounts.of(pairs.get(key, 0), counts.get(key)))
                 for key in keys)


def coverage(conn: Connection, composition: Sequence[CompositionRow]) -> ReviewCoverage:
    """`composition`: the rows of `dataset.composition` (assistant pairs per crossing)."""
    reviewed = db.coverage(conn)
    grand = next((r for r in composition if r.g == OVERALL), None)
    overall = ReviewCounts.of(grand.assistant_pairs if grand else 0,
                              next((r for r in reviewed if r["g"] == OVERALL), None))
    return ReviewCoverage(overall=overall, by_persona=_by("persona", composition, reviewed),
                          by_arc=_by("arc", composition, reviewed),
                          by_topic=_by("topic", composition, reviewed))


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def print_text(cover: ReviewCoverage, out: Callable[[str], None]) -> None:

    c = cover.overall
    out("")
    out(f"review coverage: {c.reviewed} of {c.assistant_pairs} assistant pairs "
        f"reviewed ({_percent(c.share_reviewed)}): approved {c.approved}, "
        f"rejected {c.rejected}, needs revision {c.needs_revision}, seed "
        f"examples {c.seed_examples}; stale {c.stale}")
    for name in GROUP:
        rows = [k.counts.row(k.key) for k in cover.by(name)
                if k.counts.reviewed or k.counts.stale]
        if rows:
            out("")
            out(f"review coverage by {name}")
            table(rows, [name, *HEADER[1:]], out)


def html_section(cover: ReviewCoverage, table: Callable[[list[str], list[list[Any]]], str],
                 ) -> str:
    c = cover.overall
    parts = ["<h2>Review coverage</h2>",
             f"<p>{c.reviewed} of {c.assistant_pairs} assistant pairs reviewed "
             f"({html.escape(_percent(c.share_reviewed))}); {c.stale} stale "
             "review(s) (the text changed since: listed by <code>reenrich review list "
             "--stale</code>).</p>"]
    parts.append(table(HEADER, [c.row("all")]))
    for name in GROUP:
        parts.append(f"<h3>By {html.escape(name)}</h3>")
        parts.append(table([name, *HEADER[1:]], [k.counts.row(k.key) for k in cover.by(name)]))
    return "\n".join(parts)
