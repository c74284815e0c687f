"""The Python API for the generation pipeline: enrich conversations in-process.

    from sqlalchemy import create_engine
    from worker import enrich_conversations

    engine = create_engine("postgresql+psycopg://app@db/lora")
    for result in enrich_conversations(engine, [conversation_id]):
        if not result.ok:  # "failed" (code, reason) or "not_found"
            print(result.line())

Same path as `reenrich follow` (same validation, same failure records, one
transaction per chunk of ids); the conversations' queue marks are removed,
so a running `follow` does not enrich them again. It waits for a row
another transaction holds (a follow worker writing it) rather than skip it.
The database schema must be at the current head (`reenrich migrate`).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import psycopg
import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from worker.config import EnrichmentConfig, load_enrichment_config
from worker.db.engine import make_engine, normalize_url
from worker.enrichment.processing import FAILED, UPDATED, Processor
from worker.jobs.writes import BatchResult, enrich_batch

log = structlog.get_logger("reenrich.api")

Outcome = Literal["enriched", "unchanged", "failed", "not_found"]
CHUNK = 500
DEADLOCK_RETRIES = 3


@dataclass(frozen=True, slots=True)
class EnrichResult:
    """What happened to one conversation. `code`/`reason` are set when it failed."""

    conversation_id: uuid.UUID
    outcome: Outcome
    code: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("enriched", "unchanged")

    def line(self) -> str:
        """One line for people: `<id> enriched`, `<id> failed: <code>: <reason>`, ..."""
        if self.outcome == "failed":
            return f"{self.conversation_id} failed: {self.code}: {self.reason}"
        if self.outcome == "not_found":
            return f"{self.conversation_id} not found"
        return f"{self.conversation_id} {self.outcome}"


@functools.cache
def _default_processor() -> Processor:
    return Processor(load_enrichment_config())


def _is_deadlock(exc: OperationalError) -> bool:
    return isinstance(exc.orig, psycopg.errors.DeadlockDetected)


def _chunk_results(ids: list[uuid.UUID], batch: BatchResult) -> dict[uuid.UUID, EnrichResult]:
    out: dict[uuid.UUID, EnrichResult] = {
        i: EnrichResult(i, "not_found", "not_found", "no such conversation")
        for i in batch.not_locked}
    for row in batch.results:
        cid = row.conversation_id
        if row.outcome == FAILED:
            out[cid] = EnrichResult(cid, "failed", row.code, row.message)
        else:
            out[cid] = EnrichResult(cid, "enriched" if row.outcome == UPDATED else "unchanged")
    for i in ids:  # locked but not read: deleted in between
        out.setdefault(i, EnrichResult(i, "not_found", "not_found", "no such conversation"))
    return out


def _enrich_chunk(engine: Engine, processor: Processor,
                  ids: list[uuid.UUID]) -> dict[uuid.UUID, EnrichResult]:
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with engine.connect() as conn:
                batch = enrich_batch(conn, processor, ids, skip_locked=False)
            return _chunk_results(ids, batch)
        except OperationalError as exc:
            # Waiting for rows an editor holds can deadlock with it; PostgreSQL
            # aborts one side, and this side tries again.
            if not _is_deadlock(exc) or attempt == DEADLOCK_RETRIES:
                raise
            log.warning("enrich.deadlock_retry", attempt=attempt, rows=len(ids))
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def enrich_conversations(engine_or_url: Engine | str, ids: Iterable[uuid.UUID | str], *,
                         config: EnrichmentConfig | None = None) -> list[EnrichResult]:
    """Enrich these conversations now; one result per distinct id, in the order given.

    `engine_or_url`: a SQLAlchemy Engine (psycopg 3 driver), or a database URL
    (an engine is made and disposed for this call: pass an Engine when
    calling often). `config`: the enrichment constants; default: the
    package's (as `reenrich` uses with no REENRICH_* overrides).
    Rows that fail validation are recorded in enrichment_failures, as the
    backfill does, and reported as "failed"; database errors raise.
    """
    wanted = list(dict.fromkeys(i if isinstance(i, uuid.UUID) else uuid.UUID(str(i))
                                for i in ids))
    processor = Processor(config) if config is not None else _default_processor()
    own = isinstance(engine_or_url, str)
    engine = make_engine(normalize_url(engine_or_url)) if isinstance(engine_or_url, str) \
        else engine_or_url
    results: dict[uuid.UUID, EnrichResult] = {}
    try:
        for start in range(0, len(wanted), CHUNK):
            results.update(_enrich_chunk(engine, processor, wanted[start:start + CHUNK]))
    finally:
        if own:
            engine.dispose()
    for r in results.values():
        if r.outcome == "failed":
            log.warning("enrich.row_failed", conversation_id=str(r.conversation_id),
                        error_code=r.code, message=r.reason)
    return [results[i] for i in wanted]
