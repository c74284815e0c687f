"""Arranging enriched data for the dataset-tool tests (export, validate, stats)."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from tests.helpers import seed
from worker.config import EnrichmentConfig
from worker.enrichment.processing import Processor
from worker.jobs.backfill import BackfillOptions, run_backfill


def backfill(engine: Engine, config: EnrichmentConfig) -> None:
    result = run_backfill(engine, Processor(config), BackfillOptions(), threading.Event())
    assert result.status == "succeeded", result


def enriched(engine: Engine, tmp_path: Path, config: EnrichmentConfig, count: int = 24,
             seed_value: int = 11) -> None:
    """Scaffolding + `count` synthetic conversations, all enriched by a real backfill."""
    seed(engine, tmp_path, count=count, seed=seed_value)
    backfill(engine, config)


def stored(engine: Engine) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    """(id, enriched document) of every enriched row, in export order."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT conversation_id, enriched_json FROM conversations "
            "WHERE enriched_json IS NOT NULL ORDER BY created_at, conversation_id")).all()
    return [(row.conversation_id, row.enriched_json) for row in rows]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def params_key(document: dict[str, Any], name: str) -> str | None:
    value: str | None = (document.get("input_parameters") or {}).get(name)
    return value
