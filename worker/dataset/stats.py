"""`reenrich stats`: the dataset's composition, as text, JSON or one HTML page.

Counts come from the stored enriched documents (the scaffolding keys their
pairs carry, as `reenrich export` filters on them); quality is the row's
score (missing: 3.0), the one `--min-quality` filters on. Legacy rows, rows
without scaffolding, failures and enrichment versions come from the rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from worker.dataset import dedup_stats, review_stats
from worker.dataset.sampling import STRATUM_FIELDS, SamplingError
from worker.dataset.text import Out, label, table
from worker.db import dataset
from worker.db.dataset import CompositionRow
from worker.enrichment.models import QualityTier

DIMENSION_BIT = {"persona": 4, "arc": 2, "topic": 1}  # GROUPING() bits, rolled up when set
DIMENSION_TITLE = {"persona": "persona", "arc": "emotional arc", "topic": "training topic"}
DEFAULT_THIN = 3
LISTED_CELLS = 20  # empty / thin cells named in the text output (JSON lists them all)


def parse_by(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names or any(n not in STRATUM_FIELDS for n in names) or len(set(names)) != len(names):
        raise SamplingError(f"--by takes persona, arc, topic or a comma list of them, "
                            f"got {value!r}")
    return names


def _quality(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


@dataclass(frozen=True)
class BreakdownRow:
    """One crossing of a breakdown's dimensions."""

    keys: dict[str, str | None]  # the crossing's key of each dimension, in order
    conversations: int
    pairs: int
    assistant_pairs: int
    avg_quality: float | None

    def as_dict(self) -> dict[str, Any]:
        return {**self.keys, "conversations": self.conversations, "pairs": self.pairs,
                "assistant_pairs": self.assistant_pairs, "avg_quality": self.avg_quality}


@dataclass(frozen=True)
class Breakdown:
    dimensions: tuple[str, ...]
    rows: tuple[BreakdownRow, ...]  # most conversations first

    def as_dict(self) -> dict[str, Any]:
        return {"dimensions": list(self.dimensions), "rows": [r.as_dict() for r in self.rows]}


@dataclass(frozen=True)
class Cell:
    keys: dict[str, str | None]
    conversations: int

    def as_dict(self) -> dict[str, Any]:
        return {**self.keys, "conversations": self.conversations}


@dataclass(frozen=True)
class Cells:
    """Every crossing of the known keys of `dimensions`: which have no or few conversations."""

    dimensions: tuple[str, ...]
    thin_below: int
    cells: int
    filled: int
    empty: tuple[Cell, ...]
    thin: tuple[Cell, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"dimensions": list(self.dimensions), "thin_below": self.thin_below,
                "cells": self.cells, "filled": self.filled,
                "empty": [c.as_dict() for c in self.empty],
                "thin": [c.as_dict() for c in self.thin]}


@dataclass(frozen=True)
class Scaffolding:
    """Enriched documents with persona, arc and topic, with some, with none."""

    complete: int
    partial: int
    none: int

    def as_dict(self) -> dict[str, int]:
        return {"complete": self.complete, "partial": self.partial, "none": self.none}


@dataclass(frozen=True)
class Stats:
    """The composition `reenrich stats` reports; `as_dict()` is its `--json`."""

    conversations: int
    enriched: int
    pairs: int
    assistant_pairs: int
    avg_quality: float | None
    legacy_rows: int
    rows_without_scaffolding_reference: int
    scaffolding: Scaffolding
    status_failed: int
    status_pending: int
    open_failures: dict[str, int]  # by error code
    quality_tiers: dict[str, int]  # best tier first
    enrichment_versions: dict[str, int]
    by: tuple[str, ...]
    breakdowns: tuple[Breakdown, ...]  # every combination of `by`, smallest first
    cells: Cells
    review_coverage: review_stats.ReviewCoverage
    duplicates: dedup_stats.DedupSummary | None

    @property
    def not_enriched(self) -> int:
        return self.conversations - self.enriched

    def breakdown(self, dimensions: Sequence[str]) -> Breakdown:
        return next(b for b in self.breakdowns if b.dimensions == tuple(dimensions))

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations, "enriched": self.enriched,
            "not_enriched": self.not_enriched, "pairs": self.pairs,
            "assistant_pairs": self.assistant_pairs, "avg_quality": self.avg_quality,
            "legacy_rows": self.legacy_rows,
            "rows_without_scaffolding_reference": self.rows_without_scaffolding_reference,
            "scaffolding": self.scaffolding.as_dict(),
            "enrichment_status": {"failed": self.status_failed, "pending": self.status_pending},
            "open_failures": self.open_failures, "quality_tiers": self.quality_tiers,
            "enrichment_versions": self.enrichment_versions, "by": list(self.by),
            "breakdowns": [b.as_dict() for b in self.breakdowns],
            "cells": self.cells.as_dict(),
            "review_coverage": self.review_coverage.as_dict(),
            "duplicates": self.duplicates.as_dict() if self.duplicates is not None else None,
        }


class StatsJson(dict[str, Any]):
    """What `collect` returns: the `--json` dict (the CLI prints it with json.dumps), holding
    the typed Stats it was made from, which `print_text` and the HTML page read."""

    def __init__(self, stats: Stats) -> None:
        super().__init__(stats.as_dict())
        self.stats = stats


def _typed(stats: Stats | StatsJson) -> Stats:
    return stats.stats if isinstance(stats, StatsJson) else stats


def _breakdown(rows: Sequence[CompositionRow], dims: Sequence[str]) -> Breakdown:
    mask = sum(bit for name, bit in DIMENSION_BIT.items() if name not in dims)
    out = [BreakdownRow(keys={d: row.key(d) for d in dims}, conversations=row.conversations,
                        pairs=row.pairs, assistant_pairs=row.assistant_pairs,
                        avg_quality=_quality(row.avg_quality))
           for row in rows if row.g == mask]
    out.sort(key=lambda r: (-r.conversations,
                            *[(r.keys[d] is None, r.keys[d] or "") for d in dims]))
    return Breakdown(tuple(dims), tuple(out))


def _cells(rows: Sequence[CompositionRow], dims: Sequence[str], known: dict[str, list[str]],
           thin: int) -> Cells:
    full = _breakdown(rows, dims).rows
    counts = {tuple(r.keys.values()): r.conversations for r in full}
    axes = [sorted(set(known.get(d, [])) | {k for r in full if (k := r.keys[d]) is not None})
            for d in dims]
    empty: list[Cell] = []
    thin_cells: list[Cell] = []
    total = 0
    for combo in itertools.product(*axes):
        total += 1
        n = counts.get(combo, 0)
        cell = Cell(dict(zip(dims, combo, strict=True)), n)
        if n == 0:
            empty.append(cell)
        elif n < thin:
            thin_cells.append(cell)
    return Cells(dimensions=tuple(dims), thin_below=thin, cells=total,
                 filled=total - len(empty), empty=tuple(empty), thin=tuple(thin_cells))


def collect_stats(engine: Engine, by: Sequence[str] = STRATUM_FIELDS,
                  thin: int = DEFAULT_THIN) -> Stats:
    """The composition (one read-only snapshot)."""
    with engine.connect() as conn, conn.begin():
        dataset.begin_snapshot(conn)
        overview = dataset.overview(conn)
        coverage = dataset.scaffolding_coverage(conn)
        rows = dataset.composition(conn)
        tiers = dataset.tier_counts(conn)
        versions = dataset.version_counts(conn)
        failures = dataset.open_failure_counts(conn)
        known = dataset.known_keys(conn)
        reviews = review_stats.coverage(conn, rows)
        duplicates = dedup_stats.collect(conn)
    grand = next((r for r in rows if r.g == 7), None)
    subsets = [combo for size in range(1, len(by) + 1)
               for combo in itertools.combinations(by, size)]
    return Stats(
        conversations=overview.conversations, enriched=overview.enriched,
        pairs=grand.pairs if grand else 0,
        assistant_pairs=grand.assistant_pairs if grand else 0,
        avg_quality=_quality(grand.avg_quality) if grand else None,
        legacy_rows=overview.legacy, rows_without_scaffolding_reference=overview.no_reference,
        scaffolding=Scaffolding(complete=coverage.complete, partial=coverage.partial,
                                none=coverage.no_scaffolding),
        status_failed=overview.status_failed, status_pending=overview.status_pending,
        open_failures=failures,
        quality_tiers={str(k): tiers[k] for k in sorted(
            tiers, key=lambda t: (QualityTier.rank(t), str(t)))},
        enrichment_versions={str(k): v for k, v in versions.items()},
        by=tuple(by), breakdowns=tuple(_breakdown(rows, dims) for dims in subsets),
        cells=_cells(rows, by, known, thin), review_coverage=reviews, duplicates=duplicates)


def collect(engine: Engine, by: Sequence[str] = STRATUM_FIELDS,
            thin: int = DEFAULT_THIN) -> StatsJson:
    """`collect_stats` as its JSON dict (what the CLI prints), the typed Stats inside."""
    return StatsJson(collect_stats(engine, by, thin))


# ------------------------------------------------------------ text




def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def print_text(stats: Stats | StatsJson, out: Out) -> None:
    stats = _typed(stats)
    out(f"conversations: {stats.conversations} ({stats.enriched} enriched, "
        f"{stats.not_enriched} not enriched); pairs {stats.pairs} "
        f"({stats.assistant_pairs} assistant); average quality {stats.avg_quality}")
    out(f"legacy rows (parsed_json without input_parameters): {stats.legacy_rows}")
    out(f"rows without a scaffolding reference: {stats.rows_without_scaffolding_reference}")
    cover = stats.scaffolding
    out(f"enriched documents: {cover.complete} with persona, arc and topic, "
        f"{cover.partial} partial, {cover.none} without scaffolding")
    out(f"failures: {sum(stats.open_failures.values())} open "
        f"({_pairs(stats.open_failures)}); status failed {stats.status_failed}, "
        f"pending {stats.status_pending}")
    out(f"quality tiers: {_pairs(stats.quality_tiers)}")
    out(f"enrichment versions: {_pairs(stats.enrichment_versions)}")
    for breakdown in stats.breakdowns:
        dims = breakdown.dimensions
        out("")
        out("by " + " × ".join(DIMENSION_TITLE[d] for d in dims))
        table([[*(label(v) for v in r.keys.values()), str(r.conversations), str(r.pairs),
                str(r.assistant_pairs), str(r.avg_quality)] for r in breakdown.rows],
              [*dims, "conversations", "pairs", "assistant_pairs", "avg_quality"], out)
    _print_cells(stats.cells, out)
    review_stats.print_text(stats.review_coverage, out)
    dedup_stats.print_text(stats.duplicates, out)


def _print_cells(cells: Cells, out: Out) -> None:
    out("")
    out(f"cells {' × '.join(cells.dimensions)}: {cells.cells} cells, {cells.filled} "
        f"filled, {len(cells.empty)} empty, {len(cells.thin)} thin "
        f"(fewer than {cells.thin_below} conversations)")
    for kind, listed_all in (("empty", cells.empty), ("thin", cells.thin)):
        listed = listed_all[:LISTED_CELLS]
        if listed:
            more = len(listed_all) - len(listed)
            names = ", ".join("|".join(label(v) for v in c.keys.values()) for c in listed)
            out(f"  {kind}: {names}" + (f" (+{more} more: --json lists all)" if more else ""))
