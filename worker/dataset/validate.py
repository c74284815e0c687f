"""`reenrich validate`: stored documents against the contract, exported files against trainers.

Two checks, each a list of violations with a stable code:

- stored (`check_stored`): every enriched document in the table. The key
  set (every key present, no unknown key, value types) comes from the
  pydantic models in `models.py`, the contract's single source; on top:
  the five scaffolding fields of every pair, turn numbers 1..n in order,
  pair ids unique (within a document and across the table), each pair's
  conversation_id the row's, quality score and criteria within 1..5.
- a file (`check_file`), offline, before anyone pays for a training run:
  every line a JSON object; `messages` rows (chat) and `prompt`/`completion`
  rows (TRL's prompt-completion, conversational or plain strings) with
  roles only system/user/assistant, no key but role and content inside a
  message, no empty content, user and assistant alternating after an
  optional leading system message, a chat row ending on an assistant turn, a
  prompt ending on a user turn and a completion of assistant turns;
  brightrun-v4 lines (an optional first `_meta` line, then pairs) against
  the pair model. A column whose JSON type changes between lines, or a file
  mixing row formats, is reported too: `datasets` cannot load either.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine

from worker.dataset.text import Out
from worker.db import dataset
from worker.enrichment.models import EnrichedDocument, TrainingPair
from worker.enrichment.validation import Issue

SCAFFOLDING_FIELDS = ("persona_archetype", "emotional_arc", "emotional_arc_key",
                      "training_topic", "training_topic_key")
QUALITY_RANGE = (1, 5)
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content")
MAX_LISTED = 1000  # violations kept for printing; the count covers them all


# A contract violation has the same shape as a validation issue: code, message, path.
Violation = Issue


# ------------------------------------------------------------ stored documents


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("int", "float"):  # pydantic's tags for union members
            out += f".{part}" if out else part
    return out


def _model_violations(model: type[BaseModel], value: Any, prefix: str = "") -> list[Violation]:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        out: dict[tuple[str, str], Violation] = {}
        for error in exc.errors():
            path = _loc(tuple(error["loc"]))
            if prefix:
                path = f"{prefix}.{path}" if path else prefix
            kind = error["type"]
            if kind == "missing":
                name = path.rsplit(".", 1)[-1]
                code = "missing_scaffolding_field" if name in SCAFFOLDING_FIELDS and \
                    "conversation_metadata" in path else "missing_key"
                message = f"{path} is missing"
            elif kind == "extra_forbidden":
                code, message = "unknown_key", f"{path} is not a key of the contract"
            else:
                code, message = "invalid_value", f"{path}: {error['msg']}"
            out.setdefault((code, path), Violation(code, message, path))
        return list(out.values())
    return []


def check_document(conversation_id: uuid.UUID, document: Any) -> list[Violation]:
    """The contract's rules on one stored enriched document."""
    if not isinstance(document, dict):
        return [Violation("not_an_object", "the enriched document is not a JSON object")]
    found = _model_violations(EnrichedDocument, document)
    pairs = document.get("training_pairs")
    if not isinstance(pairs, list):
        return found
    pairs = [p for p in pairs if isinstance(p, dict)]
    numbers = [p.get("turn_number") for p in pairs]
    if numbers != list(range(1, len(pairs) + 1)):
        found.append(Violation("turn_numbers_not_sequential",
                               f"pair turn numbers are {numbers[:12]}, not 1..{len(pairs)} "
                               "in order", "training_pairs"))
    seen: Counter[Any] = Counter(p.get("id") for p in pairs)
    for pair_id, uses in seen.items():
        if uses > 1:
            found.append(Violation("duplicate_pair_id", f"pair id {pair_id!r} is used by "
                                   f"{uses} pairs", "training_pairs"))
    low, high = QUALITY_RANGE
    for i, pair in enumerate(pairs):
        where = f"training_pairs[{i}]"
        if pair.get("conversation_id") != str(conversation_id):
            found.append(Violation("conversation_id_mismatch",
                                   f"{where}.conversation_id is {pair.get('conversation_id')!r}, "
                                   f"the row is {conversation_id}", f"{where}.conversation_id"))
        training = pair.get("training_metadata")
        if not isinstance(training, dict):
            continue
        values: dict[str, Any] = {"quality_score": training.get("quality_score")}
        criteria = training.get("quality_criteria")
        if isinstance(criteria, dict):
            values.update({f"quality_criteria.{k}": v for k, v in criteria.items()})
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) \
                    and not low <= value <= high:
                found.append(Violation("quality_out_of_range",
                                       f"{where}.training_metadata.{name} is {value}, "
                                       f"outside {low}..{high}",
                                       f"{where}.training_metadata.{name}"))
    return found


@dataclass
class StoredCheck:
    checked: int = 0
    violations: dict[uuid.UUID, list[Violation]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "valid": self.checked - len(self.violations),
            "conversations_with_violations": len(self.violations),
            "violations": [{"conversation_id": str(cid),
                            "violations": [v.as_dict() for v in found]}
                           for cid, found in sorted(self.violations.items())],
        }


def check_stored(engine: Engine) -> StoredCheck:
    """Check every stored enriched document (streamed), and pair ids across the table."""
    result = StoredCheck()
    with engine.connect() as conn:
        for conversation_id, text in dataset.stream_stored_documents(conn):
            result.checked += 1
            found = check_document(conversation_id, orjson.loads(text))
            if found:
                result.violations[conversation_id] = found
        conn.rollback()
        duplicates = dataset.duplicate_pair_ids(conn)
    for pair_id, owners, uses in duplicates:
        if len(owners) < 2:
            continue  # within one document: reported by check_document
        for owner in owners:
            others = ", ".join(str(o) for o in owners if o != owner)
            result.violations.setdefault(owner, []).append(Violation(
                "pair_id_not_unique", f"pair id {pair_id!r} ({uses} uses) is also used by "
                f"conversation(s) {others}", "training_pairs"))
    return result


# ------------------------------------------------------------ exported files


def _json_type(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _message_violations(messages: Any, where: str) -> Iterator[Violation]:
    if not isinstance(messages, list) or not messages:
        yield Violation("invalid_messages", f"{where} must be a non-empty array of messages",
                        where)
        return
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            yield Violation("invalid_message", f"{at} is not an object", at)
            continue
        for key in message:
            if key not in MESSAGE_KEYS:
                yield Violation("unknown_message_key",
                                f"{at} has the key {key!r}; a message holds only role and "
                                "content (metadata goes in top-level columns)", f"{at}.{key}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            yield Violation("invalid_role", f"{at}.role is {role!r}; expected system, user or "
                            "assistant", f"{at}.role")
        if not isinstance(content, str):
            yield Violation("invalid_content", f"{at}.content is missing or not a string",
                            f"{at}.content")
        elif not content.strip():
            yield Violation("empty_content", f"{at}.content is empty", f"{at}.content")


def _sequence_violations(roles: list[Any], where: str, *, last: str | None) -> Iterator[Violation]:
    """Optional system first, then user/assistant alternating from user; ending on `last`."""
    body = roles[1:] if roles and roles[0] == "system" else roles
    offset = len(roles) - len(body)
    for i, role in enumerate(body):
        expected = ("user", "assistant")[i % 2]
        if role == "system":
            yield Violation("misplaced_system", f"{where}[{i + offset}] is a system message "
                            "after the first message", f"{where}[{i + offset}]")
            return
        if role in ("user", "assistant") and role != expected:
            yield Violation("roles_not_alternating",
                            f"{where}[{i + offset}] is {role}; expected {expected} (user and "
                            "assistant alternate, starting with user)", f"{where}[{i + offset}]")
            return
    if not body:
        yield Violation("no_turns", f"{where} has no user or assistant message", where)
    elif last is not None and body[-1] != last:
        article = "an" if last == "assistant" else "a"
        yield Violation(f"not_ending_on_{last}",
                        f"{where} ends on {body[-1]}; it must end on {article} {last} turn", where)


def _roles(messages: Any) -> list[Any]:
    if not isinstance(messages, list):
        return []
    return [m.get("role") for m in messages if isinstance(m, dict)]


def check_chat_row(row: dict[str, Any]) -> list[Violation]:
    found = list(_message_violations(row.get("messages"), "messages"))
    if not found:
        found += _sequence_violations(_roles(row["messages"]), "messages", last="assistant")
    return found


def check_prompt_completion_row(row: dict[str, Any]) -> list[Violation]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str) or isinstance(completion, str):  # TRL's standard (plain) form
        found = []
        for name, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, str) or not value.strip():
                found.append(Violation("invalid_text", f"{name} must be a non-empty string "
                                       "(or both prompt and completion lists of messages)", name))
        return found
    found = list(_message_violations(prompt, "prompt"))
    found += _message_violations(completion, "completion")
    if found:
        return found
    prompt_roles, completion_roles = _roles(prompt), _roles(completion)
    found += _sequence_violations(prompt_roles, "prompt", last="user")
    if any(role != "assistant" for role in completion_roles):
        found.append(Violation("completion_not_assistant",
                               "completion must hold assistant messages only", "completion"))
    elif not found:
        found += _sequence_violations(prompt_roles + completion_roles, "prompt+completion",
                                      last="assistant")
    return found


def check_brightrun_row(row: dict[str, Any], line: int) -> list[Violation]:
    if "_meta" in row:
        if line != 1:
            return [Violation("misplaced_meta", "a _meta line may only be the first line")]
        meta = row["_meta"]
        if not isinstance(meta, dict) or not {"file_name", "total_pairs", "version"} <= set(meta):
            return [Violation("invalid_meta", "_meta must hold file_name, total_pairs, version",
                              "_meta")]
        return []
    found = _model_violations(TrainingPair, row)
    if row.get("target_response") is None:
        found.append(Violation("not_an_assistant_pair",
                               "brightrun-v4 lines are assistant pairs (target_response set)",
                               "target_response"))
    return found


def row_format(row: dict[str, Any]) -> str | None:
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "prompt-completion"
    if "_meta" in row or ("target_response" in row and "training_metadata" in row):
        return "brightrun-v4"
    return None


@dataclass
class FileCheck:
    path: str
    lines: int = 0
    formats: Counter[str] = field(default_factory=Counter)
    violation_count: int = 0
    violations: list[tuple[int, Violation]] = field(default_factory=list)

    def add(self, line: int, violation: Violation) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_LISTED:
            self.violations.append((line, violation))

    @property
    def ok(self) -> bool:
        return self.violation_count == 0 and self.lines > 0

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.path, "ok": self.ok, "lines": self.lines,
            "formats": dict(sorted(self.formats.items())),
            "violation_count": self.violation_count,
            "truncated": self.violation_count > len(self.violations),
            "violations": [{"line": line, **v.as_dict()} for line, v in self.violations],
        }


def check_file(path: Path) -> FileCheck:
    """Check an exported JSON Lines file, streaming (any size)."""
    result = FileCheck(path=str(path))
    first_format: tuple[int, str] | None = None
    column_types: dict[str, tuple[int, str]] = {}
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            result.lines = number
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                result.add(number, Violation("blank_line", "the line is empty"))
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                result.add(number, Violation("not_json", f"not valid JSON: {exc}"))
                continue
            if not isinstance(row, dict):
                result.add(number, Violation("not_an_object", "the line is not a JSON object"))
                continue
            fmt = row_format(row)
            if fmt is None and "training_file_metadata" in row:
                result.add(number, Violation(
                    "not_json_lines", "this is a full-json training file (one document); "
                    "--file checks JSON Lines exports: chat, prompt-completion, brightrun-v4"))
                continue
            if fmt is None:
                result.add(number, Violation(
                    "unknown_row", "the line has neither messages (chat) nor prompt/completion "
                    "nor a brightrun-v4 pair"))
                continue
            result.formats[fmt] += 1
            if first_format is None:
                first_format = (number, fmt)
            elif fmt != first_format[1]:
                result.add(number, Violation(
                    "mixed_formats", f"a {fmt} row in a file whose line {first_format[0]} is "
                    f"{first_format[1]}"))
            if fmt == "chat":
                found = check_chat_row(row)
            elif fmt == "prompt-completion":
                found = check_prompt_completion_row(row)
            else:
                found = check_brightrun_row(row, number)
            for violation in found:
                result.add(number, violation)
            for key, value in row.items():
                kind = _json_type(value)
                if kind is None:
                    continue
                seen = column_types.setdefault(key, (number, kind))
                if seen[1] != kind:
                    result.add(number, Violation(
                        "column_type_changed", f"{key} is a {kind} here but a {seen[1]} on "
                        f"line {seen[0]} (datasets needs one type per column)", key))
    if result.lines == 0:
        result.add(0, Violation("empty_file", "the file has no lines"))
    return result


# ------------------------------------------------------------ printing


def print_stored(result: StoredCheck, *, as_json: bool, out: Out) -> int:
    """Violations by conversation; exit status 1 when there are any."""
    if as_json:
        out(orjson.dumps(result.as_json()).decode())
    else:
        for conversation_id, found in sorted(result.violations.items()):
            out(f"{conversation_id}:")
            for v in found:
                out(f"  {v.code}: {v.message}")
        out(f"checked {result.checked} enriched documents: {len(result.violations)} with "
            f"violations")
    return 1 if result.violations else 0


def print_file(result: FileCheck, *, as_json: bool, out: Out) -> int:
    """Violations by line number; exit status 1 when there are any."""
    if as_json:
        out(orjson.dumps(result.as_json()).decode())
    else:
        for line, v in result.violations:
            where = f" ({v.path})" if v.path else ""
            out(f"{result.path}:{line}: {v.code}: {v.message}{where}")
        if result.violation_count > len(result.violations):
            out(f"... {result.violation_count - len(result.violations)} more (use --json "
                "for the counts)")
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.formats.items())) or "no rows"
        out(f"{result.path}: {result.lines} lines ({kinds}), {result.violation_count} "
            "violations")
    return 0 if result.ok else 1
