"""Run states and deferred rows: a status for runs that ended with failed rows, a count
of rows left for later (inputs changed during the write, or a lock held), and no
`dry_run` column (a dry run never creates a run).

The allowed transitions between statuses are written once, in
worker/jobs/run_state.py; every status change in worker/db/checkpoints.py is
guarded by them in its SQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = """
ALTER TABLE backfill_runs DROP CONSTRAINT backfill_runs_status_check;
ALTER TABLE backfill_runs ADD CONSTRAINT backfill_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'finished_with_failures', 'failed',
                      'cancelled', 'interrupted'));
UPDATE backfill_runs SET status = 'finished_with_failures'
WHERE status = 'succeeded' AND failed > 0;
ALTER TABLE backfill_runs ADD COLUMN deferred bigint NOT NULL DEFAULT 0;
ALTER TABLE backfill_slices ADD COLUMN deferred bigint NOT NULL DEFAULT 0;
ALTER TABLE backfill_runs DROP COLUMN dry_run;
"""

DOWNGRADE = """
ALTER TABLE backfill_runs ADD COLUMN dry_run boolean NOT NULL DEFAULT false;
ALTER TABLE backfill_slices DROP COLUMN deferred;
ALTER TABLE backfill_runs DROP COLUMN deferred;
UPDATE backfill_runs SET status = 'succeeded' WHERE status = 'finished_with_failures';
ALTER TABLE backfill_runs DROP CONSTRAINT backfill_runs_status_check;
ALTER TABLE backfill_runs ADD CONSTRAINT backfill_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'interrupted'));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
