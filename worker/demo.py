"""`reenrich demo`: the whole job end to end on the bundled sample data."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from worker.backfill import BackfillOptions, run_backfill
from worker.config import load_enrichment_config
from worker.contract import in_contract_order
from worker.db import checkpoints, migrate
from worker.importer import import_path
from worker.processing import Processor

if TYPE_CHECKING:
    from worker.cli import Context

# A legacy row of the sample: its parsed document has no input_parameters,
# but the row references its persona, arc and topic.
LEGACY_ID = uuid.UUID("7a1e9c52-3b8f-4d2a-9e61-0c4b5d8f2a17")
SCAFFOLDING_KEYS = ("persona_archetype", "emotional_arc", "emotional_arc_key", "training_topic",
                    "training_topic_key")


def sample_path() -> Path:
    return Path(str(resources.files("worker").joinpath("data", "sample_bundle.jsonl")))


def _scaffolding(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict) or not document.get("training_pairs"):
        return None
    meta = document["training_pairs"][0]["conversation_metadata"]
    return {key: meta.get(key) for key in SCAFFOLDING_KEYS}


def run_demo(ctx: Context, out: Callable[[str | bytes], None]) -> int:
    where = f"embedded PostgreSQL in {ctx.settings.data_dir.resolve()}" if ctx.embedded \
        else "DATABASE_URL"
    out(f"database: {where}")
    migrate.upgrade(ctx.url)
    engine = ctx.engine()
    summary = import_path(engine, sample_path())
    out(f"imported the sample: {sum(summary.counts.values())} records "
        f"({summary.counts.get('conversation.inserted', 0)} new conversations)")

    with engine.connect() as conn:
        before = conn.execute(text(
            "SELECT parsed_json ? 'input_parameters' AS has_params, enriched_json "
            "FROM conversations WHERE conversation_id = :id"), {"id": LEGACY_ID}).one()
    out("")
    out(f"before: legacy conversation {LEGACY_ID}")
    out(f"  parsed document has input_parameters: {before.has_params}")
    out(f"  stored enriched pairs carry: {json.dumps(_scaffolding(before.enriched_json))}")

    processor = Processor(load_enrichment_config(ctx.settings))
    result = run_backfill(engine, processor, BackfillOptions(), threading.Event())
    with engine.connect() as conn:
        run = checkpoints.get_run(conn, result.run_name)
        failures = checkpoints.list_failures(conn, None)
        after = conn.execute(text("SELECT enriched_json FROM conversations "
                                  "WHERE conversation_id = :id"), {"id": LEGACY_ID}).scalar()
    out("")
    out(f"after:  enriched pairs carry: {json.dumps(_scaffolding(after), ensure_ascii=False)}")
    out("")
    if run is not None:
        out(f"backfill run {run.name}: {run.status}; processed {run.processed}, "
            f"updated {run.updated}, unchanged {run.unchanged}, failed {run.failed}")
    for failure in failures:
        out(f"  failed {failure['conversation_id']}: {failure['error_code']}: "
            f"{failure['message']}")
    out("")
    out("one enriched document (reenrich show " + str(LEGACY_ID) + "):")
    out(json.dumps(in_contract_order(after), ensure_ascii=False, indent=2))
    return 0
