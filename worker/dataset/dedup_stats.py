"""The near-duplicate section of `reenrich stats` (text, JSON and the HTML page)."""

from __future__ import annotations

import dataclasses
import html
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from worker.dataset.sampling import STRATUM_FIELDS
from worker.dataset.text import Out, label
from worker.db import dedup as db_dedup

CELLS_LISTED = 10  # cells named in the text output (JSON lists them all)
LARGEST = 10  # clusters listed in the summary
SAMPLE = 5  # ids shown per cluster in the summary
TOP_RESPONSES = 10


@dataclass(frozen=True)
class DuplicateRate:
    """Near-duplicates among a set of conversations: all, one key's, or one cell's."""

    keys: dict[str, str | None]  # the set's persona / arc / topic, those of its level
    conversations: int
    in_clusters: int
    duplicates: int
    duplicate_rate: float

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> DuplicateRate:
        keys = {name: row[name] for name in STRATUM_FIELDS if name in row}
        return cls(keys=keys, **{k: v for k, v in row.items() if k not in keys})

    def label(self, level: str) -> str:
        return label(self.keys[level])

    def as_dict(self) -> dict[str, Any]:
        return {**self.keys, "conversations": self.conversations,
                "in_clusters": self.in_clusters, "duplicates": self.duplicates,
                "duplicate_rate": self.duplicate_rate}


@dataclass(frozen=True)
class DuplicateRates:
    overall: DuplicateRate | None
    persona: tuple[DuplicateRate, ...]
    arc: tuple[DuplicateRate, ...]
    topic: tuple[DuplicateRate, ...]
    cell: tuple[DuplicateRate, ...]

    @classmethod
    def of(cls, rates: Mapping[str, Any]) -> DuplicateRates:
        """`rates`: what `jobs.dedup.rates` returns."""
        overall = rates["overall"]
        return cls(overall=DuplicateRate.of(overall) if overall is not None else None,
                   **{level: tuple(DuplicateRate.of(r) for r in rates[level])
                      for level in (*STRATUM_FIELDS, "cell")})

    def level(self, name: str) -> tuple[DuplicateRate, ...]:
        """By persona, arc or topic."""
        return {"persona": self.persona, "arc": self.arc, "topic": self.topic}[name]

    def as_dict(self) -> dict[str, Any]:
        return {"overall": self.overall.as_dict() if self.overall is not None else None,
                **{name: [r.as_dict() for r in rows] for name, rows in (
                    ("persona", self.persona), ("arc", self.arc), ("topic", self.topic),
                    ("cell", self.cell))}}


@dataclass(frozen=True)
class Cluster:
    cluster_id: int
    size: int
    representative: str
    cells: int
    threshold: float
    scope: str
    sample: list[str]  # the first members


@dataclass(frozen=True)
class RepeatedResponse:
    response_hash: str
    conversations: int
    preview: str  # the response's start
    sample: list[str]


@dataclass(frozen=True)
class RepeatedResponses:
    """Assistant responses found in more than one conversation."""

    responses: int
    occurrences: int
    conversations: int
    top: tuple[RepeatedResponse, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"responses": self.responses, "occurrences": self.occurrences,
                "conversations": self.conversations,
                "top": [dataclasses.asdict(r) for r in self.top]}


@dataclass(frozen=True)
class DedupSummary:
    """What the last `reenrich dedup` left in the tables, and that run's settings."""

    clusters: int
    conversations_in_clusters: int
    duplicates: int
    duplicate_rate: float
    cross_cell_clusters: int
    duplicate_rates: DuplicateRates
    largest_clusters: tuple[Cluster, ...]
    repeated_responses: RepeatedResponses
    unsigned_conversations: int  # added since the run
    threshold: float
    scope: str
    run_finished_at: str  # ISO 8601

    def as_dict(self) -> dict[str, Any]:
        return {
            "clusters": self.clusters, "conversations_in_clusters": self.conversations_in_clusters,
            "duplicates": self.duplicates, "duplicate_rate": self.duplicate_rate,
            "cross_cell_clusters": self.cross_cell_clusters,
            "duplicate_rates": self.duplicate_rates.as_dict(),
            "largest_clusters": [dataclasses.asdict(c) for c in self.largest_clusters],
            "repeated_responses": self.repeated_responses.as_dict(),
            "unsigned_conversations": self.unsigned_conversations,
            "threshold": self.threshold, "scope": self.scope,
            "run_finished_at": self.run_finished_at,
        }


def _summary(found: Mapping[str, Any], run: Mapping[str, Any]) -> DedupSummary:
    """`found`: `jobs.dedup.report`; `run`: the last run's row."""
    repeated = dict(found["repeated_responses"])
    repeated["top"] = tuple(RepeatedResponse(**r) for r in repeated["top"])
    parts = {**found, "duplicate_rates": DuplicateRates.of(found["duplicate_rates"]),
             "largest_clusters": tuple(Cluster(**c) for c in found["largest_clusters"]),
             "repeated_responses": RepeatedResponses(**repeated)}
    return DedupSummary(**parts, threshold=run["threshold"], scope=run["scope"],
                        run_finished_at=run["finished_at"].isoformat())


def collect(conn: Connection) -> DedupSummary | None:
    """What the last `reenrich dedup` found, or None when it never ran."""
    if not db_dedup.has_tables(conn):
        return None
    run = db_dedup.last_run(conn)
    if run is None:
        return None
    return _summary(report(conn), run)


def print_text(found: DedupSummary | None, out: Out) -> None:
    out("")
    if found is None:
        out("near-duplicates: not computed (run `reenrich dedup`)")
        return
    out(f"near-duplicates (threshold {found.threshold}, scope {found.scope}, "
        f"{found.run_finished_at}): {found.clusters} clusters holding "
        f"{found.conversations_in_clusters} conversations; duplicate rate "
        f"{100 * found.duplicate_rate:.2f}% ({found.duplicates} not representatives); "
        f"{found.cross_cell_clusters} clusters span cells; "
        f"{found.unsigned_conversations} conversations added since")
    rates = found.duplicate_rates
    for level in STRATUM_FIELDS:
        out(f"  duplicate rate by {level}: " + ", ".join(
            f"{r.label(level)} {100 * r.duplicate_rate:.1f}%" for r in rates.level(level)))
    # print_details reads the JSON form; it lists the first cells only.
    listed = dataclasses.replace(rates, cell=rates.cell[:CELLS_LISTED])
    print_details(dataclasses.replace(found, duplicate_rates=listed).as_dict(), out)


def render_html(found: DedupSummary | None,
                table: Callable[[list[str], list[list[Any]]], str]) -> str:
    if found is None:
        return "<h2>Near-duplicates</h2><p>Not computed: run <code>reenrich dedup</code>.</p>"
    parts = ["<h2>Near-duplicates</h2>",
             f"<p>Threshold {found.threshold}, scope {html.escape(found.scope)}: "
             f"{found.clusters} clusters holding {found.conversations_in_clusters} "
             f"conversations; duplicate rate {100 * found.duplicate_rate:.2f}% "
             f"({found.duplicates} not representatives).</p>"]
    for level in STRATUM_FIELDS:
        parts.append(f"<h3>Duplicate rate by {level}</h3>")
        parts.append(table([level, "conversations", "in clusters", "duplicates", "rate"], [
            [r.label(level), r.conversations, r.in_clusters, r.duplicates,
             f"{100 * r.duplicate_rate:.1f}%"]
            for r in found.duplicate_rates.level(level)]))
    parts.append("<h3>Largest clusters</h3>")
    parts.append(table(["cluster", "size", "representative", "members (sample)"], [
        [c.cluster_id, c.size, c.representative, " ".join(c.sample)]
        for c in found.largest_clusters]))
    repeated = found.repeated_responses
    parts.append(f"<h3>Repeated assistant responses: {repeated.responses}</h3>")
    parts.append(table(["conversations", "response (start)"], [
        [r.conversations, r.preview] for r in repeated.top]))
    return "\n".join(parts)


# ------------------------------------------------- what the tables hold


def _rate(duplicates: int, conversations: int) -> float:
    return round(duplicates / conversations, 4) if conversations else 0.0


def rates(conn: Connection) -> dict[str, Any]:
    """Duplicate rates overall, per persona, arc, topic and cell (what --dedup removes)."""
    out: dict[str, Any] = {"overall": None, "persona": [], "arc": [], "topic": [], "cell": []}
    for row in db_dedup.duplicate_rates(conn):
        level = row.pop("level")
        row["duplicate_rate"] = _rate(row["duplicates"], row["conversations"])
        if level == "all":
            out["overall"] = {k: row[k] for k in ("conversations", "in_clusters", "duplicates",
                                                  "duplicate_rate")}
            continue
        keep = ("persona", "arc", "topic") if level == "cell" else (level,)
        out[level].append({**{k: row[k] for k in keep},
                           **{k: row[k] for k in ("conversations", "in_clusters",
                                                  "duplicates", "duplicate_rate")}})
    for level in ("persona", "arc", "topic", "cell"):
        out[level].sort(key=lambda r: (-r["duplicate_rate"], -r["conversations"],
                                       tuple(str(r.get(k)) for k in ("persona", "arc", "topic"))))
    return out


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: ([str(x) for x in v] if isinstance(v, list) else
                str(v) if isinstance(v, uuid.UUID) else v) for k, v in row.items()}


def report(conn: Connection) -> dict[str, Any]:
    """What the last run left in the tables (also the `stats` section)."""
    db_dedup.no_jit(conn)
    totals = db_dedup.cluster_totals(conn)
    duplicate = rates(conn)
    return {
        "clusters": totals["clusters"],
        "conversations_in_clusters": totals["in_clusters"],
        "duplicates": totals["duplicates"],
        "duplicate_rate": duplicate["overall"]["duplicate_rate"] if duplicate["overall"] else 0,
        "cross_cell_clusters": totals["cross_cell_clusters"],
        "duplicate_rates": duplicate,
        "largest_clusters": [_jsonable(r)
                             for r in db_dedup.largest_clusters(conn, LARGEST, SAMPLE)],
        "repeated_responses": {**(found := db_dedup.repeated_responses(conn, TOP_RESPONSES)),
                               "top": [_jsonable(r) for r in found["top"]]},
        "unsigned_conversations": db_dedup.unsigned_conversations(conn),
    }


def print_details(s: dict[str, Any], out: Out) -> None:
    """Cells, largest clusters and repeated responses (the summary's and stats' lines)."""
    cells = [c for c in s["duplicate_rates"]["cell"] if c["duplicates"]]
    if cells:
        out("cells with the highest duplicate rate:")
        for c in cells:
            out(f"  {label(c['persona'])}|{label(c['arc'])}|{label(c['topic'])}: "
                f"{c['duplicates']} of {c['conversations']} ({100 * c['duplicate_rate']:.1f}%)")
    if s["largest_clusters"]:
        out("largest clusters:")
        for c in s["largest_clusters"]:
            more = " …" if c["size"] > len(c["sample"]) else ""
            out(f"  {c['cluster_id']} size {c['size']} (representative {c['representative']}):"
                f" {' '.join(c['sample'])}{more}")
    repeated = s["repeated_responses"]
    out(f"repeated assistant responses: {repeated['responses']} responses found in more than "
        f"one conversation ({repeated['occurrences']} occurrences, "
        f"{repeated['conversations']} conversations)")
    for r in repeated["top"]:
        out(f"  {r['conversations']}x {r['preview']!r}")
