"""SQL of human review: recording reviews, the pairs a sheet lists, listing, coverage.

The text a review is checked against is the pair as it stands in the stored
enriched document. The SQL functions `review_content_sha256` and
`review_is_stale` (migration 0006) are `worker.enrichment.models.content_sha256` on
the server (a test keeps the two equal), so staleness is decided there for
any number of reviews.
A pair is reviewable when it is an assistant pair (a string target_response)
with a whole turn number.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from worker.dataset.reviews import ReviewInput

STREAM_BATCH = 500

PAIR_HASHES_SQL = text("""
SELECT DISTINCT ON (c.conversation_id, CAST(p.pair ->> 'turn_number' AS integer))
       c.conversation_id,
       CAST(p.pair ->> 'turn_number' AS integer) AS turn_number,
       review_content_sha256(p.pair ->> 'current_user_input', p.pair ->> 'target_response')
           AS content_sha256
FROM conversations c
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(c.enriched_json -> 'training_pairs') = 'array'
         THEN c.enriched_json -> 'training_pairs' ELSE '[]'::jsonb END)
    WITH ORDINALITY AS p(pair, n)
WHERE c.conversation_id = ANY(CAST(:ids AS uuid[]))
  AND c.enriched_json IS NOT NULL
  AND jsonb_typeof(p.pair -> 'target_response') = 'string'
  AND p.pair ->> 'turn_number' ~ '^[0-9]{1,9}$'
ORDER BY c.conversation_id, CAST(p.pair ->> 'turn_number' AS integer), p.n
""")

# Recorders of the same conversation take turns (the current-review index
# would refuse the second otherwise); ids in order, so two never deadlock.
LOCK_SQL = text("""
SELECT count(pg_advisory_xact_lock(hashtextextended(CAST(s.id AS text), 7265)))
FROM (SELECT DISTINCT id FROM unnest(CAST(:ids AS uuid[])) AS id ORDER BY id) s
""")

SUPERSEDE_SQL = text("""
UPDATE reviews AS r
SET superseded_at = clock_timestamp()
FROM unnest(CAST(:ids AS uuid[]), CAST(:turns AS integer[])) AS k(conversation_id, turn_number)
WHERE r.superseded_at IS NULL
  AND r.conversation_id = k.conversation_id AND r.turn_number = k.turn_number
""")

# A pair named twice in one batch: the earlier rows go straight to history.
INSERT_SQL = text("""
INSERT INTO reviews (conversation_id, turn_number, status, reviewer, notes,
                     use_as_seed_example, generate_variations_count, reviewed_at,
                     content_sha256, source, superseded_at)
SELECT i.conversation_id, i.turn_number, i.status, i.reviewer, i.notes, i.seed, i.variations,
       COALESCE(i.reviewed_at, now()), i.sha, :source,
       CASE WHEN i.replaced THEN clock_timestamp() END
FROM unnest(CAST(:ids AS uuid[]), CAST(:turns AS integer[]), CAST(:statuses AS text[]),
            CAST(:reviewers AS text[]), CAST(:notes AS text[]), CAST(:seeds AS boolean[]),
            CAST(:variations AS integer[]), CAST(:reviewed_ats AS timestamptz[]),
            CAST(:shas AS text[]), CAST(:replaced AS boolean[]))
     WITH ORDINALITY AS i(conversation_id, turn_number, status, reviewer, notes, seed,
                          variations, reviewed_at, sha, replaced, n)
ORDER BY i.n
""")


def pair_hashes(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[tuple[uuid.UUID, int], str]:
    """(conversation_id, turn_number) -> content_sha256 of the reviewable pairs of `ids`."""
    rows = conn.execute(PAIR_HASHES_SQL, {"ids": list(dict.fromkeys(ids))})
    return {(row.conversation_id, row.turn_number): row.content_sha256 for row in rows}


def record(conn: Connection, reviews: Sequence[ReviewInput], source: str) -> int:
    """Record `reviews` in the caller's transaction; each becomes its pair's current one."""
    if not reviews:
        return 0
    last = {(r.conversation_id, r.turn_number): i for i, r in enumerate(reviews)}
    keys = list(last)
    conn.execute(LOCK_SQL, {"ids": [k[0] for k in keys]})
    conn.execute(SUPERSEDE_SQL, {"ids": [k[0] for k in keys], "turns": [k[1] for k in keys]})
    conn.execute(INSERT_SQL, {
        "source": source,
        "ids": [r.conversation_id for r in reviews],
        "turns": [r.turn_number for r in reviews],
        "statuses": [r.status.value for r in reviews],
        "reviewers": [r.reviewer for r in reviews],
        "notes": [r.notes for r in reviews],
        "seeds": [r.use_as_seed_example for r in reviews],
        "variations": [r.generate_variations_count for r in reviews],
        "reviewed_ats": [r.reviewed_at for r in reviews],
        "shas": [r.content_sha256 for r in reviews],
        "replaced": [last[(r.conversation_id, r.turn_number)] != i
                     for i, r in enumerate(reviews)],
    })
    return len(reviews)


# ------------------------------------------------------------------ list

LIST_SQL = text("""
SELECT r.conversation_id, r.turn_number, r.status, r.reviewer, r.notes,
       r.use_as_seed_example, r.generate_variations_count, r.reviewed_at, r.content_sha256,
       r.source, r.recorded_at, r.superseded_at,
       review_is_stale(c.enriched_json, r.turn_number, r.content_sha256) AS stale
FROM reviews r
JOIN conversations c ON c.conversation_id = r.conversation_id
WHERE (CAST(:history AS boolean) OR r.superseded_at IS NULL)
  AND (NOT CAST(:stale_only AS boolean)
       OR review_is_stale(c.enriched_json, r.turn_number, r.content_sha256))
  AND (CAST(:status AS text) IS NULL OR r.status = :status)
  AND (CAST(:reviewer AS text) IS NULL OR r.reviewer = :reviewer)
ORDER BY r.conversation_id, r.turn_number, r.recorded_at, r.id
""")


@dataclass(frozen=True, slots=True)
class StoredReview:
    conversation_id: uuid.UUID
    turn_number: int
    status: str
    reviewer: str
    notes: str | None
    use_as_seed_example: bool
    generate_variations_count: int
    reviewed_at: datetime
    content_sha256: str
    source: str
    recorded_at: datetime
    superseded_at: datetime | None
    stale: bool


def list_reviews(conn: Connection, *, stale_only: bool = False, status: str | None = None,
                 reviewer: str | None = None, history: bool = False) -> list[StoredReview]:
    rows = conn.execute(LIST_SQL, {"stale_only": stale_only, "status": status,
                                   "reviewer": reviewer, "history": history})
    return [StoredReview(**row._mapping) for row in rows]


# ------------------------------------------------------------------ sheet

# Per conversation: its scaffolding keys (those exports stratify on) and how
# many of its reviewable pairs each selection would list.
SHEET_CANDIDATES_SQL = text("""
SELECT c.conversation_id,
       min(c.enriched_json #>> '{input_parameters,persona_key}')        AS persona_key,
       min(c.enriched_json #>> '{input_parameters,emotional_arc_key}')  AS arc_key,
       min(c.enriched_json #>> '{input_parameters,training_topic_key}') AS topic_key,
       count(*) FILTER (WHERE r.id IS NULL) AS unreviewed,
       count(*) FILTER (WHERE r.id IS NOT NULL AND r.content_sha256 <> review_content_sha256(
                            p.pair ->> 'current_user_input', p.pair ->> 'target_response'))
           AS stale,
       count(*) AS all_pairs
FROM conversations c
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(c.enriched_json -> 'training_pairs') = 'array'
         THEN c.enriched_json -> 'training_pairs' ELSE '[]'::jsonb END) AS p(pair)
LEFT JOIN reviews r ON r.conversation_id = c.conversation_id AND r.superseded_at IS NULL
                   AND CAST(r.turn_number AS text) = p.pair ->> 'turn_number'
WHERE c.enriched_json IS NOT NULL
  AND jsonb_typeof(p.pair -> 'target_response') = 'string'
  AND p.pair ->> 'turn_number' ~ '^[0-9]{1,9}$'
GROUP BY c.conversation_id
ORDER BY c.conversation_id
""")

SHEET_ROWS_SQL = text("""
SELECT s.*
FROM (
    SELECT c.conversation_id, c.created_at, p.n,
           CAST(p.pair ->> 'turn_number' AS integer)                AS turn_number,
           p.pair #>> '{conversation_metadata,persona_archetype}'  AS persona_archetype,
           p.pair #>> '{conversation_metadata,emotional_arc_key}'  AS emotional_arc_key,
           p.pair #>> '{conversation_metadata,training_topic_key}' AS training_topic_key,
           c.enriched_json #>> '{dataset_metadata,quality_tier}'   AS quality_tier,
           COALESCE(p.pair ->> 'current_user_input', '')           AS current_user_input,
           p.pair ->> 'target_response'                            AS target_response,
           review_content_sha256(p.pair ->> 'current_user_input',
                                 p.pair ->> 'target_response')     AS content_sha256,
           r.content_sha256                                        AS review_sha256
    FROM conversations c
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(c.enriched_json -> 'training_pairs') = 'array'
             THEN c.enriched_json -> 'training_pairs' ELSE '[]'::jsonb END)
        WITH ORDINALITY AS p(pair, n)
    LEFT JOIN reviews r ON r.conversation_id = c.conversation_id AND r.superseded_at IS NULL
                       AND CAST(r.turn_number AS text) = p.pair ->> 'turn_number'
    WHERE c.enriched_json IS NOT NULL
      AND jsonb_typeof(p.pair -> 'target_response') = 'string'
      AND p.pair ->> 'turn_number' ~ '^[0-9]{1,9}$'
      AND (CAST(:ids AS uuid[]) IS NULL OR c.conversation_id = ANY(CAST(:ids AS uuid[])))
) s
WHERE CASE CAST(:selection AS text)
        WHEN 'unreviewed' THEN s.review_sha256 IS NULL
        WHEN 'stale' THEN s.review_sha256 IS NOT NULL AND s.review_sha256 <> s.content_sha256
        ELSE true END
ORDER BY s.created_at, s.conversation_id, s.n
""")


@dataclass(frozen=True, slots=True)
class SheetCandidate:
    conversation_id: uuid.UUID
    keys: dict[str, str | None]
    counts: dict[str, int]  # unreviewed, stale, all


def sheet_candidates(conn: Connection) -> Iterator[SheetCandidate]:
    result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(
        SHEET_CANDIDATES_SQL)
    for row in result:
        yield SheetCandidate(
            row.conversation_id,
            {"persona": row.persona_key, "arc": row.arc_key, "topic": row.topic_key},
            {"unreviewed": int(row.unreviewed), "stale": int(row.stale),
             "all": int(row.all_pairs)})


def sheet_rows(conn: Connection, selection: str, ids: Sequence[uuid.UUID] | None,
               ) -> Iterator[Any]:
    """The pairs to list, in export order (created_at, conversation_id, pair order)."""
    result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(
        SHEET_ROWS_SQL, {"selection": selection, "ids": list(ids) if ids is not None else None})
    yield from result


# ------------------------------------------------------------------ coverage (stats)

# Current reviews by persona, arc and topic (each alone, and all of them):
# `g` is GROUPING() with bit 2 persona, bit 1 arc, bit 0 topic set when rolled up.
COVERAGE_SQL = text("""
SELECT d.persona, d.arc, d.topic, GROUPING(d.persona, d.arc, d.topic) AS g,
       count(*) FILTER (WHERE NOT d.stale)                                 AS reviewed,
       count(*) FILTER (WHERE NOT d.stale AND d.status = 'approved')       AS approved,
       count(*) FILTER (WHERE NOT d.stale AND d.status = 'rejected')       AS rejected,
       count(*) FILTER (WHERE NOT d.stale AND d.status = 'needs_revision') AS needs_revision,
       count(*) FILTER (WHERE NOT d.stale AND d.use_as_seed_example)       AS seed_examples,
       count(*) FILTER (WHERE d.stale)                                     AS stale
FROM (
    SELECT c.enriched_json #>> '{input_parameters,persona_key}'        AS persona,
           c.enriched_json #>> '{input_parameters,emotional_arc_key}'  AS arc,
           c.enriched_json #>> '{input_parameters,training_topic_key}' AS topic,
           r.status, r.use_as_seed_example,
           review_is_stale(c.enriched_json, r.turn_number, r.content_sha256) AS stale
    FROM reviews r
    JOIN conversations c ON c.conversation_id = r.conversation_id
    WHERE r.superseded_at IS NULL
) d
GROUP BY GROUPING SETS ((), (d.persona), (d.arc), (d.topic))
""")


def coverage(conn: Connection) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(COVERAGE_SQL)]
