from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine, text

from tests.helpers import seed
from worker.config import EnrichmentConfig
from worker.enrichment.processing import Processor
from worker.jobs.backfill import BackfillOptions, run_backfill


def test_backfill_enriches_every_row(engine: Engine, tmp_path: Path,
                                     config: EnrichmentConfig) -> None:
    seed(engine, tmp_path, count=25)
    result = run_backfill(engine, Processor(config), BackfillOptions(batch_size=7),
                          threading.Event())
    assert (result.status, result.processed, result.updated, result.failed) == \
        ("succeeded", 25, 25, 0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM conversations "
                                 "WHERE enrichment_status = 'enriched'")).scalar() == 25
