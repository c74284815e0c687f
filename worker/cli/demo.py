"""`reenrich demo`: the whole job end to end on the bundled sample data.

The demo writes only into a database that is empty or holds nothing but its
own sample (the embedded one by default): on any other it refuses before
writing anything, and says how to run it on a database of its own.
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.cli.args import Subparsers, add_command
from worker.cli.output import Out, write
from worker.errors import ReenrichError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from worker.cli.context import Context

# A legacy row of the sample: its parsed document has no input_parameters,
# but the row references its persona, arc and topic.
LEGACY_ID = uuid.UUID("7a1e9c52-3b8f-4d2a-9e61-0c4b5d8f2a17")
SCAFFOLDING_KEYS = ("persona_archetype", "emotional_arc", "emotional_arc_key", "training_topic",
                    "training_topic_key")
# (table, sample record type, key field): what the sample itself holds (the
# key column of each table is in worker.db.admin.rows_not_in).
SAMPLE_KEYS = (("conversations", "conversation", "conversation_id"),
               ("personas", "persona", "persona_key"),
               ("emotional_arcs", "emotional_arc", "arc_key"),
               ("training_topics", "training_topic", "topic_key"),
               ("prompt_templates", "prompt_template", "template_name"))


def register(commands: Subparsers) -> None:
    add_command(commands, "demo", cmd_demo, "embedded PostgreSQL + sample data + backfill, end "
                "to end (never into a database holding other data)")


def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    return run_demo(ctx, out=write)


# reenrich's own tables (every table a migration creates, read from the
# migrations' downgrades): rows in them that are not the sample's are someone's data.
def own_tables() -> tuple[str, ...]:
    from worker.db import migrate

    names = {t for rev in migrate.revisions() if rev != "base"
             for t in migrate.tables_dropped_by(rev)}
    return (*sorted(names), "alembic_version")


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
    keys: dict[str, set[str]] = {kind: set() for _, kind, _ in SAMPLE_KEYS}
    with sample_path().open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            for _, kind, field in SAMPLE_KEYS:
                if record.get("type") == kind:
                    keys[kind].add(str(record[field]))
    return keys


def foreign_data(conn: Connection) -> list[str]:
    """What the database holds besides the demo's sample ([] when it may be used)."""
    from worker.db import admin

    found = [f"table {name}" for name in admin.other_tables(conn, own_tables())]
    sample = _sample_keys()
    for table, kind, _ in SAMPLE_KEYS:
        if not admin.table_exists(conn, f"public.{table}"):
            continue
        others = admin.rows_not_in(conn, table, sorted(sample[kind]))
        if others:
            found.append(f"{others} {table.replace('_', ' ')} not from the sample")
    return found


def _check_target(ctx: Context) -> None:
    from worker.db.engine import target

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


def run_demo(ctx: Context, out: Out) -> int:
    from worker.db import admin, migrate

    where = f"embedded PostgreSQL in {ctx.settings.data_dir.resolve()}" if ctx.embedded \
        else "DATABASE_URL"
    _check_target(ctx)  # before the migration: it writes too
    out(f"database: {where}")
    migrate.upgrade(ctx.url)
    engine = ctx.engine()
    _import_sample(engine, out)
    with engine.connect() as conn:
        has_params, before = admin.legacy_view(conn, LEGACY_ID)
    out("")
    out(f"before: legacy conversation {LEGACY_ID}")
    out(f"  parsed document has input_parameters: {has_params}")
    out(f"  stored enriched pairs carry: {json.dumps(_scaffolding(before))}")
    _backfill(ctx, engine, out)
    return 0


def _import_sample(engine: Engine, out: Out) -> None:
    from worker.jobs.importer import import_path

    summary = import_path(engine, sample_path())
    out(f"imported the sample: {sum(summary.counts.values())} records "
        f"({summary.counts.get('conversation.inserted', 0)} new conversations)")


def _backfill(ctx: Context, engine: Engine, out: Out) -> None:
    """Backfill everything, then show the legacy row's scaffolding and document."""
    from worker.cli.status import Failure
    from worker.config import load_enrichment_config
    from worker.db import admin, checkpoints
    from worker.enrichment.contract import in_contract_order
    from worker.enrichment.processing import Processor
    from worker.jobs.backfill import BackfillOptions, run_backfill

    processor = Processor(load_enrichment_config(ctx.settings))
    result = run_backfill(engine, processor, BackfillOptions(), threading.Event())
    with engine.connect() as conn:
        run = checkpoints.get_run(conn, result.run_name)
        failures = [Failure.of(row) for row in checkpoints.list_failures(conn, None)]
        after = admin.enriched_document(conn, LEGACY_ID)
    out("")
    out(f"after:  enriched pairs carry: {json.dumps(_scaffolding(after), ensure_ascii=False)}")
    out("")
    if run is not None:
        out(f"backfill run {run.name}: {run.status}; processed {run.processed}, "
            f"updated {run.updated}, unchanged {run.unchanged}, failed {run.failed}")
    for failure in failures:
        out(f"  failed {failure.conversation_id}: {failure.error_code}: {failure.message}")
    out("")
    out("one enriched document (reenrich show " + str(LEGACY_ID) + "):")
    out(json.dumps(in_contract_order(after), ensure_ascii=False, indent=2))
