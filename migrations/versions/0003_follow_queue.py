"""The follow queue: triggers mark conversations needing enrichment, and NOTIFY.

`enrichment_queue` holds one row per conversation to (re-)enrich. Triggers
on the conversations, the four scaffolding tables and generation_logs put
rows there, in the editor's own transaction, so a mark is durable exactly
when the edit is: nothing is lost while no worker runs. Each mark also
sends NOTIFY on the channel `reenrich_queue` (empty payload: notifications
only wake `reenrich follow`; the table is the truth).

A mark of a row already queued bumps `marks` and clears its claim: a worker
that holds the old mark sees it changed and leaves the row for another pass.

Only changes to what the enrichment reads mark anything: the worker's own
writes (enriched_json, status, hashes) never do.

`follow_workers` is the heartbeat table of the `reenrich follow` processes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
CREATE TABLE enrichment_queue (
    conversation_id uuid PRIMARY KEY
        REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    -- clock_timestamp() of the latest mark (a trigger cannot see its commit time).
    marked_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Bumped by every mark: a worker deletes the row only if it is still the mark it read.
    marks           bigint NOT NULL DEFAULT 1,
    reason          text NOT NULL,
    claimed_by      text,
    claimed_at      timestamptz
);
CREATE INDEX enrichment_queue_marked_idx ON enrichment_queue (marked_at);

CREATE TABLE follow_workers (
    worker_id         text PRIMARY KEY,
    host              text NOT NULL,
    pid               integer NOT NULL,
    status            text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'stopped')),
    started_at        timestamptz NOT NULL DEFAULT now(),
    heartbeat_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_seconds double precision NOT NULL,
    stopped_at        timestamptz,
    batches           bigint NOT NULL DEFAULT 0,
    rows_processed    bigint NOT NULL DEFAULT 0,
    rows_enriched     bigint NOT NULL DEFAULT 0,
    rows_unchanged    bigint NOT NULL DEFAULT 0,
    rows_failed       bigint NOT NULL DEFAULT 0,
    last_batch_at     timestamptz,
    last_error        text
);

-- Mark conversations (set-based, in id order so concurrent markers lock
-- queue rows in the same order) and wake the followers.
CREATE FUNCTION reenrich_mark(ids uuid[], why text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO enrichment_queue AS q (conversation_id, reason)
    SELECT DISTINCT id, why FROM unnest(ids) AS id
    ORDER BY 1
    ON CONFLICT (conversation_id) DO UPDATE
    SET marked_at  = clock_timestamp(),
        marks      = q.marks + 1,
        reason     = EXCLUDED.reason,
        claimed_by = NULL,
        claimed_at = NULL;
    PERFORM pg_notify('reenrich_queue', '');
END $$;

-- conversations: new rows (one statement, however many rows) ...
CREATE FUNCTION reenrich_mark_inserted_conversations() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM reenrich_mark(ARRAY(SELECT conversation_id FROM new_rows), 'conversation');
    RETURN NULL;
END $$;

CREATE TRIGGER reenrich_mark_insert AFTER INSERT ON conversations
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION reenrich_mark_inserted_conversations();

-- ... and changed inputs (never the worker's own columns).
CREATE FUNCTION reenrich_mark_updated_conversation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM reenrich_mark(ARRAY[NEW.conversation_id], 'conversation');
    RETURN NULL;
END $$;

CREATE TRIGGER reenrich_mark_update
AFTER UPDATE OF parsed_json, persona_id, emotional_arc_id, training_topic_id, template_id,
                quality_score, created_at ON conversations
FOR EACH ROW
WHEN ((OLD.parsed_json, OLD.persona_id, OLD.emotional_arc_id, OLD.training_topic_id,
       OLD.template_id, OLD.quality_score, OLD.created_at)
      IS DISTINCT FROM
      (NEW.parsed_json, NEW.persona_id, NEW.emotional_arc_id, NEW.training_topic_id,
       NEW.template_id, NEW.quality_score, NEW.created_at))
EXECUTE FUNCTION reenrich_mark_updated_conversation();

-- Scaffolding: every conversation that uses the changed row. Deleting a
-- referenced row is refused by the foreign keys, and a new row is used by
-- no conversation yet, so updates are the only edits that matter.
CREATE FUNCTION reenrich_mark_scaffolding_users() RETURNS trigger
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

CREATE TRIGGER reenrich_mark_users
AFTER UPDATE OF persona_key, name, archetype, demographics, financial_background ON personas
FOR EACH ROW
WHEN ((OLD.persona_key, OLD.name, OLD.archetype, OLD.demographics, OLD.financial_background)
      IS DISTINCT FROM
      (NEW.persona_key, NEW.name, NEW.archetype, NEW.demographics, NEW.financial_background))
EXECUTE FUNCTION reenrich_mark_scaffolding_users();

CREATE TRIGGER reenrich_mark_users
AFTER UPDATE OF arc_key, name, starting_emotion, ending_emotion, response_techniques
ON emotional_arcs
FOR EACH ROW
WHEN ((OLD.arc_key, OLD.name, OLD.starting_emotion, OLD.ending_emotion, OLD.response_techniques)
      IS DISTINCT FROM
      (NEW.arc_key, NEW.name, NEW.starting_emotion, NEW.ending_emotion, NEW.response_techniques))
EXECUTE FUNCTION reenrich_mark_scaffolding_users();

CREATE TRIGGER reenrich_mark_users
AFTER UPDATE OF topic_key, name, complexity_level ON training_topics
FOR EACH ROW
WHEN ((OLD.topic_key, OLD.name, OLD.complexity_level)
      IS DISTINCT FROM (NEW.topic_key, NEW.name, NEW.complexity_level))
EXECUTE FUNCTION reenrich_mark_scaffolding_users();

CREATE TRIGGER reenrich_mark_users
AFTER UPDATE OF template_name, category ON prompt_templates
FOR EACH ROW
WHEN ((OLD.template_name, OLD.category) IS DISTINCT FROM (NEW.template_name, NEW.category))
EXECUTE FUNCTION reenrich_mark_scaffolding_users();

-- generation_logs: the latest system prompt is an input. New logs (one
-- statement, however many rows) ...
CREATE FUNCTION reenrich_mark_logged_conversations() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM reenrich_mark(ARRAY(SELECT DISTINCT conversation_id FROM new_rows),
                          'generation_log');
    RETURN NULL;
END $$;

CREATE TRIGGER reenrich_mark_insert AFTER INSERT ON generation_logs
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION reenrich_mark_logged_conversations();

-- ... and changed or deleted ones. A log deleted with its conversation
-- (ON DELETE CASCADE) marks nothing: the conversation is gone.
CREATE FUNCTION reenrich_mark_changed_log() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM reenrich_mark(ARRAY(
        SELECT c.conversation_id FROM conversations c
        WHERE c.conversation_id IN (OLD.conversation_id, NEW.conversation_id)),
        'generation_log');
    RETURN NULL;
END $$;

CREATE TRIGGER reenrich_mark_change
AFTER UPDATE OF conversation_id, system_prompt, created_at ON generation_logs
FOR EACH ROW
WHEN ((OLD.conversation_id, OLD.system_prompt, OLD.created_at)
      IS DISTINCT FROM (NEW.conversation_id, NEW.system_prompt, NEW.created_at))
EXECUTE FUNCTION reenrich_mark_changed_log();

CREATE TRIGGER reenrich_mark_delete AFTER DELETE ON generation_logs
FOR EACH ROW EXECUTE FUNCTION reenrich_mark_changed_log();
"""

DOWNGRADE = """
DROP TRIGGER reenrich_mark_delete ON generation_logs;
DROP TRIGGER reenrich_mark_change ON generation_logs;
DROP TRIGGER reenrich_mark_insert ON generation_logs;
DROP TRIGGER reenrich_mark_users ON prompt_templates;
DROP TRIGGER reenrich_mark_users ON training_topics;
DROP TRIGGER reenrich_mark_users ON emotional_arcs;
DROP TRIGGER reenrich_mark_users ON personas;
DROP TRIGGER reenrich_mark_update ON conversations;
DROP TRIGGER reenrich_mark_insert ON conversations;
DROP FUNCTION reenrich_mark_changed_log();
DROP FUNCTION reenrich_mark_logged_conversations();
DROP FUNCTION reenrich_mark_scaffolding_users();
DROP FUNCTION reenrich_mark_updated_conversation();
DROP FUNCTION reenrich_mark_inserted_conversations();
DROP FUNCTION reenrich_mark(uuid[], text);
DROP TABLE follow_workers;
DROP TABLE enrichment_queue;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
