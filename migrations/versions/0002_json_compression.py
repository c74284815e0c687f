"""Compress stored JSON with lz4 where the server supports it, else pglz.

Writing the ~50 kB enriched documents is the backfill's main cost, and pglz
spends most of the server's time compressing them; lz4 is several times
faster and compresses about as well. `SET COMPRESSION` applies to values
written from now on: the next backfill rewrites enriched_json anyway.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("enriched_json", "parsed_json")


def server_has_lz4() -> bool:
    # lz4 is listed among default_toast_compression's values only when the
    # server was built with it (the embedded wheels are not).
    return bool(op.get_bind().execute(text(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )).scalar())


def upgrade() -> None:
    lz4 = server_has_lz4()
    for column in COLUMNS:
        if lz4:
            op.execute(f"ALTER TABLE conversations ALTER COLUMN {column} SET COMPRESSION lz4")
        else:
            op.execute(f"ALTER TABLE conversations ALTER COLUMN {column} SET COMPRESSION pglz")


def downgrade() -> None:
    for column in COLUMNS:
        op.execute(f"ALTER TABLE conversations ALTER COLUMN {column} SET COMPRESSION default")
