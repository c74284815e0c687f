"""Scaffolding, conversations, generation logs, and the worker's run/failure tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Plain SQL: operators read migrations to learn the schema.
UPGRADE = """
CREATE TABLE personas (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    persona_key          text NOT NULL UNIQUE,
    name                 text NOT NULL,
    archetype            text NOT NULL,
    demographics         jsonb,
    financial_background text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE emotional_arcs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    arc_key             text NOT NULL UNIQUE,
    name                text NOT NULL,
    starting_emotion    text NOT NULL,
    ending_emotion      text NOT NULL,
    arc_strategy        text,
    response_techniques jsonb NOT NULL DEFAULT '[]'
        CHECK (jsonb_typeof(response_techniques) = 'array'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE training_topics (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    topic_key        text NOT NULL UNIQUE,
    name             text NOT NULL,
    complexity_level text CHECK (complexity_level IN ('beginner', 'intermediate', 'advanced')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE prompt_templates (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    template_name text NOT NULL UNIQUE,
    category      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversations (
    conversation_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    persona_id            uuid REFERENCES personas (id),
    emotional_arc_id      uuid REFERENCES emotional_arcs (id),
    training_topic_id     uuid REFERENCES training_topics (id),
    template_id           uuid REFERENCES prompt_templates (id),
    quality_score         double precision CHECK (quality_score BETWEEN 1 AND 5),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    parsed_json           jsonb NOT NULL,
    enriched_json         jsonb,
    enrichment_version    integer,
    enrichment_input_hash text,
    enriched_hash         text,
    enriched_at           timestamptz,
    enrichment_status     text NOT NULL DEFAULT 'pending'
        CHECK (enrichment_status IN ('pending', 'enriched', 'failed')),
    enrichment_error      text,
    validation_report     jsonb
);
CREATE INDEX conversations_persona_idx ON conversations (persona_id);
CREATE INDEX conversations_arc_idx ON conversations (emotional_arc_id);
CREATE INDEX conversations_topic_idx ON conversations (training_topic_id);
CREATE INDEX conversations_template_idx ON conversations (template_id);
CREATE INDEX conversations_created_idx ON conversations (created_at, conversation_id);

CREATE TABLE generation_logs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    system_prompt   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX generation_logs_latest_idx
    ON generation_logs (conversation_id, created_at DESC, id DESC);

-- One row per backfill run: status, filters and exact counts.
CREATE TABLE backfill_runs (
    name               text PRIMARY KEY,
    status             text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    filters            jsonb NOT NULL DEFAULT '{}',
    dry_run            boolean NOT NULL DEFAULT false,
    enrichment_version integer NOT NULL,
    workers            integer NOT NULL DEFAULT 1 CHECK (workers >= 1),
    processed          bigint NOT NULL DEFAULT 0,
    updated            bigint NOT NULL DEFAULT 0,
    unchanged          bigint NOT NULL DEFAULT 0,
    failed             bigint NOT NULL DEFAULT 0,
    total              bigint,
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    heartbeat_at       timestamptz NOT NULL DEFAULT now(),
    last_error         text
);

-- The checkpoint: a run's key range split into slices, each with its own
-- cursor (last conversation_id committed) and lease, so several workers can
-- share a run and a dead worker's slice can be taken over.
CREATE TABLE backfill_slices (
    run_name            text NOT NULL REFERENCES backfill_runs (name) ON DELETE CASCADE,
    slice_no            integer NOT NULL,
    lower_bound         uuid,
    upper_bound         uuid,
    cursor              uuid,
    status              text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done')),
    owner               text,
    owner_pid           integer,
    owner_backend_start timestamptz,
    lease_expires_at    timestamptz,
    processed           bigint NOT NULL DEFAULT 0,
    updated             bigint NOT NULL DEFAULT 0,
    unchanged           bigint NOT NULL DEFAULT 0,
    failed              bigint NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_name, slice_no)
);

CREATE TABLE enrichment_failures (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    run_name        text REFERENCES backfill_runs (name) ON DELETE SET NULL,
    error_code      text NOT NULL,
    message         text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}',
    attempts        integer NOT NULL DEFAULT 1,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz
);
-- At most one open failure per conversation; resolved ones are history.
CREATE UNIQUE INDEX enrichment_failures_open_idx
    ON enrichment_failures (conversation_id) WHERE resolved_at IS NULL;
CREATE INDEX enrichment_failures_run_idx ON enrichment_failures (run_name);
"""

DOWNGRADE = """
DROP TABLE enrichment_failures;
DROP TABLE backfill_slices;
DROP TABLE backfill_runs;
DROP TABLE generation_logs;
DROP TABLE conversations;
DROP TABLE prompt_templates;
DROP TABLE training_topics;
DROP TABLE emotional_arcs;
DROP TABLE personas;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
