"""Dataset versions: which conversations (and which documents) went into which files.

`dataset_versions` holds one row per export that wrote files: its name, the
export's options as JSON, the contract version of the documents and the
format. `dataset_version_splits` the counts per split, `dataset_version_files`
each written file's path, size and SHA-256, and `dataset_version_members`
each exported conversation's split and the `enriched_hash` of the document
that was exported.

Members carry no foreign key to conversations on purpose: a version must
still say what it held after a conversation is deleted.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
CREATE TABLE dataset_versions (
    version_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    format           text NOT NULL,
    contract_version integer NOT NULL,
    options          jsonb NOT NULL,
    reenrich_version text NOT NULL,
    from_version     text
);

CREATE TABLE dataset_version_splits (
    version_id    bigint NOT NULL REFERENCES dataset_versions ON DELETE CASCADE,
    split         text NOT NULL,
    rows          bigint NOT NULL,
    conversations bigint NOT NULL,
    pairs         bigint NOT NULL,
    PRIMARY KEY (version_id, split)
);

CREATE TABLE dataset_version_files (
    version_id bigint NOT NULL REFERENCES dataset_versions ON DELETE CASCADE,
    name       text NOT NULL,   -- relative to the export's folder (what `verify DIR` looks for)
    path       text NOT NULL,   -- absolute, as written
    split      text,            -- null for the card
    size_bytes bigint NOT NULL,
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (version_id, name)
);

CREATE TABLE dataset_version_members (
    version_id      bigint NOT NULL REFERENCES dataset_versions ON DELETE CASCADE,
    conversation_id uuid NOT NULL,
    split           text NOT NULL,
    enriched_hash   text,
    PRIMARY KEY (version_id, conversation_id)
);
"""

DOWNGRADE = """
DROP TABLE dataset_version_members;
DROP TABLE dataset_version_files;
DROP TABLE dataset_version_splits;
DROP TABLE dataset_versions;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
