"""`reenrich demo`: the whole job end to end on the bundled sample data.

The demo writes only into a database that is empty or holds nothing but its
own sample (the embedded one by default): on any other it refuses before
writing anything, and says how to run it on a database of its own.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from worker.config import load_enrichment_config
from worker.db import checkpoints, migrate
from worker.db.engine import target
from worker.enrichment.contract import in_contract_order
from worker.enrichment.processing import Processor
from worker.errors import ReenrichError
from worker.jobs.backfill import BackfillOptions, run_backfill
from worker.jobs.importer import import_path

if TYPE_CHECKING:
    from worker.cli.app import Context

# A legacy row of the sample: its parsed document has no input_parameters,
# but the row references its persona, arc and topic.
LEGACY_ID = uuid.UUID("7a1e9c52-3b8f-4d2a-9e61-0c4b5d8f2a17")
SCAFFOLDING_KEYS = ("persona_archetype", "emotional_arc", "emotional_arc_key", "training_topic",
                    "training_topic_key")
# reenrich's own tables (every table a migration creates, read from the
# migrations' downgrades): rows in them that are not the sample's are someone's data.
def own_tables() -> tuple[str, ...]:
    from worker.db import migrate

    names = {t for rev in migrate.revisions() if rev != "base"
             for t in migrate.tables_dropped_by(rev)}
    return (*sorted(names), "alembic_version")


# (table, key column, sample record type, key field): what the sample itself holds.
SAMPLE_KEYS = (("conversations", "conversation_id::text", "conversation", "conversation_id"),
               ("personas", "persona_key", "persona", "persona_key"),
               ("emotional_arcs", "arc_key", "emotional_arc", "arc_key"),
               ("training_topics", "topic_key", "training_topic", "topic_key"),
               ("prompt_templates", "template_name", "prompt_template", "template_name"))


class DemoRefused(ReenrichError):
    """The demo's database holds data that is not the sample; nothing was written."""


def sample_path() -> Path:
    return Path(str(resources.files("worker").joinpath("data", "sample_bundle.jsonl")))


def _scaffolding(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict) or not document.get("training_pairs"):
        return None
    meta = document["training_pairs"][0]["conversation_metadata"]
    return {key: meta.get(key) for key in SCAFFOLDING_KEYS}


def _sample_keys() -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {kind: set() for _, _, kind, _ in SAMPLE_KEYS}
    with sample_path().open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            for _, _, kind, field in SAMPLE_KEYS:
                if record.get("type") == kind:
                    keys[kind].add(str(record[field]))
    return keys


def foreign_data(conn: Connection) -> list[str]:
    """What the database holds besides the demo's sample ([] when it may be used)."""
    found = [f"table {name}" for name in conn.execute(text(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
        "AND NOT (schemaname = 'public' AND tablename = ANY(:own)) ORDER BY 1"),
        {"own": list(own_tables())}).scalars()]
    sample = _sample_keys()
    for table, column, kind, _ in SAMPLE_KEYS:
        if not conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"),
                            {"t": f"public.{table}"}).scalar_one():
            continue
        others = conn.execute(text(
            f"SELECT count(*) FROM public.{table} WHERE NOT ({column} = ANY(:keys))"),  # noqa: S608
            {"keys": sorted(sample[kind])}).scalar_one()
        if others:
            found.append(f"{others} {table.replace('_', ' ')} not from the sample")
    return found


def _check_target(ctx: Context) -> None:
    with ctx.engine(migrated=False).connect() as conn:
        found = foreign_data(conn)
    if not found:
        return
    if ctx.embedded:
        where = f"the embedded database in {ctx.settings.data_dir.resolve()}"
        how = ("give the demo an embedded database of its own: "
               "REENRICH_DATA_DIR=/tmp/reenrich-demo reenrich demo")
    else:
        at = target(ctx.url)
        where = f"the database of DATABASE_URL ({at.where() if at else 'unknown'})"
        how = "run it on the embedded database instead: env -u DATABASE_URL reenrich demo"
    raise DemoRefused(f"the demo writes only into an empty database or its own, and "
                      f"{where} holds {', '.join(found)}: nothing was written; {how}")


def run_demo(ctx: Context, out: Callable[[str | bytes], None]) -> int:
    where = f"embedded PostgreSQL in {ctx.settings.data_dir.resolve()}" if ctx.embedded \
        else "DATABASE_URL"
    _check_target(ctx)  # before the migration: it writes too
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
