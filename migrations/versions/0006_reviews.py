"""Human reviews of training pairs, and the trigger that re-enriches a reviewed conversation.

`reviews` keeps every review ever recorded. The *current* review of a pair
(conversation_id, turn_number) is its row with `superseded_at IS NULL` (at
most one, by a partial unique index); recording a newer one sets
`superseded_at` on the old row, which stays as history (who decided what,
when). `content_sha256` binds a review to the text the reviewer read (see
worker/reviews.py for the byte layout): when the pair's text changes, the
review no longer matches and counts as stale. Nothing is deleted.

A new review is an input of its conversation's enriched document, so its
insert marks the conversation in the follow queue (0003's `reenrich_mark`).
A deleted review (an operator's cleanup) marks it too; a review deleted with
its conversation (ON DELETE CASCADE) marks nothing.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
CREATE TABLE reviews (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id           uuid NOT NULL
        REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    turn_number               integer NOT NULL,
    status                    text NOT NULL
        CHECK (status IN ('approved', 'rejected', 'needs_revision')),
    reviewer                  text NOT NULL CHECK (btrim(reviewer) <> ''),
    notes                     text,
    use_as_seed_example       boolean NOT NULL DEFAULT false,
    generate_variations_count integer NOT NULL DEFAULT 0
        CHECK (generate_variations_count >= 0),
    reviewed_at               timestamptz NOT NULL DEFAULT now(),
    content_sha256            text NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    source                    text NOT NULL DEFAULT 'set',
    recorded_at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    superseded_at             timestamptz
);
-- One current review per pair; the page query reads them by conversation.
CREATE UNIQUE INDEX reviews_current_idx
    ON reviews (conversation_id, turn_number) WHERE superseded_at IS NULL;
CREATE INDEX reviews_history_idx ON reviews (conversation_id, turn_number, recorded_at);

-- The hash a review binds to: UTF-8 user input, one 0x00 byte, UTF-8 response
-- (worker/reviews.py's content_sha256; NUL cannot occur in a jsonb string).
CREATE FUNCTION review_content_sha256(user_input text, response text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(convert_to(COALESCE(user_input, ''), 'UTF8') || decode('00', 'hex')
                         || convert_to(response, 'UTF8')), 'hex')
$$;

-- Whether a review of (turn, sha) no longer matches the enriched document:
-- no assistant pair of that turn has that text (changed, or the turn is gone).
CREATE FUNCTION review_is_stale(document jsonb, turn integer, sha text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT EXISTS (
        SELECT 1
        FROM jsonb_array_elements(CASE WHEN jsonb_typeof(document -> 'training_pairs') = 'array'
                                       THEN document -> 'training_pairs'
                                       ELSE '[]'::jsonb END) AS p(pair)
        WHERE p.pair ->> 'turn_number' = CAST(turn AS text)
          AND jsonb_typeof(p.pair -> 'target_response') = 'string'
          AND review_content_sha256(p.pair ->> 'current_user_input',
                                    p.pair ->> 'target_response') = sha)
$$;

CREATE FUNCTION reenrich_mark_reviewed_conversations() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM reenrich_mark(ARRAY(SELECT DISTINCT conversation_id FROM new_rows), 'review');
    ELSE
        PERFORM reenrich_mark(ARRAY(
            SELECT DISTINCT c.conversation_id FROM old_rows o
            JOIN conversations c ON c.conversation_id = o.conversation_id), 'review');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER reenrich_mark_insert AFTER INSERT ON reviews
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION reenrich_mark_reviewed_conversations();

CREATE TRIGGER reenrich_mark_delete AFTER DELETE ON reviews
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION reenrich_mark_reviewed_conversations();
"""

DOWNGRADE = """
DROP TRIGGER reenrich_mark_delete ON reviews;
DROP TRIGGER reenrich_mark_insert ON reviews;
DROP FUNCTION reenrich_mark_reviewed_conversations();
DROP FUNCTION review_is_stale(jsonb, integer, text);
DROP FUNCTION review_content_sha256(text, text);
DROP TABLE reviews;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
