"""Near-duplicate conversations (`reenrich dedup`, spec dedup.md).

- `dedup_signatures`: one MinHash signature per conversation with the hash
  of the text it was computed from (`text_hash`, sha256 of the normalised
  text). Finding what changed needs no row sent to the worker: `row_xmin` is
  the conversation row's `xmin` when it was last looked at (a row not
  updated since is skipped without reading its documents), `source_hash` the
  hash PostgreSQL computes of the stored turns (`jsonb_hash_extended(
  parsed_json -> 'turns', 0)`: an update that left the turns alone, like
  the backfill's, costs that hash and no text). `method` names the library, its algorithm version,
  the permutations and the seed: a signature made another way is recomputed.
  `layout` is the LSH banding its buckets were made with; `pending` means its
  candidate pairs have not been searched yet (an interrupted run resumes).
- `dedup_buckets`: the LSH band buckets of each distinct text (each a bigint
  hashing the band's number, width and values). Two texts sharing a bucket
  are a candidate pair.
- `dedup_pairs`: every candidate pair of texts verified so far, with its
  exact Jaccard similarity (a < b, by text hash).
- `dedup_runs`: one row per run: threshold, scope, status, its summary.
- `dedup_clusters` / `dedup_members`: the clusters of the last successful
  run, each with its size, threshold and representative; per conversation
  its cluster and whether it is the representative.
- the hashes of each conversation's normalised assistant responses are kept
  beside its signature (repeated responses across conversations).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
CREATE TABLE dedup_signatures (
    conversation_id uuid PRIMARY KEY
        REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    method          text NOT NULL,
    row_xmin        bigint NOT NULL,
    source_hash     bigint NOT NULL,
    text_hash       bytea NOT NULL,
    signature       bytea NOT NULL,
    shingles        integer NOT NULL CHECK (shingles >= 1),  -- runs of 5 tokens, with repeats
    layout          text NOT NULL,
    pending         boolean NOT NULL DEFAULT true,
    -- its distinct normalised assistant responses: hashes, and their first characters
    responses       bytea[] NOT NULL DEFAULT '{}',
    previews        text[] NOT NULL DEFAULT '{}',
    computed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dedup_signatures_text_idx ON dedup_signatures (text_hash);
CREATE INDEX dedup_signatures_pending_idx ON dedup_signatures (text_hash) WHERE pending;

-- Buckets and pairs belong to texts (a signature and a similarity depend on
-- the text only): exact copies share them, and they stay valid while any
-- conversation has that text.
-- One row per text, its bands' buckets in an array, and no index on them: a
-- run joins the changed texts' buckets with every bucket in one hash join
-- (~0.4 s for 20,000 texts here); a btree or GIN index on 25 buckets per
-- text cost more to keep up than that pass saves (measured).
CREATE TABLE dedup_buckets (
    text_hash bytea PRIMARY KEY,
    buckets   bigint[] NOT NULL
);

CREATE TABLE dedup_pairs (
    a          bytea NOT NULL,
    b          bytea NOT NULL,
    similarity double precision NOT NULL CHECK (similarity BETWEEN 0 AND 1),
    PRIMARY KEY (a, b),
    CHECK (a < b)
);
CREATE INDEX dedup_pairs_b_idx ON dedup_pairs (b);
CREATE INDEX dedup_pairs_similarity_idx ON dedup_pairs (similarity);

CREATE TABLE dedup_runs (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status                    text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed')),
    threshold                 double precision NOT NULL CHECK (threshold > 0 AND threshold <= 1),
    scope                     text NOT NULL CHECK (scope IN ('table', 'cell')),
    method                    text NOT NULL,
    layout                    text NOT NULL,
    summary                   jsonb,
    started_at                timestamptz NOT NULL DEFAULT now(),
    finished_at               timestamptz,
    last_error                text
);

CREATE TABLE dedup_clusters (
    cluster_id     uuid PRIMARY KEY,
    run_id         bigint NOT NULL REFERENCES dedup_runs (id),
    size           integer NOT NULL CHECK (size >= 2),
    threshold      double precision NOT NULL,
    scope          text NOT NULL CHECK (scope IN ('table', 'cell')),
    representative uuid NOT NULL,
    cells          integer NOT NULL
);

CREATE TABLE dedup_members (
    conversation_id   uuid PRIMARY KEY
        REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    cluster_id        uuid NOT NULL REFERENCES dedup_clusters (cluster_id) ON DELETE CASCADE,
    is_representative boolean NOT NULL
);
CREATE INDEX dedup_members_cluster_idx ON dedup_members (cluster_id);

"""

DOWNGRADE = """
DROP TABLE dedup_members;
DROP TABLE dedup_clusters;
DROP TABLE dedup_runs;
DROP TABLE dedup_pairs;
DROP TABLE dedup_buckets;
DROP TABLE dedup_signatures;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
