"""SQL of `reenrich import`: upserts that leave unchanged rows untouched.

Each upsert only rewrites a row whose values differ (`IS DISTINCT FROM`), so
re-importing the same file changes nothing, not even a row's xmin, and does
not mark anything for re-enrichment.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, text

UPSERT_PERSONA = text("""
INSERT INTO personas (id, persona_key, name, archetype, demographics, financial_background)
VALUES (:id, :key, :name, :archetype, CAST(:demographics AS jsonb), :financial_background)
ON CONFLICT (persona_key) DO UPDATE
SET name = EXCLUDED.name, archetype = EXCLUDED.archetype,
    demographics = EXCLUDED.demographics,
    financial_background = EXCLUDED.financial_background, updated_at = now()
WHERE (personas.name, personas.archetype, personas.demographics, personas.financial_background)
      IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.archetype, EXCLUDED.demographics, EXCLUDED.financial_background)
RETURNING id, (xmax = 0) AS inserted
""")

UPSERT_ARC = text("""
INSERT INTO emotional_arcs (id, arc_key, name, starting_emotion, ending_emotion, arc_strategy,
                            response_techniques)
VALUES (:id, :key, :name, :starting_emotion, :ending_emotion, :arc_strategy,
        CAST(:response_techniques AS jsonb))
ON CONFLICT (arc_key) DO UPDATE
SET name = EXCLUDED.name, starting_emotion = EXCLUDED.starting_emotion,
    ending_emotion = EXCLUDED.ending_emotion, arc_strategy = EXCLUDED.arc_strategy,
    response_techniques = EXCLUDED.response_techniques, updated_at = now()
WHERE (emotional_arcs.name, emotional_arcs.starting_emotion, emotional_arcs.ending_emotion,
       emotional_arcs.arc_strategy, emotional_arcs.response_techniques)
      IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.starting_emotion, EXCLUDED.ending_emotion,
       EXCLUDED.arc_strategy, EXCLUDED.response_techniques)
RETURNING id, (xmax = 0) AS inserted
""")

UPSERT_TOPIC = text("""
INSERT INTO training_topics (id, topic_key, name, complexity_level)
VALUES (:id, :key, :name, :complexity_level)
ON CONFLICT (topic_key) DO UPDATE
SET name = EXCLUDED.name, complexity_level = EXCLUDED.complexity_level, updated_at = now()
WHERE (training_topics.name, training_topics.complexity_level)
      IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.complexity_level)
RETURNING id, (xmax = 0) AS inserted
""")

UPSERT_TEMPLATE = text("""
INSERT INTO prompt_templates (id, template_name, category)
VALUES (:id, :key, :category)
ON CONFLICT (template_name) DO UPDATE
SET category = EXCLUDED.category, updated_at = now()
WHERE prompt_templates.category IS DISTINCT FROM EXCLUDED.category
RETURNING id, (xmax = 0) AS inserted
""")

# created_at: the file's value, else the stored one, else now (first insert only).
UPSERT_CONVERSATION = text("""
INSERT INTO conversations (conversation_id, persona_id, emotional_arc_id, training_topic_id,
                           template_id, quality_score, created_at, parsed_json)
VALUES (:conversation_id, :persona_id, :arc_id, :topic_id, :template_id, :quality_score,
        COALESCE(CAST(:created_at AS timestamptz), now()), CAST(:parsed_json AS jsonb))
ON CONFLICT (conversation_id) DO UPDATE
SET persona_id = EXCLUDED.persona_id, emotional_arc_id = EXCLUDED.emotional_arc_id,
    training_topic_id = EXCLUDED.training_topic_id, template_id = EXCLUDED.template_id,
    quality_score = EXCLUDED.quality_score,
    created_at = COALESCE(CAST(:created_at AS timestamptz), conversations.created_at),
    parsed_json = EXCLUDED.parsed_json, updated_at = now()
WHERE (conversations.persona_id, conversations.emotional_arc_id, conversations.training_topic_id,
       conversations.template_id, conversations.quality_score, conversations.parsed_json,
       conversations.created_at)
      IS DISTINCT FROM
      (EXCLUDED.persona_id, EXCLUDED.emotional_arc_id, EXCLUDED.training_topic_id,
       EXCLUDED.template_id, EXCLUDED.quality_score, EXCLUDED.parsed_json,
       COALESCE(CAST(:created_at AS timestamptz), conversations.created_at))
RETURNING (xmax = 0) AS inserted
""")

# A generation log only when the prompt differs from the latest one.
ADD_GENERATION_LOG = text("""
INSERT INTO generation_logs (conversation_id, system_prompt)
SELECT :conversation_id, :system_prompt
WHERE :system_prompt IS DISTINCT FROM (
    SELECT g.system_prompt FROM generation_logs g
    WHERE g.conversation_id = :conversation_id
    ORDER BY g.created_at DESC, g.id DESC
    LIMIT 1)
""")

KEY_LOOKUP = {
    "persona": text("SELECT id FROM personas WHERE persona_key = :key"),
    "emotional_arc": text("SELECT id FROM emotional_arcs WHERE arc_key = :key"),
    "training_topic": text("SELECT id FROM training_topics WHERE topic_key = :key"),
    "prompt_template": text("SELECT id FROM prompt_templates WHERE template_name = :key"),
}

UPSERTS = {
    "persona": UPSERT_PERSONA,
    "emotional_arc": UPSERT_ARC,
    "training_topic": UPSERT_TOPIC,
    "prompt_template": UPSERT_TEMPLATE,
}


def upsert_scaffolding(conn: Connection, kind: str, params: dict[str, Any]) -> str:
    """Returns 'inserted', 'updated' or 'unchanged'."""
    row = conn.execute(UPSERTS[kind], params).first()
    if row is None:
        return "unchanged"
    return "inserted" if row.inserted else "updated"


def lookup_key(conn: Connection, kind: str, key: str) -> uuid.UUID | None:
    value = conn.execute(KEY_LOOKUP[kind], {"key": key}).scalar_one_or_none()
    return value if isinstance(value, uuid.UUID) else None


def upsert_conversation(conn: Connection, params: dict[str, Any],
                        system_prompt: str | None) -> str:
    row = conn.execute(UPSERT_CONVERSATION, params).first()
    outcome = "unchanged" if row is None else ("inserted" if row.inserted else "updated")
    if system_prompt is not None:
        added = conn.execute(ADD_GENERATION_LOG, {
            "conversation_id": params["conversation_id"], "system_prompt": system_prompt,
        }).rowcount
        if added and outcome == "unchanged":
            outcome = "updated"
    return outcome
