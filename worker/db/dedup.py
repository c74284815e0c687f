"""SQL of `reenrich dedup`: signatures, buckets, verified pairs, clusters, reports.

What changed is found by PostgreSQL itself: the md5 of the stored turns
(`parsed_json -> 'turns'`) against the one stored with the signature, so an
incremental run sends the worker only the rows that changed. Buckets and
pairs are keyed by the text's hash (see migration 0007).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, text

from worker.dataset.dedup import Layout, Member, Sketch

LOCK_KEY = 0x7265656E_64656470  # pg advisory lock: one dedup run at a time
CANDIDATE_BATCH = 2000


def try_lock(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                             {"key": LOCK_KEY}).scalar_one())


def unlock(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})


# ------------------------------------------------------------------ runs


def start_run(conn: Connection, threshold: float, scope: str, method: str, layout: str) -> int:
    return int(conn.execute(text(
        "INSERT INTO dedup_runs (threshold, scope, method, layout) "
        "VALUES (:threshold, :scope, :method, :layout) RETURNING id"),
        {"threshold": threshold, "scope": scope, "method": method, "layout": layout}
    ).scalar_one())


def finish_run(conn: Connection, run_id: int, summary: str) -> None:
    conn.execute(text(
        "UPDATE dedup_runs SET status = 'succeeded', finished_at = now(), "
        "summary = CAST(:summary AS jsonb) WHERE id = :id"), {"id": run_id, "summary": summary})


def fail_run(conn: Connection, run_id: int, error: str) -> None:
    conn.execute(text(
        "UPDATE dedup_runs SET status = 'failed', finished_at = now(), last_error = :error "
        "WHERE id = :id"), {"id": run_id, "error": error})


def last_run(conn: Connection) -> dict[str, Any] | None:
    row = conn.execute(text(
        "SELECT id, threshold, scope, method, layout, summary, started_at, finished_at "
        "FROM dedup_runs WHERE status = 'succeeded' ORDER BY id DESC LIMIT 1")).mappings().first()
    return dict(row) if row else None


# ------------------------------------------------------------------ signatures

# One window of the table in id order. A row not updated since it was signed
# (same xmin) is skipped without reading its documents; for the others
# PostgreSQL hashes the stored turns, and only rows whose turns changed (or
# that have no signature of this method) are read in full (`turns_of`).
_WINDOW = text("""
SELECT c.conversation_id, CAST(CAST(c.xmin AS text) AS bigint) AS row_xmin,
       CASE WHEN s.conversation_id IS NULL OR s.method <> :method
                 OR s.row_xmin <> CAST(CAST(c.xmin AS text) AS bigint)
            THEN jsonb_hash_extended(c.parsed_json -> 'turns', 0) END AS source_hash,
       CASE WHEN s.method = :method THEN s.source_hash END AS old_source_hash,
       CASE WHEN s.method = :method THEN s.text_hash END AS old_text_hash
FROM conversations c
LEFT JOIN dedup_signatures s ON s.conversation_id = c.conversation_id
WHERE CAST(:after AS uuid) IS NULL OR c.conversation_id > :after
ORDER BY c.conversation_id
LIMIT :limit
""")


@dataclass(frozen=True, slots=True)
class Seen:
    """A row of a window that was updated since it was signed (or never was)."""

    conversation_id: uuid.UUID
    row_xmin: int
    source_hash: int
    old_source_hash: int | None
    old_text_hash: bytes | None

    @property
    def turns_changed(self) -> bool:
        return self.old_source_hash is None or self.old_source_hash != self.source_hash


@dataclass(frozen=True, slots=True)
class Window:
    scanned: int
    last: uuid.UUID | None
    updated: list[Seen]


def read_window(conn: Connection, after: uuid.UUID | None, limit: int, method: str) -> Window:
    rows = conn.execute(_WINDOW, {"after": after, "limit": limit, "method": method}).all()
    updated = [Seen(r.conversation_id, int(r.row_xmin), int(r.source_hash), r.old_source_hash,
                    bytes(r.old_text_hash) if r.old_text_hash is not None else None)
               for r in rows if r.source_hash is not None]
    return Window(scanned=len(rows), last=rows[-1].conversation_id if rows else None,
                  updated=updated)


def turns_of(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The stored turns of these conversations, as JSON text."""
    if not ids:
        return {}
    rows = conn.execute(text("""
        SELECT conversation_id, COALESCE((parsed_json -> 'turns')::text, 'null') AS turns
        FROM conversations WHERE conversation_id = ANY(:ids)
    """), {"ids": list(ids)}).all()
    return {r.conversation_id: r.turns for r in rows}


def count_conversations(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM conversations")).scalar_one())


def _raw(conn: Connection) -> psycopg.Connection[Any]:
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def _copy(conn: Connection, table: str, rows: Iterable[Sequence[Any]]) -> None:
    """COPY rows into one of this module's staging tables (cheaper than bound arrays)."""
    conn.execute(text(_STAGES[table]))
    with _raw(conn).cursor().copy(_COPY_INTO[table]) as copy:
        for row in rows:
            copy.write_row(row)


# Staging tables (temporary, emptied at commit) and their COPY statements.
_STAGES = {
    "signatures": """CREATE TEMPORARY TABLE IF NOT EXISTS dedup_stage_signatures (
        conversation_id uuid, row_xmin bigint, source_hash bigint, text_hash bytea,
        signature bytea, shingles integer, responses bytea[], previews text[])
        ON COMMIT DELETE ROWS""",
}
_COPY_INTO = {
    "signatures": "COPY dedup_stage_signatures (conversation_id, row_xmin, source_hash, "
                  "text_hash, signature, shingles, responses, previews) FROM STDIN",
}


def write_sketches(conn: Connection, sketches: Sequence[Sketch], method: str,
                   layout: Layout) -> None:
    """Store new signatures (pending: their pairs are to be searched) and their buckets."""
    if not sketches:
        return
    _copy(conn, "signatures", ((s.conversation_id, s.row_xmin, s.source_hash, s.text_hash,
                                s.signature, s.shingles, [h for h, _ in s.responses],
                                [p for _, p in s.responses]) for s in sketches))
    conn.execute(text("""
        INSERT INTO dedup_signatures AS s (conversation_id, method, row_xmin, source_hash,
                                           text_hash, signature, shingles, layout, pending,
                                           responses, previews)
        SELECT conversation_id, :method, row_xmin, source_hash, text_hash, signature, shingles,
               :layout, true, responses, previews
        FROM dedup_stage_signatures
        ON CONFLICT (conversation_id) DO UPDATE
        SET method = EXCLUDED.method, row_xmin = EXCLUDED.row_xmin,
            source_hash = EXCLUDED.source_hash,
            text_hash = EXCLUDED.text_hash, signature = EXCLUDED.signature,
            shingles = EXCLUDED.shingles, layout = EXCLUDED.layout, pending = true,
            responses = EXCLUDED.responses, previews = EXCLUDED.previews,
            computed_at = now()
    """), {"method": method, "layout": layout.name})
    conn.execute(text("DELETE FROM dedup_stage_signatures"))
    # A text's buckets are remade from its new signature (upserted: one row per text).
    insert_buckets(conn, list({s.text_hash for s in sketches}), layout)


# A band's bucket: PostgreSQL's stable 64-bit text hash (the one hash partitioning
# relies on) of the band's values, seeded with the band number and width.
_BUCKETS = text("""
INSERT INTO dedup_buckets (text_hash, buckets)
SELECT s.text_hash,
       ARRAY(SELECT hashtextextended(encode(substr(s.signature, band * :width + 1, :width),
                                            'hex'), band * 1000 + :rows)
             FROM generate_series(0, :bands - 1) AS band ORDER BY band)
FROM (SELECT DISTINCT ON (text_hash) text_hash, signature FROM dedup_signatures
      WHERE text_hash = ANY(:hashes) ORDER BY text_hash) s
ON CONFLICT (text_hash) DO UPDATE SET buckets = EXCLUDED.buckets
""")


def insert_buckets(conn: Connection, text_hashes: Sequence[bytes], layout: Layout) -> None:
    conn.execute(_BUCKETS, {"hashes": list(text_hashes), "width": 4 * layout.rows,
                            "rows": layout.rows, "bands": layout.bands})


def touch(conn: Connection, seen: Sequence[Seen]) -> None:
    """Rows updated with their turns unchanged: the signature stays, the row's xmin is
    recorded (the next run skips them)."""
    if seen:
        conn.execute(text("""
            UPDATE dedup_signatures s SET row_xmin = u.row_xmin
            FROM unnest(CAST(:ids AS uuid[]), CAST(:xmins AS bigint[])) AS u (id, row_xmin)
            WHERE s.conversation_id = u.id
        """), {"ids": [x.conversation_id for x in seen], "xmins": [x.row_xmin for x in seen]})


def retouch(conn: Connection, seen: Sequence[Seen],
            responses: Sequence[Sequence[tuple[bytes, str]]]) -> None:
    """Rows whose turns changed but not their text (an emotion label, a role): the
    signature stays; the turns hash, xmin and assistant responses are recorded."""
    if not seen:
        return
    conn.execute(text("""
        CREATE TEMPORARY TABLE IF NOT EXISTS dedup_stage_retouch (
            conversation_id uuid, row_xmin bigint, source_hash bigint, responses bytea[],
            previews text[]) ON COMMIT DELETE ROWS
    """))
    with _raw(conn).cursor().copy("COPY dedup_stage_retouch FROM STDIN") as copy:
        for x, found in zip(seen, responses, strict=True):
            copy.write_row((x.conversation_id, x.row_xmin, x.source_hash,
                            [h for h, _ in found], [p for _, p in found]))
    conn.execute(text("""
        UPDATE dedup_signatures s
        SET row_xmin = u.row_xmin, source_hash = u.source_hash, responses = u.responses,
            previews = u.previews
        FROM dedup_stage_retouch u WHERE s.conversation_id = u.conversation_id
    """))
    conn.execute(text("DELETE FROM dedup_stage_retouch"))


def stale_layout(conn: Connection, layout: str, limit: int) -> list[bytes]:
    """Texts whose buckets were made with another banding."""
    rows = conn.execute(text("""
        SELECT DISTINCT text_hash FROM dedup_signatures
        WHERE layout <> :layout ORDER BY text_hash LIMIT :limit
    """), {"layout": layout, "limit": limit}).all()
    return [bytes(r.text_hash) for r in rows]


def rebucket(conn: Connection, text_hashes: Sequence[bytes], layout: Layout) -> None:
    insert_buckets(conn, text_hashes, layout)
    conn.execute(text("UPDATE dedup_signatures SET layout = :layout, pending = true "
                      "WHERE text_hash = ANY(:hashes)"),
                 {"hashes": list(text_hashes), "layout": layout.name})


def drop_orphans(conn: Connection, old_hashes: Sequence[bytes]) -> None:
    """Buckets and pairs of texts no conversation has any more."""
    if not old_hashes:
        return
    params = {"hashes": list(old_hashes)}
    conn.execute(text("""
        CREATE TEMPORARY TABLE IF NOT EXISTS dedup_gone (h bytea PRIMARY KEY) ON COMMIT DELETE ROWS
    """))
    conn.execute(text("""
        INSERT INTO dedup_gone SELECT DISTINCT h FROM unnest(CAST(:hashes AS bytea[])) AS h
        WHERE NOT EXISTS (SELECT 1 FROM dedup_signatures s WHERE s.text_hash = h)
        ON CONFLICT DO NOTHING
    """), params)
    conn.execute(text("DELETE FROM dedup_buckets WHERE text_hash IN (SELECT h FROM dedup_gone)"))
    conn.execute(text("DELETE FROM dedup_pairs WHERE a IN (SELECT h FROM dedup_gone) "
                      "OR b IN (SELECT h FROM dedup_gone)"))


# ------------------------------------------------------------------ candidates

# Text pairs sharing a bucket where one side is pending, not verified yet. They
# are staged in a temporary table first: planned as a cursor (for the first
# rows fast), the join would take nested loops over the whole bucket table.
_STAGE_CANDIDATES = text("""
CREATE TEMPORARY TABLE dedup_candidates ON COMMIT DROP AS
WITH x AS (SELECT b.text_hash, unnest(b.buckets) AS bucket FROM dedup_buckets b
           WHERE b.text_hash IN (SELECT text_hash FROM dedup_signatures WHERE pending)),
     y AS (SELECT text_hash, unnest(buckets) AS bucket FROM dedup_buckets)
SELECT DISTINCT LEAST(x.text_hash, y.text_hash) AS a, GREATEST(x.text_hash, y.text_hash) AS b
FROM x JOIN y ON y.bucket = x.bucket AND y.text_hash <> x.text_hash
WHERE NOT EXISTS (SELECT 1 FROM dedup_pairs v
                  WHERE v.a = LEAST(x.text_hash, y.text_hash)
                    AND v.b = GREATEST(x.text_hash, y.text_hash))
""")


def no_jit(conn: Connection) -> None:
    """For this transaction: compiling the few big queries of a run costs more than it saves."""
    conn.execute(text("SET LOCAL jit = off"))


def analyze(conn: Connection) -> None:
    """Fresh statistics after a bulk load, so the candidate join is planned on real sizes."""
    conn.execute(text("ANALYZE dedup_signatures, dedup_buckets"))


def candidates(conn: Connection) -> Iterator[list[tuple[bytes, bytes]]]:
    """Unverified candidate pairs in batches, in (a, b) order (inside the caller's
    transaction; a server-side cursor over the staged pairs keeps memory flat)."""
    no_jit(conn)
    # Unnested arrays have no statistics: the planner would sort both sides to merge them.
    conn.execute(text("SET LOCAL enable_mergejoin = off"))
    conn.execute(_STAGE_CANDIDATES)
    result = conn.execution_options(stream_results=True, yield_per=CANDIDATE_BATCH).execute(
        text("SELECT a, b FROM dedup_candidates ORDER BY a, b"))
    for part in result.partitions(CANDIDATE_BATCH):
        yield [(bytes(r.a), bytes(r.b)) for r in part]


def turns_of_texts(conn: Connection, text_hashes: Sequence[bytes]) -> dict[bytes, str]:
    """The stored turns (as JSON text) of one conversation per text hash."""
    rows = conn.execute(text("""
        SELECT DISTINCT ON (s.text_hash) s.text_hash, (c.parsed_json -> 'turns')::text AS turns
        FROM dedup_signatures s JOIN conversations c USING (conversation_id)
        WHERE s.text_hash = ANY(:hashes)
        ORDER BY s.text_hash, s.conversation_id
    """), {"hashes": list(text_hashes)}).all()
    return {bytes(r.text_hash): r.turns or "null" for r in rows}


def insert_pairs(conn: Connection, pairs: Sequence[tuple[bytes, bytes, float]]) -> None:
    if pairs:
        conn.execute(text("""
            INSERT INTO dedup_pairs (a, b, similarity)
            SELECT * FROM unnest(CAST(:a AS bytea[]), CAST(:b AS bytea[]),
                                 CAST(:s AS double precision[]))
            ON CONFLICT DO NOTHING
        """), {"a": [p[0] for p in pairs], "b": [p[1] for p in pairs],
               "s": [p[2] for p in pairs]})


def clear_pending(conn: Connection) -> None:
    conn.execute(text("UPDATE dedup_signatures SET pending = false WHERE pending"))


# ------------------------------------------------------------------ clusters

def near_pairs(conn: Connection, threshold: float) -> list[tuple[bytes, bytes]]:
    rows = conn.execute(text("SELECT a, b FROM dedup_pairs WHERE similarity >= :t"),
                        {"t": threshold}).all()
    return [(bytes(r.a), bytes(r.b)) for r in rows]


def members(conn: Connection, threshold: float) -> list[Member]:
    """Conversations whose text has an exact copy or a near-duplicate text."""
    rows = conn.execute(text("""
        WITH hot AS (
            SELECT a AS h FROM dedup_pairs WHERE similarity >= :t
            UNION SELECT b FROM dedup_pairs WHERE similarity >= :t
            UNION SELECT text_hash FROM dedup_signatures GROUP BY text_hash HAVING count(*) > 1)
        SELECT s.conversation_id, s.text_hash, c.quality_score,
               p.persona_key, e.arc_key, t.topic_key
        FROM hot JOIN dedup_signatures s ON s.text_hash = hot.h
        JOIN conversations c ON c.conversation_id = s.conversation_id
        LEFT JOIN personas p ON p.id = c.persona_id
        LEFT JOIN emotional_arcs e ON e.id = c.emotional_arc_id
        LEFT JOIN training_topics t ON t.id = c.training_topic_id
    """), {"t": threshold}).all()
    return [Member(conversation_id=r.conversation_id, text_hash=bytes(r.text_hash),
                   quality=r.quality_score, cell=(r.persona_key, r.arc_key, r.topic_key))
            for r in rows]


def replace_clusters(conn: Connection, run_id: int, threshold: float, scope: str,
                     clusters: Sequence[Any]) -> None:
    """The run's clusters replace the previous ones (one transaction: readers see either)."""
    conn.execute(text("DELETE FROM dedup_members"))
    conn.execute(text("DELETE FROM dedup_clusters"))
    if not clusters:
        return
    conn.execute(text("""
        INSERT INTO dedup_clusters (cluster_id, run_id, size, threshold, scope,
                                    representative, cells)
        SELECT u.id, :run, u.size, :threshold, :scope, u.rep, u.cells
        FROM unnest(CAST(:ids AS uuid[]), CAST(:sizes AS integer[]), CAST(:reps AS uuid[]),
                    CAST(:cells AS integer[])) AS u (id, size, rep, cells)
    """), {"run": run_id, "threshold": threshold, "scope": scope,
           "ids": [c.cluster_id for c in clusters], "sizes": [len(c.members) for c in clusters],
           "reps": [c.representative for c in clusters], "cells": [c.cells for c in clusters]})
    rows = [(m, c.cluster_id, m == c.representative) for c in clusters for m in c.members]
    conn.execute(text("""
        INSERT INTO dedup_members (conversation_id, cluster_id, is_representative)
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:clusters AS uuid[]),
                             CAST(:reps AS boolean[]))
    """), {"ids": [r[0] for r in rows], "clusters": [r[1] for r in rows],
           "reps": [r[2] for r in rows]})


# ------------------------------------------------------------------ reports


def duplicate_rates(conn: Connection) -> list[dict[str, Any]]:
    """Conversations, in clusters and duplicates (what --dedup removes): overall (level
    "all"), per persona, arc, topic and per cell, by the row's scaffolding keys."""
    rows = conn.execute(text("""
        SELECT p.persona_key AS persona, e.arc_key AS arc, t.topic_key AS topic,
               GROUPING(p.persona_key, e.arc_key, t.topic_key) AS g,
               count(*) AS conversations,
               count(m.conversation_id) AS in_clusters,
               count(m.conversation_id) FILTER (WHERE NOT m.is_representative) AS duplicates
        FROM conversations c
        LEFT JOIN dedup_members m ON m.conversation_id = c.conversation_id
        LEFT JOIN personas p ON p.id = c.persona_id
        LEFT JOIN emotional_arcs e ON e.id = c.emotional_arc_id
        LEFT JOIN training_topics t ON t.id = c.training_topic_id
        GROUP BY GROUPING SETS ((), (p.persona_key), (e.arc_key), (t.topic_key),
                                (p.persona_key, e.arc_key, t.topic_key))
    """)).mappings().all()
    levels = {7: "all", 3: "persona", 5: "arc", 6: "topic", 0: "cell"}
    return [{"level": levels[int(r["g"])], "persona": r["persona"], "arc": r["arc"],
             "topic": r["topic"], "conversations": int(r["conversations"]),
             "in_clusters": int(r["in_clusters"]), "duplicates": int(r["duplicates"])}
            for r in rows]


def largest_clusters(conn: Connection, limit: int, sample: int) -> list[dict[str, Any]]:
    rows = conn.execute(text("""
        SELECT k.cluster_id, k.size, k.representative, k.cells, k.threshold, k.scope,
               (SELECT array_agg(m.conversation_id ORDER BY m.conversation_id)
                FROM (SELECT conversation_id FROM dedup_members
                      WHERE cluster_id = k.cluster_id
                      ORDER BY conversation_id LIMIT :sample) m) AS sample
        FROM dedup_clusters k ORDER BY k.size DESC, k.cluster_id LIMIT :limit
    """), {"limit": limit, "sample": sample}).mappings().all()
    return [dict(r) for r in rows]


def all_clusters(conn: Connection) -> Iterator[dict[str, Any]]:
    """Every cluster with all its members, largest first (streamed)."""
    result = conn.execution_options(stream_results=True, yield_per=500).execute(text("""
        SELECT k.cluster_id, k.representative, k.size, k.cells, k.threshold, k.scope,
               array_agg(m.conversation_id ORDER BY m.conversation_id) AS members
        FROM dedup_clusters k JOIN dedup_members m ON m.cluster_id = k.cluster_id
        GROUP BY k.cluster_id ORDER BY k.size DESC, k.cluster_id
    """))
    for row in result.mappings():
        yield dict(row)


def cluster_totals(conn: Connection) -> dict[str, int]:
    row = conn.execute(text("""
        SELECT (SELECT count(*) FROM dedup_clusters) AS clusters,
               (SELECT count(*) FROM dedup_members) AS in_clusters,
               (SELECT count(*) FROM dedup_members WHERE NOT is_representative) AS duplicates,
               (SELECT count(*) FROM dedup_clusters WHERE cells > 1) AS cross_cell_clusters
    """)).mappings().one()
    return {k: int(v) for k, v in row.items()}


def repeated_responses(conn: Connection, limit: int) -> dict[str, Any]:
    """Assistant responses (normalised) found in more than one conversation (a
    conversation's responses are distinct: each counts once)."""
    totals = conn.execute(text("""
        WITH r AS (SELECT u.h, s.conversation_id
                   FROM dedup_signatures s, unnest(s.responses) AS u (h)),
             repeated AS (SELECT h FROM r GROUP BY h HAVING count(*) > 1)
        SELECT (SELECT count(*) FROM repeated) AS responses,
               count(*) AS occurrences, count(DISTINCT r.conversation_id) AS conversations
        FROM r JOIN repeated USING (h)
    """)).mappings().one()
    top = conn.execute(text("""
        SELECT encode(h, 'hex') AS response_hash, count(*) AS conversations, min(p) AS preview,
               (array_agg(conversation_id ORDER BY conversation_id))[1:5] AS sample
        FROM (SELECT u.h, u.p, s.conversation_id
              FROM dedup_signatures s, unnest(s.responses, s.previews) AS u (h, p)) r
        GROUP BY h HAVING count(*) > 1
        ORDER BY count(*) DESC, h LIMIT :limit
    """), {"limit": limit}).mappings().all()
    return {"responses": int(totals["responses"]), "occurrences": int(totals["occurrences"]),
            "conversations": int(totals["conversations"]), "top": [dict(r) for r in top]}


def unsigned_conversations(conn: Connection) -> int:
    """Conversations that have no signature yet (added since the last run)."""
    return int(conn.execute(text("""
        SELECT count(*) FROM conversations c
        WHERE NOT EXISTS (SELECT 1 FROM dedup_signatures s
                          WHERE s.conversation_id = c.conversation_id)
    """)).scalar_one())


def membership(conn: Connection) -> dict[uuid.UUID, tuple[uuid.UUID, bool]]:
    """conversation id -> (cluster id, is the representative), for export."""
    rows = conn.execute(text(
        "SELECT conversation_id, cluster_id, is_representative FROM dedup_members")).all()
    return {r.conversation_id: (r.cluster_id, r.is_representative) for r in rows}


def has_tables(conn: Connection) -> bool:
    return bool(conn.execute(text(
        "SELECT to_regclass('dedup_members') IS NOT NULL")).scalar_one())

