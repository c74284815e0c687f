"""From stored rows to a page outcome: what to write, what failed, what is unchanged.

Shared by every loop (backfill, follow, enrich) so they agree on what
"unchanged" means. No SQL here: the loops hand the outcome to the repository.

Idempotence works on two hashes:
- the *input hash* covers everything a document is built from (parsed text,
  scaffolding rows, prompt, row fields, current reviews, enrichment version,
  shipped config).
  When it matches what the row stores and the row is enriched, the row is
  unchanged without enriching it at all (the cheap path of a no-op run);
- the *document hash* covers the serialized document: a row is written only
  when its new document differs from the stored one (or its status must change).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from worker.config import EnrichmentConfig
from worker.enrichment.enrich import ENRICHMENT_VERSION, InvalidDocument, enrich
from worker.enrichment.models import ConversationInputs
from worker.enrichment.rows import Changed, Failed, PageCounts, RawJsonb, StoredRow
from worker.enrichment.validation import ENRICHMENT_ERROR


class Outcome(StrEnum):
    """What happened to one row read for enrichment."""

    UPDATED = "updated"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    # Not written now, left for later: its inputs changed after the read, or
    # another session held its lock. It stays marked for the follower.
    DEFERRED = "deferred"


UPDATED, UNCHANGED, FAILED, DEFERRED = (Outcome.UPDATED, Outcome.UNCHANGED, Outcome.FAILED,
                                        Outcome.DEFERRED)
DOCUMENT_TOO_LARGE = "document_too_large"
# PostgreSQL's jsonb cannot hold 256 MB; a document is refused well before.
DEFAULT_MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
# Calibrated on real documents: what one pair costs besides its history and
# texts, and one history entry besides its content (see estimate_document_bytes).
_PAIR_OVERHEAD = 2_000
_HISTORY_OVERHEAD = 120


@dataclass(frozen=True, slots=True)
class RowResult:
    conversation_id: uuid.UUID
    outcome: Outcome
    code: str | None = None
    message: str | None = None


def tally(results: Iterable[RowResult]) -> PageCounts:
    """The counts of these results (one per row read): the one way rows are counted."""
    by = dict.fromkeys(Outcome, 0)
    for r in results:
        by[r.outcome] += 1
    return PageCounts(processed=sum(by.values()), updated=by[UPDATED], unchanged=by[UNCHANGED],
                      failed=by[FAILED], deferred=by[DEFERRED])


def estimate_document_bytes(parsed: Any, system_prompt: str) -> tuple[int, int]:
    """(turns, estimated bytes) of the document `parsed` would give, without building it.

    Every pair repeats the turns before it, so a document grows with the
    square of its turns; this sums that growth from the turn lengths alone.
    """
    turns = parsed.get("turns") if isinstance(parsed, dict) else None
    if not isinstance(turns, list):
        return 0, 0
    total = history = 0
    pair = _PAIR_OVERHEAD + len(system_prompt.encode())
    for turn in turns:
        content = turn.get("content") if isinstance(turn, dict) else None
        size = len(content.encode()) if isinstance(content, str) else 0
        total += pair + 2 * size + history
        history += size + _HISTORY_OVERHEAD
    return len(turns), total


@dataclass
class PageOutcome:
    changed: list[Changed] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    resolved: list[uuid.UUID] = field(default_factory=list)
    results: list[RowResult] = field(default_factory=list)
    # Rows read with a queue mark: dequeued after the write if still at that mark.
    marks: dict[uuid.UUID, int] = field(default_factory=dict)
    scaffolded: int = 0  # rows whose pairs now carry persona, arc or topic
    enriched_bytes: int = 0
    last_id: uuid.UUID | None = None



def _ref(obj: Any) -> Any:
    if obj is None:
        return None
    return [str(v) if isinstance(v, uuid.UUID) else v
            for v in (getattr(obj, name) for name in obj.__slots__)]


class Processor:
    """Enriches stored rows with one configuration; holds nothing per row."""

    def __init__(self, config: EnrichmentConfig, *,
                 max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> None:
        self.config = config
        self.max_document_bytes = max_document_bytes
        self.version = ENRICHMENT_VERSION
        self._fingerprint = hashlib.sha256(orjson.dumps(
            [ENRICHMENT_VERSION, config.consultant_profile, config.default_system_prompt,
             config.dataset_constants], option=orjson.OPT_SORT_KEYS)).digest()

    def input_hash(self, parsed_json: bytes, inputs: ConversationInputs) -> str:
        """Hash of what a document is built from; `inputs.parsed` is not read (its JSON is)."""
        digest = hashlib.sha256(self._fingerprint)
        digest.update(orjson.dumps([
            str(inputs.conversation_id), inputs.created_at.isoformat(), inputs.quality_score,
            inputs.has_scaffolding_reference, _ref(inputs.persona), _ref(inputs.arc),
            _ref(inputs.topic), _ref(inputs.template), inputs.system_prompt,
            # the current reviews: a recorded review changes exactly its conversation's hash
            [_ref(review) for review in inputs.reviews],
        ], option=orjson.OPT_SORT_KEYS))
        digest.update(parsed_json)
        return digest.hexdigest()

    def process(self, rows: list[StoredRow]) -> PageOutcome:
        out = PageOutcome()
        for row in rows:
            self._one(row, out)
        if rows:
            out.last_id = rows[-1].conversation_id
        return out

    def _one(self, row: StoredRow, out: PageOutcome) -> None:
        cid = row.conversation_id
        if row.marks is not None:
            out.marks[cid] = row.marks
        input_hash = self.input_hash(row.inputs_json, row.fields)
        if row.status == "enriched" and row.input_hash == input_hash:
            out.results.append(RowResult(cid, UNCHANGED))
            return
        inputs = row.inputs
        prompt = inputs.system_prompt or self.config.default_system_prompt
        turns, estimate = estimate_document_bytes(inputs.parsed, prompt)
        if estimate > self.max_document_bytes:
            message = (f"the document would take about {estimate / 1e6:.0f} MB ({turns} turns), "
                       f"over the {self.max_document_bytes / 1e6:.0f} MB limit: split the "
                       "conversation or raise REENRICH_MAX_DOCUMENT_BYTES")
            details = {"turns": turns, "estimated_bytes": estimate,
                       "limit_bytes": self.max_document_bytes}
            self._fail(row, out, DOCUMENT_TOO_LARGE, message, details,
                       {"errors": [{"code": DOCUMENT_TOO_LARGE, "message": message,
                                    "path": "turns"}], "warnings": []})
            return
        try:
            result = enrich(inputs, self.config)
        except InvalidDocument as exc:
            report = exc.report.as_dict()
            self._fail(row, out, exc.code, str(exc), {"errors": report["errors"]}, report)
            return
        except Exception as exc:  # a bug must not stop the run: record it, go on
            message = f"{type(exc).__name__}: {exc}"
            self._fail(row, out, ENRICHMENT_ERROR, message, {"exception": type(exc).__name__},
                       {"errors": [{"code": ENRICHMENT_ERROR, "message": message, "path": ""}],
                        "warnings": []})
            return
        document = orjson.dumps(result.document)
        doc_hash = hashlib.sha256(document).hexdigest()
        if row.status == "failed":
            out.resolved.append(cid)
        if row.status == "enriched" and row.enriched_hash == doc_hash:
            out.results.append(RowResult(cid, UNCHANGED))
            return
        out.changed.append(Changed(
            conversation_id=cid, document=RawJsonb(document), document_hash=doc_hash,
            input_hash=input_hash, report=RawJsonb(orjson.dumps(result.report.as_dict())),
            row_version=row.row_version, marks=row.marks))
        out.enriched_bytes += len(document)
        params = result.document["input_parameters"] or {}
        if params.get("persona_key") or params.get("emotional_arc_key") \
                or params.get("training_topic_key"):
            out.scaffolded += 1
        out.results.append(RowResult(cid, UPDATED))

    def _fail(self, row: StoredRow, out: PageOutcome, code: str, message: str,
              details: dict[str, Any], report: dict[str, Any]) -> None:
        cid = row.conversation_id
        out.failed.append(Failed(
            conversation_id=cid, code=code, message=message,
            details=RawJsonb(orjson.dumps(details)), report=RawJsonb(orjson.dumps(report)),
            rewrite_row=not (row.status == "failed" and row.error == message),
            row_version=row.row_version, marks=row.marks))
        out.results.append(RowResult(cid, FAILED, code, message))
