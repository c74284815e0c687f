"""`reenrich import`: load a JSON bundle or a JSON Lines stream (bundle-format.md).

Records are checked one by one; a bad record is reported with its line (or
array index) and the reason, and the others are imported. JSON Lines are
read as a stream, committed in batches, so memory does not grow with the
file.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Connection, Engine

from worker.db import bundle
from worker.errors import ReenrichError

log = structlog.get_logger("reenrich.import")

BATCH = 500
# Far deeper than any generator's document (about 6 levels), far shallower
# than what recursion in the parser, the models or the server can take.
MAX_DEPTH = 100
# Numbers orjson would change silently: integers past 64 bits become floats,
# and tiny exponents underflow to 0.0. Lines with such literals (or that orjson
# refuses) are read by the strict reader, which refuses what it cannot keep.
_SUSPECT_NUMBER = re.compile(rb"\d{19,}|[eE]-\d{3,}")
UUID_NAMESPACE = uuid.UUID("6f1c7c2e-8a57-5d0e-9b6a-7a1b1e2c3d4f")
KINDS = ("persona", "emotional_arc", "training_topic", "prompt_template", "conversation")
BUNDLE_ARRAYS = {"personas": "persona", "emotional_arcs": "emotional_arc",
                 "training_topics": "training_topic", "prompt_templates": "prompt_template",
                 "conversations": "conversation"}


class ImportFileError(ReenrichError):
    """The file as a whole cannot be read (missing, not JSON, wrong shape)."""


class _Record(BaseModel):
    # Fields the contract does not name are ignored: exports of other systems carry extras.
    model_config = ConfigDict(extra="ignore")


class PersonaRecord(_Record):
    id: uuid.UUID | None = None
    persona_key: str = Field(min_length=1)
    name: str = Field(min_length=1)
    archetype: str = Field(min_length=1)
    demographics: dict[str, Any] | str | None = None
    financial_background: str | None = None


class ArcRecord(_Record):
    id: uuid.UUID | None = None
    arc_key: str = Field(min_length=1)
    name: str = Field(min_length=1)
    starting_emotion: str = Field(min_length=1)
    ending_emotion: str = Field(min_length=1)
    arc_strategy: str | None = None
    response_techniques: list[str] = Field(default_factory=list)


class TopicRecord(_Record):
    id: uuid.UUID | None = None
    topic_key: str = Field(min_length=1)
    name: str = Field(min_length=1)
    complexity_level: Literal["beginner", "intermediate", "advanced"] | None = None


class TemplateRecord(_Record):
    id: uuid.UUID | None = None
    template_name: str = Field(min_length=1)
    category: str | None = None


class ConversationRecord(_Record):
    conversation_id: uuid.UUID
    created_at: datetime | None = None
    quality_score: float | None = Field(default=None, ge=1, le=5)
    persona_key: str | None = None
    emotional_arc_key: str | None = None
    training_topic_key: str | None = None
    template_name: str | None = None
    system_prompt: str | None = None
    parsed_json: Any = Field(...)

    @field_validator("parsed_json")
    @classmethod
    def _present(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("parsed_json is required (null given)")
        return value

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("created_at needs a time zone (ISO 8601 with Z or an offset)")
        return value


MODELS: dict[str, type[_Record]] = {
    "persona": PersonaRecord, "emotional_arc": ArcRecord, "training_topic": TopicRecord,
    "prompt_template": TemplateRecord, "conversation": ConversationRecord,
}
KEY_FIELD = {"persona": "persona_key", "emotional_arc": "arc_key",
             "training_topic": "topic_key", "prompt_template": "template_name"}


@dataclass
class ImportSummary:
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "failed": self.failed,
                "errors": self.errors, "warnings": self.warnings}


@dataclass
class _Item:
    where: str
    kind: str | None
    data: Any
    error: str | None = None


class RecordRefused(ValueError):
    """A record reenrich cannot store exactly as given; the message says why."""


def _bad_constant(name: str) -> Any:
    raise RecordRefused(f"{name} is not a number JSON can carry: write it as a string or null")


def _exact_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise RecordRefused(f"the number {literal} is out of range for a double: "
                            "write it as a string")
    if value == 0.0 and any(c in "123456789" for c in literal.split("e")[0].split("E")[0]):
        raise RecordRefused(f"the number {literal} underflows to 0: write it as a string or 0")
    return value


def _exact_int(literal: str) -> int:
    value = int(literal)
    if not -(2**63) <= value < 2**64:
        raise RecordRefused(f"the integer {literal} does not fit 64 bits: write it as a string")
    return value


def strict_loads(text: str | bytes) -> Any:
    """JSON as given, or RecordRefused: no number changed, no nesting past MAX_DEPTH."""
    try:
        value = json.loads(text, parse_constant=_bad_constant, parse_float=_exact_float,
                           parse_int=_exact_int)
    except RecursionError as exc:
        raise RecordRefused(f"nested deeper than {MAX_DEPTH} levels") from exc
    _check_depth(value)
    return value


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RecordRefused(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, depth + 1) for v in item]


def _loads_line(line: bytes) -> Any:
    if _SUSPECT_NUMBER.search(line) is None:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            pass  # too deep, NaN, a lone surrogate...: the strict reader says which
        else:
            _check_depth(value)
            return value
    try:
        return strict_loads(line)
    except UnicodeDecodeError as exc:
        raise RecordRefused(f"not valid UTF-8: {exc}") from exc


def _strip_nul(value: Any) -> tuple[Any, bool]:
    """jsonb cannot hold U+0000: remove it from every string and key."""
    if isinstance(value, str):
        return (value.replace("\x00", ""), True) if "\x00" in value else (value, False)
    if isinstance(value, dict):
        out, hit = {}, False
        for k, v in value.items():
            k2, h1 = _strip_nul(k)
            v2, h2 = _strip_nul(v)
            if k2 in out:
                raise RecordRefused(f"removing NUL characters from key {k!r} makes it the "
                                    "same key as another: fix the record")
            out[k2] = v2
            hit = hit or h1 or h2
        return out, hit
    if isinstance(value, list):
        items = [_strip_nul(v) for v in value]
        return [v for v, _ in items], any(h for _, h in items)
    return value, False


def _iter_jsonl(path: Path) -> Iterator[_Item]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                record = _loads_line(line)
            except RecordRefused as exc:
                yield _Item(where, None, None, str(exc))
                continue
            except ValueError as exc:
                yield _Item(where, None, None, f"not valid JSON: {exc}")
                continue
            if not isinstance(record, dict):
                yield _Item(where, None, None, "a record must be a JSON object")
                continue
            kind = record.get("type")
            if kind not in KINDS:
                yield _Item(where, None, None,
                            f"type is {kind!r}; expected one of {', '.join(KINDS)}")
                continue
            yield _Item(where, kind, record)


def _iter_bundle(path: Path) -> Iterator[_Item]:
    try:
        document = strict_loads(path.read_text(encoding="utf-8"))
    except RecordRefused as exc:
        raise ImportFileError(f"{path}: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImportFileError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ImportFileError(f"{path}: a bundle is one JSON object with arrays "
                              f"{', '.join(BUNDLE_ARRAYS)}")
    unknown = set(document) - set(BUNDLE_ARRAYS)
    if unknown:
        log.warning("import.unknown_arrays", arrays=sorted(unknown))
    # Scaffolding first, so conversations can name it whatever the file's order.
    for array, kind in BUNDLE_ARRAYS.items():
        records = document.get(array, [])
        if not isinstance(records, list):
            yield _Item(array, None, None, f"{array} must be an array")
            continue
        for index, record in enumerate(records):
            where = f"{array}[{index}]"
            if not isinstance(record, dict):
                yield _Item(where, None, None, "a record must be a JSON object")
            else:
                yield _Item(where, kind, record)


def read_records(path: Path) -> Iterator[_Item]:
    if not path.exists():
        raise ImportFileError(f"{path} does not exist")
    if path.suffix in (".jsonl", ".ndjson"):
        return _iter_jsonl(path)
    if path.suffix == ".json":
        return _iter_bundle(path)
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    # Unknown extension: one object spanning lines is a bundle, else lines.
    return _iter_bundle(path) if head.startswith(b"{") and b"\n" in head \
        and not head.split(b"\n", 1)[0].rstrip().endswith(b"}") else _iter_jsonl(path)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class _Importer:
    def __init__(self, conn: Connection, summary: ImportSummary) -> None:
        self.conn = conn
        self.summary = summary
        self.ids: dict[tuple[str, str], uuid.UUID] = {}

    def _id_for(self, kind: str, key: str) -> uuid.UUID | None:
        cached = self.ids.get((kind, key))
        if cached is None:
            cached = bundle.lookup_key(self.conn, kind, key)
            if cached is not None:
                self.ids[(kind, key)] = cached
        return cached

    def scaffolding(self, kind: str, record: _Record) -> str:
        key = getattr(record, KEY_FIELD[kind])
        given = getattr(record, "id", None)
        params = record.model_dump(mode="json", exclude={"id"})
        params["key"] = key
        params["id"] = given or uuid.uuid5(UUID_NAMESPACE, f"{kind}:{key}")
        if isinstance(record, PersonaRecord):
            params["demographics"] = (orjson.dumps(record.demographics).decode()
                                      if record.demographics is not None else None)
        if kind == "emotional_arc":
            params["response_techniques"] = orjson.dumps(params["response_techniques"]).decode()
        outcome = bundle.upsert_scaffolding(self.conn, kind, params)
        self.ids.pop((kind, key), None)
        return outcome

    def conversation(self, record: ConversationRecord) -> str:
        refs: dict[str, uuid.UUID | None] = {}
        for kind, attr, column in (("persona", "persona_key", "persona_id"),
                                   ("emotional_arc", "emotional_arc_key", "arc_id"),
                                   ("training_topic", "training_topic_key", "topic_id"),
                                   ("prompt_template", "template_name", "template_id")):
            key = getattr(record, attr)
            refs[column] = None
            if key is not None:
                found = self._id_for(kind, key)
                if found is None:
                    raise LookupError(f"unknown {attr} {key!r}: import that {kind} first "
                                      "(or in the same file)")
                refs[column] = found
        params = {
            "conversation_id": record.conversation_id,
            "quality_score": record.quality_score,
            "created_at": record.created_at,
            "parsed_json": orjson.dumps(record.parsed_json).decode(),
            **refs,
        }
        return bundle.upsert_conversation(self.conn, params, record.system_prompt)

    def one(self, item: _Item) -> None:
        assert item.kind is not None
        data, had_nul = _strip_nul(item.data)
        label = data.get("conversation_id") or data.get(KEY_FIELD.get(item.kind, ""), "")
        if had_nul:
            warning = {"where": item.where, "record": str(label),
                       "message": "NUL characters removed (jsonb cannot store U+0000)"}
            self.summary.warnings.append(warning)
            log.warning("import.nul_removed", where=item.where, record=str(label))
        record = MODELS[item.kind].model_validate(data)
        with self.conn.begin_nested():
            if isinstance(record, ConversationRecord):
                outcome = self.conversation(record)
            else:
                outcome = self.scaffolding(item.kind, record)
        self.summary.counts[f"{item.kind}.{outcome}"] += 1


def import_path(engine: Engine, path: Path) -> ImportSummary:
    summary = ImportSummary()
    items = read_records(path)
    done = 0
    conn = engine.connect()
    try:
        importer = _Importer(conn, summary)
        conn.begin()
        for item in items:
            error = item.error
            if error is None:
                try:
                    importer.one(item)
                except ValidationError as exc:
                    error = _describe(exc)
                except (LookupError, RecordRefused) as exc:
                    error = str(exc)
                except Exception as exc:  # a database error for this record only
                    error = f"database rejected the record: {str(exc).splitlines()[0]}"
            if error is not None:
                entry = {"where": item.where, "type": item.kind, "reason": error}
                summary.errors.append(entry)
                log.error("import.record_failed", **entry)
            done += 1
            if done % BATCH == 0:
                conn.commit()
                conn.begin()
                log.debug("import.progress", records=done)
        conn.commit()
    finally:
        conn.close()
    log.info("import.finished", path=str(path), records=done, failed=summary.failed,
             **{k.replace(".", "_"): v for k, v in sorted(summary.counts.items())})
    return summary
