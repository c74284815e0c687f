"""The only module that runs SQL against the conversation data.

Every statement that matters is written out as SQL with bound parameters, so
a reader sees what the database is asked to do. Functions take an open
SQLAlchemy `Connection`; transactions belong to the caller (the loops), which
is what lets a page's writes and its checkpoint share one commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg.types.numeric import Int8
from sqlalchemy import Connection, text

from worker.enrichment.models import (
    ConversationInputs,
    EmotionalArc,
    PairReview,
    Persona,
    PromptTemplate,
    TrainingTopic,
)
from worker.enrichment.rows import Changed, Failed, RawJsonb, StoredRow

# jsonb values come back through orjson: the export path reads gigabytes.
set_json_loads(orjson.loads)


class _RawJsonbBinaryDumper(Dumper):
    # jsonb's binary form is a version byte and the text: no escaping on
    # either side, which the text COPY of 50 kB documents pays for per byte.
    oid = psycopg.adapters.types["jsonb"].oid
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + bytes(obj)


def _raw(conn: Connection) -> psycopg.Connection[Any]:
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


# ------------------------------------------------------------------ the page

# What a document is built from: each row with its scaffolding, latest
# system prompt and current reviews, the row's version and its queue mark.
# One text, two ways to pick the rows (a page of the key range, or given ids):
# two queries, so each gets the plan that uses its index. Both run on the
# driver in binary (psycopg placeholders, still bound parameters): the parsed
# document reaches the input hash as the server's UTF-8 bytes, without a
# decode and re-encode that were most of a no-op run's time.
INPUTS_SELECT = """
SELECT c.conversation_id,
       c.created_at,
       c.quality_score,
       convert_to(c.parsed_json::text, 'UTF8') AS parsed_json,
       (c.persona_id IS NOT NULL OR c.emotional_arc_id IS NOT NULL
        OR c.training_topic_id IS NOT NULL) AS has_reference,
       c.enrichment_input_hash,
       c.enriched_hash,
       c.enrichment_status,
       c.enrichment_error,
       c.xmin::text                     AS row_version,
       q.marks                          AS queue_marks,
       p.id AS p_id, p.persona_key, p.name AS p_name, p.archetype, p.demographics,
       p.financial_background,
       a.id AS a_id, a.arc_key, a.name AS a_name, a.starting_emotion, a.ending_emotion,
       a.response_techniques,
       t.id AS t_id, t.topic_key, t.name AS t_name, t.complexity_level,
       pt.template_name, pt.category,
       gl.system_prompt,
       rv.reviews
FROM conversations c
LEFT JOIN personas p          ON p.id = c.persona_id
LEFT JOIN emotional_arcs a    ON a.id = c.emotional_arc_id
LEFT JOIN training_topics t   ON t.id = c.training_topic_id
LEFT JOIN prompt_templates pt ON pt.id = c.template_id
LEFT JOIN enrichment_queue q  ON q.conversation_id = c.conversation_id
LEFT JOIN LATERAL (
    SELECT g.system_prompt
    FROM generation_logs g
    WHERE g.conversation_id = c.conversation_id
    ORDER BY g.created_at DESC, g.id DESC
    LIMIT 1
) gl ON true
LEFT JOIN LATERAL (
    -- the current reviews (an input of the document: reviews.md)
    SELECT jsonb_agg(jsonb_build_array(r.turn_number, r.status, r.notes, r.use_as_seed_example,
                                       r.generate_variations_count, r.content_sha256)
                     ORDER BY r.turn_number) AS reviews
    FROM reviews r
    WHERE r.conversation_id = c.conversation_id AND r.superseded_at IS NULL
) rv ON true
"""

# A page: keyset pagination on the primary key, never OFFSET; optional
# filters written in SQL, never concatenated.
PAGE_SQL = INPUTS_SELECT + """
WHERE (CAST(%(after)s AS uuid) IS NULL OR c.conversation_id > %(after)s)
  AND (CAST(%(upper)s AS uuid) IS NULL OR c.conversation_id <= %(upper)s)
  AND (CAST(%(persona)s AS text) IS NULL OR p.persona_key = %(persona)s)
  AND (CAST(%(arc)s AS text) IS NULL OR a.arc_key = %(arc)s)
  AND (CAST(%(topic)s AS text) IS NULL OR t.topic_key = %(topic)s)
  AND (CAST(%(since)s AS timestamptz) IS NULL OR c.created_at >= %(since)s)
  AND (CAST(%(until)s AS timestamptz) IS NULL OR c.created_at < %(until)s)
ORDER BY c.conversation_id
LIMIT %(limit)s
"""

# The same rows, selected by id (enrich, follow).
BY_IDS_SQL = INPUTS_SELECT + """
WHERE c.conversation_id = ANY(%(ids)s)
ORDER BY c.conversation_id
"""

COUNT_SQL = text("""
SELECT count(*)
FROM conversations c
LEFT JOIN personas p        ON p.id = c.persona_id
LEFT JOIN emotional_arcs a  ON a.id = c.emotional_arc_id
LEFT JOIN training_topics t ON t.id = c.training_topic_id
WHERE (CAST(:after AS uuid) IS NULL OR c.conversation_id > :after)
  AND (CAST(:upper AS uuid) IS NULL OR c.conversation_id <= :upper)
  AND (CAST(:persona AS text) IS NULL OR p.persona_key = :persona)
  AND (CAST(:arc AS text) IS NULL OR a.arc_key = :arc)
  AND (CAST(:topic AS text) IS NULL OR t.topic_key = :topic)
  AND (CAST(:since AS timestamptz) IS NULL OR c.created_at >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR c.created_at < :until)
""")


@dataclass(frozen=True, slots=True)
class Filters:
    persona: str | None = None
    arc: str | None = None
    topic: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def params(self) -> dict[str, Any]:
        return {"persona": self.persona, "arc": self.arc, "topic": self.topic,
                "since": self.since, "until": self.until}

    def as_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v)
                for k, v in self.params().items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Filters:
        def ts(value: Any) -> datetime | None:
            return datetime.fromisoformat(value) if value else None
        return cls(persona=data.get("persona"), arc=data.get("arc"), topic=data.get("topic"),
                   since=ts(data.get("since")), until=ts(data.get("until")))


def _row_to_stored(m: dict[str, Any]) -> StoredRow:
    persona = (Persona(id=m["p_id"], key=m["persona_key"], name=m["p_name"],
                       archetype=m["archetype"], demographics=m["demographics"],
                       financial_background=m["financial_background"])
               if m["p_id"] is not None else None)
    arc = (EmotionalArc(id=m["a_id"], key=m["arc_key"], name=m["a_name"],
                        starting_emotion=m["starting_emotion"],
                        ending_emotion=m["ending_emotion"],
                        response_techniques=tuple(m["response_techniques"] or ()))
           if m["a_id"] is not None else None)
    topic = (TrainingTopic(id=m["t_id"], key=m["topic_key"], name=m["t_name"],
                           complexity_level=m["complexity_level"])
             if m["t_id"] is not None else None)
    template = (PromptTemplate(name=m["template_name"], category=m["category"])
                if m["template_name"] is not None else None)
    parsed_json: bytes = m["parsed_json"]
    fields = ConversationInputs(
        conversation_id=m["conversation_id"],
        created_at=m["created_at"],
        parsed=None,
        quality_score=m["quality_score"],
        has_scaffolding_reference=m["has_reference"],
        persona=persona, arc=arc, topic=topic, template=template,
        system_prompt=m["system_prompt"],
        reviews=tuple(PairReview(*review) for review in m["reviews"] or ()),
    )
    return StoredRow(conversation_id=m["conversation_id"], inputs_json=parsed_json,
                     fields=fields,
                     input_hash=m["enrichment_input_hash"], enriched_hash=m["enriched_hash"],
                     status=m["enrichment_status"], error=m["enrichment_error"],
                     row_version=m["row_version"], marks=m["queue_marks"])


def _read(conn: Connection, sql: str, params: dict[str, Any]) -> list[StoredRow]:
    with _raw(conn).cursor(binary=True, row_factory=dict_row) as cursor:
        cursor.execute(sql, params)  # never prepared (db/engine.py: connect_args)
        return [_row_to_stored(row) for row in cursor]


def read_page(conn: Connection, *, after: uuid.UUID | None, upper: uuid.UUID | None,
              filters: Filters, limit: int) -> list[StoredRow]:
    return _read(conn, PAGE_SQL, {"after": after, "upper": upper, "limit": limit,
                                  **filters.params()})


def read_by_ids(conn: Connection, ids: Sequence[uuid.UUID]) -> list[StoredRow]:
    return _read(conn, BY_IDS_SQL, {"ids": list(ids)})


def count_rows(conn: Connection, *, filters: Filters, after: uuid.UUID | None = None,
               upper: uuid.UUID | None = None) -> int:
    return int(conn.execute(COUNT_SQL, {"after": after, "upper": upper,
                                        **filters.params()}).scalar_one())


# ----------------------------------------------------------- the page write


@dataclass
class Written:
    """What a conditional write did: rows written, failures recorded, rows found stale."""

    updated: set[uuid.UUID] = field(default_factory=set)
    failed: set[uuid.UUID] = field(default_factory=set)
    # Inputs changed since the read (or the row is gone): nothing written for these.
    stale: list[uuid.UUID] = field(default_factory=list)
    # Held by another session (a write that skipped locked rows): left for later.
    deferred: set[uuid.UUID] = field(default_factory=set)
    # Rows the database refused, recorded as their failure instead.
    refused: dict[uuid.UUID, Failed] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits of the write path (0: no limit)."""

    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 0


STAGE_DDL = text("""
CREATE TEMP TABLE IF NOT EXISTS reenrich_stage (
    conversation_id   uuid PRIMARY KEY,
    enriched_json     jsonb NOT NULL,
    enriched_hash     text NOT NULL,
    input_hash        text NOT NULL,
    validation_report jsonb NOT NULL,
    row_version       text NOT NULL,
    marks             bigint
) ON COMMIT DELETE ROWS
""")
# PostgreSQL copies an already-compressed value into another table as it is.
# So the staging column compresses with the target column's own method: each
# document is compressed once, at COPY, and the UPDATE moves the compressed
# bytes (the default, pglz, here would silently defeat the column's lz4).
TARGET_COMPRESSION = text("""
SELECT CASE attcompression WHEN 'l' THEN 'lz4' WHEN 'p' THEN 'pglz' ELSE '' END
FROM pg_attribute
WHERE attrelid = 'conversations'::regclass AND attname = 'enriched_json'
""")
STAGE_COMPRESSION = {
    "lz4": text("ALTER TABLE reenrich_stage ALTER COLUMN enriched_json SET COMPRESSION lz4"),
    "pglz": text("ALTER TABLE reenrich_stage ALTER COLUMN enriched_json SET COMPRESSION pglz"),
}
SET_LIMITS_SQL = text("""
SELECT set_config('lock_timeout', CAST(:lock AS text), false),
       set_config('statement_timeout', CAST(:statement AS text), false)
""")

# One set-based statement writes every changed row of a page (after COPY),
# each only if its inputs are still those it was built from: the same row
# version (xmin: no one wrote the row since the read) and the same queue mark
# (no scaffolding, log or review edit since). A row waiting on another
# writer's lock is re-checked on the version that writer committed.
APPLY_STAGE_SQL = text("""
UPDATE conversations AS c
SET enriched_json         = s.enriched_json,
    enriched_hash         = s.enriched_hash,
    enrichment_input_hash = s.input_hash,
    enrichment_version    = :version,
    enrichment_status     = 'enriched',
    enrichment_error      = NULL,
    validation_report     = s.validation_report,
    enriched_at           = now(),
    updated_at            = now()
FROM reenrich_stage AS s
WHERE c.conversation_id = s.conversation_id
  AND c.xmin::text = s.row_version
  AND (SELECT q.marks FROM enrichment_queue q
       WHERE q.conversation_id = c.conversation_id) IS NOT DISTINCT FROM s.marks
RETURNING c.conversation_id
""")

# Failures are rare: lock the rows whose inputs are still those read, then
# write only those (the same condition as APPLY_STAGE_SQL).
LOCK_CURRENT_SQL = text("""
SELECT c.conversation_id
FROM conversations c
JOIN unnest(CAST(:ids AS uuid[]), CAST(:versions AS text[]), CAST(:marks AS bigint[]))
     AS r(conversation_id, row_version, marks)
  ON r.conversation_id = c.conversation_id
WHERE c.xmin::text = r.row_version
  AND (SELECT q.marks FROM enrichment_queue q
       WHERE q.conversation_id = c.conversation_id) IS NOT DISTINCT FROM r.marks
ORDER BY c.conversation_id
FOR NO KEY UPDATE OF c
""")

MARK_FAILED_SQL = text("""
UPDATE conversations AS c
SET enrichment_status = 'failed',
    enrichment_error  = f.message,
    validation_report = f.report,
    updated_at        = now()
FROM unnest(CAST(:ids AS uuid[]), CAST(:messages AS text[]), CAST(:reports AS jsonb[]))
     AS f(conversation_id, message, report)
WHERE c.conversation_id = f.conversation_id
  AND (c.enrichment_status, c.enrichment_error) IS DISTINCT FROM ('failed', f.message)
""")

RECORD_FAILURES_SQL = text("""
INSERT INTO enrichment_failures (conversation_id, run_name, error_code, message, details)
SELECT f.conversation_id, :run, f.code, f.message, f.details
FROM unnest(CAST(:ids AS uuid[]), CAST(:codes AS text[]), CAST(:messages AS text[]),
            CAST(:details AS jsonb[])) AS f(conversation_id, code, message, details)
ON CONFLICT (conversation_id) WHERE resolved_at IS NULL
DO UPDATE SET attempts     = enrichment_failures.attempts + 1,
              last_seen_at = now(),
              run_name     = EXCLUDED.run_name,
              error_code   = EXCLUDED.error_code,
              message      = EXCLUDED.message,
              details      = EXCLUDED.details
""")

RESOLVE_FAILURES_SQL = text("""
UPDATE enrichment_failures
SET resolved_at = now()
WHERE resolved_at IS NULL
  AND conversation_id = ANY(CAST(:ids AS uuid[]))
""")


def prepare_connection(conn: Connection, limits: Limits | None = None) -> None:
    """Per-connection setup of the write path, committed on its own.

    The staging table and the timeouts must outlive any later transaction
    that rolls back, so they are made here, outside the write transactions
    (a flag set inside a transaction that then rolled back would outlive the
    table it stands for). The caller must have no transaction open.
    """
    raw = _raw(conn)
    info = conn.connection.info
    limits = limits or Limits()
    if info.get("reenrich_limits") == limits:
        return
    raw.adapters.register_dumper(RawJsonb, _RawJsonbBinaryDumper)
    conn.execute(STAGE_DDL)
    method = conn.execute(TARGET_COMPRESSION).scalar_one()
    if method in STAGE_COMPRESSION:
        conn.execute(STAGE_COMPRESSION[method])
    conn.execute(SET_LIMITS_SQL, {"lock": limits.lock_timeout_ms,
                                  "statement": limits.statement_timeout_ms})
    conn.commit()
    info["reenrich_limits"] = limits


def _copy_changed(conn: Connection, changed: Sequence[Changed]) -> None:
    cursor = _raw(conn).cursor()
    with cursor.copy("COPY reenrich_stage (conversation_id, enriched_json, enriched_hash, "
                     "input_hash, validation_report, row_version, marks) FROM STDIN "
                     "(FORMAT BINARY)") as copy:
        # Binary COPY takes each value's type from its Python type: marks
        # must go as int8 whatever their size.
        for row in changed:
            copy.write_row((row.conversation_id, row.document, row.document_hash,
                            row.input_hash, row.report, row.row_version,
                            None if row.marks is None else Int8(row.marks)))


def write_changes(conn: Connection, *, changed: Sequence[Changed], failed: Sequence[Failed],
                  resolved: Sequence[uuid.UUID], run_name: str | None,
                  version: int) -> Written:
    """Write one page's outcome inside the caller's transaction, each row only if current."""
    out = Written()
    if changed:
        _copy_changed(conn, changed)
        rows = conn.execute(APPLY_STAGE_SQL, {"version": version})
        out.updated = {row[0] for row in rows}
        # Empty now, not only at commit: a caller may write twice in one transaction.
        conn.execute(text("TRUNCATE reenrich_stage"))
        out.stale += [c.conversation_id for c in changed if c.conversation_id not in out.updated]
    if failed:
        current = {row[0] for row in conn.execute(LOCK_CURRENT_SQL, {
            "ids": [f.conversation_id for f in failed],
            "versions": [f.row_version for f in failed],
            "marks": [f.marks for f in failed]})}
        record = [f for f in failed if f.conversation_id in current]
        out.stale += [f.conversation_id for f in failed if f.conversation_id not in current]
        rewrite = [f for f in record if f.rewrite_row]
        if rewrite:
            conn.execute(MARK_FAILED_SQL, {
                "ids": [f.conversation_id for f in rewrite],
                "messages": [f.message for f in rewrite],
                "reports": [f.report.decode() for f in rewrite],
            })
        if record:
            conn.execute(RECORD_FAILURES_SQL, {
                "run": run_name,
                "ids": [f.conversation_id for f in record],
                "codes": [f.code for f in record],
                "messages": [f.message for f in record],
                "details": [f.details.decode() for f in record],
            })
        out.failed = {f.conversation_id for f in record}
    done = [i for i in resolved if i in out.updated]
    if done:
        conn.execute(RESOLVE_FAILURES_SQL, {"ids": done})
    return out


# ------------------------------------------------------------- show / reads


def stored_documents(conn: Connection, ids: Sequence[uuid.UUID] | None) -> Iterator[Any]:
    """(conversation_id, enriched_json) in id order; all rows when `ids` is None."""
    if ids is None:
        sql = text("SELECT conversation_id, enriched_json FROM conversations "
                   "WHERE enriched_json IS NOT NULL ORDER BY conversation_id")
        yield from conn.execution_options(stream_results=True, yield_per=200).execute(sql)
    else:
        sql = text("SELECT conversation_id, enriched_json FROM conversations "
                   "WHERE conversation_id = ANY(:ids) ORDER BY conversation_id")
        yield from conn.execute(sql, {"ids": list(ids)})
