"""Light marks: an insert adds no queue row, a scaffolding edit costs its editor one row.

- New conversations are found by their own status: `enrichment_status =
  'pending'`, through a partial index (empty once everything is enriched). The
  insert trigger only wakes the followers (one NOTIFY per statement).
- An edit of a persona, arc, topic or template records one row in
  `scaffolding_edits` (which row changed, and an edit counter); the followers
  expand it into the affected conversations in pages, keyset over
  (foreign key, conversation_id) indexes. A second edit during the expansion
  bumps the counter and resets the cursor, so the expansion starts over.
- Edits of a conversation's own inputs and of its generation logs still mark
  the queue, one row per conversation.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
CREATE INDEX conversations_pending_idx ON conversations (conversation_id)
    WHERE enrichment_status = 'pending';

DROP TRIGGER reenrich_mark_insert ON conversations;
DROP FUNCTION reenrich_mark_inserted_conversations();
-- Rows marked by the old insert trigger and never enriched are pending anyway.
DELETE FROM enrichment_queue q
USING conversations c
WHERE c.conversation_id = q.conversation_id
  AND q.reason = 'conversation' AND c.enrichment_status = 'pending';

CREATE FUNCTION reenrich_notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('reenrich_queue', '');
    RETURN NULL;
END $$;

CREATE TRIGGER reenrich_notify_insert AFTER INSERT ON conversations
FOR EACH STATEMENT EXECUTE FUNCTION reenrich_notify_inserted();

CREATE TABLE scaffolding_edits (
    kind        text NOT NULL
        CHECK (kind IN ('persona', 'emotional_arc', 'training_topic', 'prompt_template')),
    scaffold_id uuid NOT NULL,
    -- Bumped by every edit: an expansion advances only while it is the one it read.
    edits       bigint NOT NULL DEFAULT 1,
    -- The last conversation_id expanded (NULL: from the start).
    cursor      uuid,
    marked_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_by  text,
    claimed_at  timestamptz,
    PRIMARY KEY (kind, scaffold_id)
);

-- Keyset pages of one scaffolding row's conversations.
CREATE INDEX conversations_persona_keyset_idx ON conversations (persona_id, conversation_id);
CREATE INDEX conversations_arc_keyset_idx ON conversations (emotional_arc_id, conversation_id);
CREATE INDEX conversations_topic_keyset_idx ON conversations (training_topic_id, conversation_id);
CREATE INDEX conversations_template_keyset_idx ON conversations (template_id, conversation_id);
DROP INDEX conversations_persona_idx;
DROP INDEX conversations_arc_idx;
DROP INDEX conversations_topic_idx;
DROP INDEX conversations_template_idx;

CREATE OR REPLACE FUNCTION reenrich_mark_scaffolding_users() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scaffolding_edits AS e (kind, scaffold_id)
    VALUES (CASE TG_TABLE_NAME WHEN 'personas' THEN 'persona'
                               WHEN 'emotional_arcs' THEN 'emotional_arc'
                               WHEN 'training_topics' THEN 'training_topic'
                               ELSE 'prompt_template' END, NEW.id)
    ON CONFLICT (kind, scaffold_id) DO UPDATE
    SET edits = e.edits + 1, cursor = NULL, marked_at = clock_timestamp(),
        claimed_by = NULL, claimed_at = NULL;
    PERFORM pg_notify('reenrich_queue', '');
    RETURN NULL;
END $$;
"""

DOWNGRADE = """
CREATE OR REPLACE FUNCTION reenrich_mark_scaffolding_users() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'personas' THEN
        PERFORM reenrich_mark(ARRAY(SELECT conversation_id FROM conversations
                                    WHERE persona_id = NEW.id), 'persona');
    ELSIF TG_TABLE_NAME = 'emotional_arcs' THEN
        PERFORM reenrich_mark(ARRAY(SELECT conversation_id FROM conversations
                                    WHERE emotional_arc_id = NEW.id), 'emotional_arc');
    ELSIF TG_TABLE_NAME = 'training_topics' THEN
        PERFORM reenrich_mark(ARRAY(SELECT conversation_id FROM conversations
                                    WHERE training_topic_id = NEW.id), 'training_topic');
    ELSIF TG_TABLE_NAME = 'prompt_templates' THEN
        PERFORM reenrich_mark(ARRAY(SELECT conversation_id FROM conversations
                                    WHERE template_id = NEW.id), 'prompt_template');
    END IF;
    RETURN NULL;
END $$;
CREATE INDEX conversations_persona_idx ON conversations (persona_id);
CREATE INDEX conversations_arc_idx ON conversations (emotional_arc_id);
CREATE INDEX conversations_topic_idx ON conversations (training_topic_id);
CREATE INDEX conversations_template_idx ON conversations (template_id);
DROP INDEX conversations_persona_keyset_idx;
DROP INDEX conversations_arc_keyset_idx;
DROP INDEX conversations_topic_keyset_idx;
DROP INDEX conversations_template_keyset_idx;
DROP TABLE scaffolding_edits;
DROP TRIGGER reenrich_notify_insert ON conversations;
DROP FUNCTION reenrich_notify_inserted();
CREATE FUNCTION reenrich_mark_inserted_conversations() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM reenrich_mark(ARRAY(SELECT conversation_id FROM new_rows), 'conversation');
    RETURN NULL;
END $$;
CREATE TRIGGER reenrich_mark_insert AFTER INSERT ON conversations
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION reenrich_mark_inserted_conversations();
SELECT reenrich_mark(ARRAY(SELECT conversation_id FROM conversations
                           WHERE enrichment_status = 'pending'), 'conversation');
DROP INDEX conversations_pending_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
