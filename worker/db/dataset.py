"""SQL of the dataset tools: export selection and stream, contract checks, composition.

The scaffolding keys an export filters and stratifies on are those of the
stored enriched document (`enriched_json -> 'input_parameters'`), the same
values its rows carry as metadata columns, so a filter and the file it
produces always agree (a legacy row whose only scaffolding is the parsed
document's copy is found too). Each jsonb value is read once per row in an
`OFFSET 0` subquery (the fence keeps the planner from repeating the
extraction, which would decompress the ~50 kB document again for every use).

Reads stream through server-side cursors, so memory stays flat whatever the
table size; the caller holds one REPEATABLE READ transaction so that the
selection pass and the stream pass see the same rows.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, String, bindparam, text

from worker.enrichment.models import QualityTier

STREAM_BATCH = 100  # documents per fetch (~50 kB each)
SELECTION_BATCH = 5000
SLICE_BATCH = 1000  # ids per statement when a slice of an export is read (`stream_slice`)
SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$")  # pg_export_snapshot()

QUALITY_TIERS = tuple(tier.value for tier in QualityTier)  # best first
REJECTED_TIER = QualityTier.REJECTED.value
DEFAULT_QUALITY_SCORE = 3.0  # the contract's score for a row without one


@dataclass(frozen=True, slots=True)
class DatasetFilters:
    """`reenrich export` filters; empty tuples and None mean "no filter"."""

    personas: tuple[str, ...] = ()
    arcs: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    min_quality: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    require_scaffolding: bool = False
    exclude_failed: bool = False
    # Quality tier `rejected` is left out unless kept (`--include-rejected-tier`) or
    # asked for by name (`--tier rejected`).
    include_rejected_tier: bool = False

    def params(self) -> dict[str, Any]:
        return {
            "personas": list(self.personas) or None,
            "arcs": list(self.arcs) or None,
            "topics": list(self.topics) or None,
            "tiers": list(self.tiers) or None,
            "min_quality": self.min_quality,
            "since": self.since,
            "until": self.until,
            "require_scaffolding": self.require_scaffolding,
            "exclude_failed": self.exclude_failed,
            "exclude_rejected_tier": not self.include_rejected_tier
                                     and REJECTED_TIER not in self.tiers,
            "rejected_tier": REJECTED_TIER,
            "default_score": DEFAULT_QUALITY_SCORE,
        }

    def as_json(self) -> dict[str, Any]:
        """The filters in use, for reports and dataset cards."""
        out: dict[str, Any] = {}
        for name, value in (("persona", self.personas), ("arc", self.arcs),
                            ("topic", self.topics), ("tier", self.tiers)):
            if value:
                out[name] = list(value)
        if self.min_quality is not None:
            out["min_quality"] = self.min_quality
        if self.since is not None:
            out["since"] = self.since.isoformat()
        if self.until is not None:
            out["until"] = self.until.isoformat()
        if self.require_scaffolding:
            out["require_scaffolding"] = True
        if self.exclude_failed:
            out["exclude_failed"] = True
        if self.include_rejected_tier:
            out["include_rejected_tier"] = True
        return out


# One row per conversation, each jsonb part extracted once (the OFFSET 0 fence).
_KEYED = """
SELECT c.conversation_id,
       c.created_at,
       c.enrichment_version,
       c.enriched_json                                        AS document,
       c.enriched_json IS NOT NULL                            AS enriched,
       COALESCE(c.quality_score, CAST(:default_score AS double precision)) AS quality,
       c.enriched_json -> 'input_parameters'                  AS params,
       c.enriched_json #>> '{dataset_metadata,quality_tier}'  AS tier,
       EXISTS (SELECT 1 FROM enrichment_failures f
               WHERE f.conversation_id = c.conversation_id
                 AND f.resolved_at IS NULL)                   AS open_failure
FROM conversations c
OFFSET 0
"""

_KEYS = """
SELECT k.*,
       k.params ->> 'persona_key'        AS persona_key,
       k.params ->> 'emotional_arc_key'  AS arc_key,
       k.params ->> 'training_topic_key' AS topic_key
FROM (""" + _KEYED + """) k
"""

# Why a conversation is left out: the first filter it fails, in this order
# (so every conversation is counted once and the reasons add up).
_EXCLUDED_BY = """
CASE
  WHEN CAST(:since AS timestamptz) IS NOT NULL AND s.created_at < :since THEN 'since'
  WHEN CAST(:until AS timestamptz) IS NOT NULL AND s.created_at >= :until THEN 'until'
  WHEN NOT s.enriched THEN 'not_enriched'
  WHEN CAST(:personas AS text[]) IS NOT NULL
       AND NOT COALESCE(s.persona_key = ANY(CAST(:personas AS text[])), false) THEN 'persona'
  WHEN CAST(:arcs AS text[]) IS NOT NULL
       AND NOT COALESCE(s.arc_key = ANY(CAST(:arcs AS text[])), false) THEN 'arc'
  WHEN CAST(:topics AS text[]) IS NOT NULL
       AND NOT COALESCE(s.topic_key = ANY(CAST(:topics AS text[])), false) THEN 'topic'
  WHEN CAST(:require_scaffolding AS boolean)
       AND (s.persona_key IS NULL OR s.arc_key IS NULL OR s.topic_key IS NULL)
       THEN 'missing_scaffolding'
  WHEN CAST(:tiers AS text[]) IS NOT NULL
       AND NOT COALESCE(s.tier = ANY(CAST(:tiers AS text[])), false) THEN 'tier'
  WHEN CAST(:exclude_rejected_tier AS boolean) AND s.tier = CAST(:rejected_tier AS text)
       THEN 'rejected_tier'
  WHEN CAST(:min_quality AS double precision) IS NOT NULL
       AND s.quality < CAST(:min_quality AS double precision) THEN 'min_quality'
  WHEN CAST(:exclude_failed AS boolean) AND s.open_failure THEN 'failed'
END
"""

SELECTION_SQL = text("""
SELECT s.conversation_id, s.enrichment_version, s.persona_key, s.arc_key, s.topic_key,
""" + _EXCLUDED_BY + """ AS excluded_by
FROM (""" + _KEYS + """) s
""")

STREAM_SQL = text("""
SELECT s.conversation_id, s.enrichment_version, CAST(s.document AS text) AS document
FROM (""" + _KEYS + """) s
WHERE (""" + _EXCLUDED_BY + """) IS NULL
  AND (CAST(:ids AS uuid[]) IS NULL OR s.conversation_id = ANY(CAST(:ids AS uuid[])))
ORDER BY s.created_at, s.conversation_id
""")


@dataclass(frozen=True, slots=True)
class Candidate:
    conversation_id: uuid.UUID
    enrichment_version: int | None
    persona: str | None
    arc: str | None
    topic: str | None
    excluded_by: str | None  # the first filter that leaves it out, or None

    def keys(self) -> dict[str, str | None]:
        return {"persona": self.persona, "arc": self.arc, "topic": self.topic}


def begin_snapshot(conn: Connection) -> None:
    """Make the caller's transaction a read-only snapshot (both export passes see it)."""
    conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))


def select_candidates(conn: Connection, filters: DatasetFilters) -> Iterator[Candidate]:
    """Every conversation with its scaffolding keys and why a filter leaves it out."""
    result = conn.execution_options(stream_results=True, yield_per=SELECTION_BATCH).execute(
        SELECTION_SQL, filters.params())
    for row in result:
        yield Candidate(row.conversation_id, row.enrichment_version, row.persona_key,
                        row.arc_key, row.topic_key, row.excluded_by)


def stream_documents(conn: Connection, filters: DatasetFilters,
                     ids: Sequence[uuid.UUID] | None,
                     ) -> Iterator[tuple[uuid.UUID, int | None, str]]:
    """(conversation_id, enrichment_version, enriched JSON text) of the kept conversations,
    in export order.

    `ids` narrows to a sample (None: every conversation the filters keep).
    """
    params = {**filters.params(), "ids": list(ids) if ids is not None else None}
    result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(
        STREAM_SQL, params)
    for row in result:
        yield row.conversation_id, row.enrichment_version, row.document


# ------------------------------------------------------------ slices (export --workers)

# The kept conversations that have a document, in the order STREAM_SQL streams them.
EXPORT_ORDER_SQL = text("""
SELECT c.conversation_id
FROM conversations c
WHERE c.conversation_id = ANY(CAST(:ids AS uuid[]))
  AND c.enriched_json IS NOT NULL
ORDER BY c.created_at, c.conversation_id
""")

# One batch of a slice: the selection pass already applied the filters to these ids.
SLICE_SQL = text("""
SELECT c.conversation_id, c.enrichment_version, CAST(c.enriched_json AS text) AS document
FROM conversations c
WHERE c.conversation_id = ANY(CAST(:ids AS uuid[]))
  AND c.enriched_json IS NOT NULL
ORDER BY c.created_at, c.conversation_id
""")

EXPORT_SNAPSHOT_SQL = text("SELECT pg_export_snapshot()")
# SET takes no bound parameter: the id is rendered as a quoted literal by SQLAlchemy.
IMPORT_SNAPSHOT_SQL = text("SET TRANSACTION SNAPSHOT :snapshot").bindparams(
    bindparam("snapshot", type_=String(), literal_execute=True))


def export_snapshot(conn: Connection) -> str:
    """The id of the caller's snapshot, for other connections to read the same rows.

    Valid while the caller's transaction stays open (see `import_snapshot`).
    """
    snapshot: str = conn.execute(EXPORT_SNAPSHOT_SQL).scalar_one()
    return snapshot


def import_snapshot(conn: Connection, snapshot: str) -> None:
    """Make the caller's new transaction see `snapshot` (after `begin_snapshot`, before any
    query): a slice reads exactly what the export's selection pass saw."""
    if not SNAPSHOT_ID.match(snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    conn.execute(IMPORT_SNAPSHOT_SQL, {"snapshot": snapshot})


def export_order(conn: Connection, ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """`ids` that have a document, ordered as the export streams (created_at, id)."""
    return [row.conversation_id for row in conn.execute(EXPORT_ORDER_SQL, {"ids": list(ids)})]


def stream_slice(conn: Connection, ids: Sequence[uuid.UUID],
                 ) -> Iterator[tuple[uuid.UUID, int | None, str]]:
    """As `stream_documents`, for `ids` already in export order (a contiguous slice of
    `export_order`): read SLICE_BATCH ids per statement, so order holds across batches."""
    for start in range(0, len(ids), SLICE_BATCH):
        result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(
            SLICE_SQL, {"ids": list(ids[start:start + SLICE_BATCH])})
        for row in result:
            yield row.conversation_id, row.enrichment_version, row.document


# ------------------------------------------------------------ validate


def stream_stored_documents(conn: Connection) -> Iterator[tuple[uuid.UUID, str]]:
    """(conversation_id, enriched JSON text) of every enriched row, in id order."""
    result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(text(
        "SELECT conversation_id, CAST(enriched_json AS text) AS document FROM conversations "
        "WHERE enriched_json IS NOT NULL ORDER BY conversation_id"))
    for row in result:
        yield row.conversation_id, row.document


# Pair ids used by more than one pair across the whole table (the server
# aggregates; Python would need every id in memory).
DUPLICATE_PAIR_IDS_SQL = text("""
SELECT p.pair ->> 'id' AS pair_id,
       array_agg(DISTINCT c.conversation_id ORDER BY c.conversation_id) AS conversation_ids,
       count(*) AS uses
FROM conversations c
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(c.enriched_json -> 'training_pairs') = 'array'
         THEN c.enriched_json -> 'training_pairs' ELSE '[]'::jsonb END) AS p(pair)
WHERE c.enriched_json IS NOT NULL
GROUP BY 1
HAVING count(*) > 1
ORDER BY 1
""")


def duplicate_pair_ids(conn: Connection) -> list[tuple[str | None, list[uuid.UUID], int]]:
    return [(row.pair_id, list(row.conversation_ids), int(row.uses))
            for row in conn.execute(DUPLICATE_PAIR_IDS_SQL)]


# ------------------------------------------------------------ composition (stats)

# Counts, pairs and average quality for every crossing of persona, arc and
# topic (CUBE: the whole set, each key alone, each pair, the triple).
# `g` is GROUPING(): bit 2 persona, bit 1 arc, bit 0 topic set when rolled up.
COMPOSITION_SQL = text("""
SELECT d.params ->> 'persona_key'        AS persona,
       d.params ->> 'emotional_arc_key'  AS arc,
       d.params ->> 'training_topic_key' AS topic,
       GROUPING(d.params ->> 'persona_key', d.params ->> 'emotional_arc_key',
                d.params ->> 'training_topic_key') AS g,
       count(*)                AS conversations,
       sum(d.pairs)            AS pairs,
       sum(d.assistant_pairs)  AS assistant_pairs,
       avg(d.quality)          AS avg_quality
FROM (
    SELECT c.enriched_json -> 'input_parameters' AS params,
           jsonb_array_length(jsonb_path_query_array(
               c.enriched_json, '$.training_pairs[*]')) AS pairs,
           jsonb_array_length(jsonb_path_query_array(
               c.enriched_json, '$.training_pairs[*] ? (@.target_response != null)'))
               AS assistant_pairs,
           COALESCE(c.quality_score, CAST(:default_score AS double precision)) AS quality
    FROM conversations c
    WHERE c.enriched_json IS NOT NULL
    OFFSET 0
) d
GROUP BY CUBE (d.params ->> 'persona_key', d.params ->> 'emotional_arc_key',
               d.params ->> 'training_topic_key')
""")

OVERVIEW_SQL = text("""
SELECT count(*)                                                      AS conversations,
       count(*) FILTER (WHERE c.enriched_json IS NOT NULL)           AS enriched,
       count(*) FILTER (WHERE jsonb_typeof(c.parsed_json) = 'object'
                        AND NOT c.parsed_json ? 'input_parameters')  AS legacy,
       count(*) FILTER (WHERE c.persona_id IS NULL AND c.emotional_arc_id IS NULL
                        AND c.training_topic_id IS NULL)             AS no_reference,
       count(*) FILTER (WHERE c.enrichment_status = 'failed')        AS status_failed,
       count(*) FILTER (WHERE c.enrichment_status = 'pending')       AS status_pending
FROM conversations c
""")

SCAFFOLDING_SQL = text("""
SELECT count(*) FILTER (WHERE num_nulls(d.persona, d.arc, d.topic) = 3)           AS no_scaffolding,
       count(*) FILTER (WHERE num_nulls(d.persona, d.arc, d.topic) BETWEEN 1 AND 2) AS partial,
       count(*) FILTER (WHERE num_nulls(d.persona, d.arc, d.topic) = 0)             AS complete
FROM (
    SELECT c.enriched_json -> 'input_parameters' AS params
    FROM conversations c
    WHERE c.enriched_json IS NOT NULL
    OFFSET 0
) p
CROSS JOIN LATERAL (SELECT p.params ->> 'persona_key' AS persona,
                           p.params ->> 'emotional_arc_key' AS arc,
                           p.params ->> 'training_topic_key' AS topic) d
""")

TIERS_SQL = text("""
SELECT c.enriched_json #>> '{dataset_metadata,quality_tier}' AS tier, count(*) AS n
FROM conversations c
WHERE c.enriched_json IS NOT NULL
GROUP BY 1
ORDER BY 1
""")

VERSIONS_SQL = text("""
SELECT c.enrichment_version AS version, count(*) AS n
FROM conversations c
WHERE c.enriched_json IS NOT NULL
GROUP BY 1
ORDER BY 1 NULLS FIRST
""")

OPEN_FAILURES_SQL = text("""
SELECT f.error_code, count(*) AS n
FROM enrichment_failures f
WHERE f.resolved_at IS NULL
GROUP BY 1
ORDER BY 2 DESC, 1
""")

# Every key the scaffolding tables know, so empty cells can be named.
KNOWN_KEYS_SQL = text("""
SELECT 'persona' AS kind, persona_key AS key FROM personas
UNION ALL SELECT 'arc', arc_key FROM emotional_arcs
UNION ALL SELECT 'topic', topic_key FROM training_topics
ORDER BY 1, 2
""")


@dataclass(frozen=True, slots=True)
class CompositionRow:
    """One crossing of COMPOSITION_SQL; `g` is its GROUPING() bits."""

    persona: str | None
    arc: str | None
    topic: str | None
    g: int
    conversations: int
    pairs: int
    assistant_pairs: int
    avg_quality: float | None

    def key(self, dimension: str) -> str | None:
        """The row's persona, arc or topic key (None: null, or rolled up)."""
        keys = {"persona": self.persona, "arc": self.arc, "topic": self.topic}
        return keys[dimension]


@dataclass(frozen=True, slots=True)
class Overview:
    conversations: int
    enriched: int
    legacy: int  # parsed_json without input_parameters
    no_reference: int  # no persona, arc or topic reference
    status_failed: int
    status_pending: int


@dataclass(frozen=True, slots=True)
class ScaffoldingCoverage:
    """Enriched documents by how much of persona, arc and topic they carry."""

    no_scaffolding: int
    partial: int
    complete: int


def composition(conn: Connection) -> list[CompositionRow]:
    return [CompositionRow(
        persona=row.persona, arc=row.arc, topic=row.topic, g=int(row.g),
        conversations=int(row.conversations), pairs=int(row.pairs or 0),
        assistant_pairs=int(row.assistant_pairs or 0),
        avg_quality=float(row.avg_quality) if row.avg_quality is not None else None)
        for row in conn.execute(COMPOSITION_SQL, {"default_score": DEFAULT_QUALITY_SCORE})]


def overview(conn: Connection) -> Overview:
    row = conn.execute(OVERVIEW_SQL).one()
    return Overview(conversations=int(row.conversations), enriched=int(row.enriched),
                    legacy=int(row.legacy), no_reference=int(row.no_reference),
                    status_failed=int(row.status_failed), status_pending=int(row.status_pending))


def scaffolding_coverage(conn: Connection) -> ScaffoldingCoverage:
    row = conn.execute(SCAFFOLDING_SQL).one()
    return ScaffoldingCoverage(no_scaffolding=int(row.no_scaffolding), partial=int(row.partial),
                               complete=int(row.complete))


def tier_counts(conn: Connection) -> dict[str | None, int]:
    return {row.tier: int(row.n) for row in conn.execute(TIERS_SQL)}


def version_counts(conn: Connection) -> dict[int | None, int]:
    return {row.version: int(row.n) for row in conn.execute(VERSIONS_SQL)}


def open_failure_counts(conn: Connection) -> dict[str, int]:
    return {row.error_code: int(row.n) for row in conn.execute(OPEN_FAILURES_SQL)}


def known_keys(conn: Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"persona": [], "arc": [], "topic": []}
    for row in conn.execute(KNOWN_KEYS_SQL):
        out[row.kind].append(row.key)
    return out
