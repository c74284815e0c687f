"""Small helpers shared by the tests (arranging data through the real import path)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from worker import synthetic
from worker.jobs.importer import ImportSummary, import_path


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def import_records(engine: Engine, tmp_path: Path, records: Iterable[dict[str, Any]],
                   name: str = "bundle.jsonl") -> ImportSummary:
    return import_path(engine, write_jsonl(tmp_path / name, records))


def seed(engine: Engine, tmp_path: Path, count: int = 30, seed: int = 11,
         extra: Iterable[dict[str, Any]] = ()) -> ImportSummary:
    """Scaffolding plus `count` synthetic conversations (70% new, 20% legacy, 10% bare)."""
    records = [*synthetic.scaffolding_records(),
               *synthetic.conversation_records(count, seed=seed), *extra]
    summary = import_records(engine, tmp_path, records)
    assert summary.failed == 0, summary.errors
    return summary
