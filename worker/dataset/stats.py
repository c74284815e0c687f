"""`reenrich stats`: the dataset's composition, as text, JSON or one HTML page.

Counts come from the stored enriched documents (the scaffolding keys their
pairs carry, as `reenrich export` filters on them); quality is the row's
score (missing: 3.0), the one `--min-quality` filters on. Legacy rows, rows
without scaffolding, failures and enrichment versions come from the rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine

from worker.dataset import dedup_stats, review_stats
from worker.dataset.sampling import STRATUM_FIELDS, SamplingError
from worker.db import dataset

DIMENSION_BIT = {"persona": 4, "arc": 2, "topic": 1}  # GROUPING() bits, rolled up when set
DIMENSION_TITLE = {"persona": "persona", "arc": "emotional arc", "topic": "training topic"}
NONE_LABEL = "(none)"
DEFAULT_THIN = 3
LISTED_CELLS = 20  # empty / thin cells named in the text output (JSON lists them all)


def parse_by(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names or any(n not in STRATUM_FIELDS for n in names) or len(set(names)) != len(names):
        raise SamplingError(f"--by takes persona, arc, topic or a comma list of them, "
                            f"got {value!r}")
    return names


def _quality(value: Any) -> float | None:
    return round(float(value), 2) if value is not None else None


def _breakdown(rows: list[dict[str, Any]], dims: Sequence[str]) -> list[dict[str, Any]]:
    mask = sum(bit for name, bit in DIMENSION_BIT.items() if name not in dims)
    out = [{**{d: row[d] for d in dims},
            "conversations": int(row["conversations"]), "pairs": int(row["pairs"] or 0),
            "assistant_pairs": int(row["assistant_pairs"] or 0),
            "avg_quality": _quality(row["avg_quality"])}
           for row in rows if row["g"] == mask]
    return sorted(out, key=lambda r: (-r["conversations"],
                                      *[(r[d] is None, r[d] or "") for d in dims]))


def _cells(rows: list[dict[str, Any]], dims: Sequence[str], known: dict[str, list[str]],
           thin: int) -> dict[str, Any]:
    full = _breakdown(rows, dims)
    counts = {tuple(r[d] for d in dims): r["conversations"] for r in full}
    axes = [sorted(set(known.get(d, [])) | {r[d] for r in full if r[d] is not None})
            for d in dims]
    empty, thin_cells = [], []
    total = 0
    for combo in itertools.product(*axes):
        total += 1
        n = counts.get(combo, 0)
        cell = {**dict(zip(dims, combo, strict=True)), "conversations": n}
        if n == 0:
            empty.append(cell)
        elif n < thin:
            thin_cells.append(cell)
    return {"dimensions": list(dims), "thin_below": thin, "cells": total,
            "filled": total - len(empty), "empty": empty, "thin": thin_cells}


def collect(engine: Engine, by: Sequence[str] = STRATUM_FIELDS,
            thin: int = DEFAULT_THIN) -> dict[str, Any]:
    """The composition as one JSON-ready dict (one read-only snapshot)."""
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
    grand = next((r for r in rows if r["g"] == 7), None)
    subsets = [combo for size in range(1, len(by) + 1)
               for combo in itertools.combinations(by, size)]
    return {
        "conversations": int(overview["conversations"]),
        "enriched": int(overview["enriched"]),
        "not_enriched": int(overview["conversations"]) - int(overview["enriched"]),
        "pairs": int(grand["pairs"] or 0) if grand else 0,
        "assistant_pairs": int(grand["assistant_pairs"] or 0) if grand else 0,
        "avg_quality": _quality(grand["avg_quality"]) if grand else None,
        "legacy_rows": int(overview["legacy"]),
        "rows_without_scaffolding_reference": int(overview["no_reference"]),
        "scaffolding": {"complete": int(coverage["complete"]),
                        "partial": int(coverage["partial"]),
                        "none": int(coverage["no_scaffolding"])},
        "enrichment_status": {"failed": int(overview["status_failed"]),
                              "pending": int(overview["status_pending"])},
        "open_failures": failures,
        "quality_tiers": {str(k): tiers[k] for k in sorted(
            tiers, key=lambda t: (dataset.QUALITY_TIERS.index(t)
                                  if t in dataset.QUALITY_TIERS else 99, str(t)))},
        "enrichment_versions": {str(k): v for k, v in versions.items()},
        "by": list(by),
        "breakdowns": [{"dimensions": list(dims), "rows": _breakdown(rows, dims)}
                       for dims in subsets],
        "cells": _cells(rows, by, known, thin),
        "review_coverage": reviews,
        "duplicates": duplicates,
    }


# ------------------------------------------------------------ text


Out = Callable[[str], None]


def _label(value: Any) -> str:
    return NONE_LABEL if value is None else str(value)


def table(rows: list[list[str]], header: list[str], out: Out) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    out("  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def print_text(stats: dict[str, Any], out: Out) -> None:
    out(f"conversations: {stats['conversations']} ({stats['enriched']} enriched, "
        f"{stats['not_enriched']} not enriched); pairs {stats['pairs']} "
        f"({stats['assistant_pairs']} assistant); average quality {stats['avg_quality']}")
    out(f"legacy rows (parsed_json without input_parameters): {stats['legacy_rows']}")
    out(f"rows without a scaffolding reference: {stats['rows_without_scaffolding_reference']}")
    cover = stats["scaffolding"]
    out(f"enriched documents: {cover['complete']} with persona, arc and topic, "
        f"{cover['partial']} partial, {cover['none']} without scaffolding")
    status = stats["enrichment_status"]
    out(f"failures: {sum(stats['open_failures'].values())} open "
        f"({_pairs(stats['open_failures'])}); status failed {status['failed']}, "
        f"pending {status['pending']}")
    out(f"quality tiers: {_pairs(stats['quality_tiers'])}")
    out(f"enrichment versions: {_pairs(stats['enrichment_versions'])}")
    for breakdown in stats["breakdowns"]:
        dims = breakdown["dimensions"]
        out("")
        out("by " + " × ".join(DIMENSION_TITLE[d] for d in dims))
        table([[*(_label(r[d]) for d in dims), str(r["conversations"]), str(r["pairs"]),
                str(r["assistant_pairs"]), str(r["avg_quality"])] for r in breakdown["rows"]],
              [*dims, "conversations", "pairs", "assistant_pairs", "avg_quality"], out)
    cells = stats["cells"]
    out("")
    out(f"cells {' × '.join(cells['dimensions'])}: {cells['cells']} cells, {cells['filled']} "
        f"filled, {len(cells['empty'])} empty, {len(cells['thin'])} thin "
        f"(fewer than {cells['thin_below']} conversations)")
    for kind in ("empty", "thin"):
        listed = cells[kind][:LISTED_CELLS]
        if listed:
            more = len(cells[kind]) - len(listed)
            names = ", ".join("|".join(_label(c[d]) for d in cells["dimensions"]) for c in listed)
            out(f"  {kind}: {names}" + (f" (+{more} more: --json lists all)" if more else ""))
    review_stats.print_text(stats["review_coverage"], out)
    dedup_stats.print_text(stats.get("duplicates"), out)
