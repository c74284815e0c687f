"""Statements the command line runs that belong to no other module.

The server's clock (a backfill's summary compares it with `finished_at`), and
what `reenrich demo` reads: whether a database holds anything besides its
sample before it writes, and the legacy row it shows before and after.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text


def server_clock(conn: Connection) -> datetime:
    """The server's time now (the clock that stamps `finished_at`)."""
    moment: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return moment


def other_tables(conn: Connection, own: Sequence[str]) -> list[str]:
    """Tables outside the system schemas besides public.<own>, as schema.table, sorted."""
    return list(conn.execute(text("""
        SELECT schemaname || '.' || tablename FROM pg_tables
        WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
          AND NOT (schemaname = 'public' AND tablename = ANY(:own))
        ORDER BY 1"""), {"own": list(own)}).scalars())


def table_exists(conn: Connection, name: str) -> bool:
    """`name` (schema.table) is a table of this database."""
    found: bool = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                               {"t": name}).scalar_one()
    return found


# The tables the sample fills, each with the key its records are known by: a
# row whose key is none of the sample's is someone else's data.
_ROWS_NOT_IN = {
    "conversations": text("SELECT count(*) FROM public.conversations "
                          "WHERE NOT (conversation_id::text = ANY(:keys))"),
    "personas": text("SELECT count(*) FROM public.personas "
                     "WHERE NOT (persona_key = ANY(:keys))"),
    "emotional_arcs": text("SELECT count(*) FROM public.emotional_arcs "
                           "WHERE NOT (arc_key = ANY(:keys))"),
    "training_topics": text("SELECT count(*) FROM public.training_topics "
                            "WHERE NOT (topic_key = ANY(:keys))"),
    "prompt_templates": text("SELECT count(*) FROM public.prompt_templates "
                             "WHERE NOT (template_name = ANY(:keys))"),
}


def rows_not_in(conn: Connection, table: str, keys: Sequence[str]) -> int:
    """Rows of public.`table` (a table the sample fills) whose key is not one of `keys`."""
    count: int = conn.execute(_ROWS_NOT_IN[table], {"keys": list(keys)}).scalar_one()
    return count


def legacy_view(conn: Connection, conversation_id: uuid.UUID) -> tuple[bool, Any]:
    """Whether the row's parsed document has input_parameters, and its enriched document."""
    row = conn.execute(text(
        "SELECT parsed_json ? 'input_parameters' AS has_params, enriched_json "
        "FROM conversations WHERE conversation_id = :id"), {"id": conversation_id}).one()
    return row.has_params, row.enriched_json


def enriched_document(conn: Connection, conversation_id: uuid.UUID) -> Any:
    """The row's stored enriched document (None when it has none, or there is no row)."""
    return conn.execute(text("SELECT enriched_json FROM conversations "
                             "WHERE conversation_id = :id"), {"id": conversation_id}).scalar()
