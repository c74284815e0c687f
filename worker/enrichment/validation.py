"""Validation of a stored parsed document before it is enriched (pure).

Blocking errors reject the document (the worker records a failure and keeps
the previous enriched document); warnings go into the row's validation
report and enrichment goes on. Every issue has a stable machine-readable
code: operators filter failures by it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

# Blocking error codes.
NOT_AN_OBJECT = "not_an_object"
MISSING_CONVERSATION_METADATA = "missing_conversation_metadata"
MISSING_TURNS = "missing_turns"
MISSING_METADATA_FIELD = "missing_metadata_field"
TOO_FEW_TURNS = "too_few_turns"
INVALID_TURN = "invalid_turn"
INVALID_TURN_NUMBER = "invalid_turn_number"
INVALID_ROLE = "invalid_role"
INVALID_CONTENT = "invalid_content"
INVALID_EMOTIONAL_CONTEXT = "invalid_emotional_context"
INVALID_INTENSITY = "invalid_intensity"
# Raised by the worker when the enrichment itself fails unexpectedly.
ENRICHMENT_ERROR = "enrichment_error"

# Warning codes.
TURN_NUMBERS_NOT_SEQUENTIAL = "turn_numbers_not_sequential"
ROLES_NOT_ALTERNATING = "roles_not_alternating"
SHORT_CONTENT = "short_content"
INTENSITY_AT_BOUND = "intensity_at_bound"
MISSING_EXPECTED_OUTCOME = "missing_expected_outcome"
CONTROL_CHARACTERS_REMOVED = "control_characters_removed"

REQUIRED_METADATA = ("client_persona", "session_context", "conversation_phase")
MIN_TURNS = 2
SHORT_CONTENT_CHARS = 10


@dataclass(frozen=True, slots=True)
class Issue:
    code: str
    message: str
    path: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "path": self.path}


@dataclass(slots=True)
class Report:
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, list[dict[str, str]]]:
        return {
            "errors": [e.as_dict() for e in self.errors],
            "warnings": [w.as_dict() for w in self.warnings],
        }


def is_number(value: Any) -> bool:
    # bool is an int subclass in Python but not a number in JSON.
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return "a number" if is_number(value) else type(value).__name__


def _check_turn(index: int, turn: Any, report: Report) -> None:
    where = f"turns[{index}]"
    err = report.errors.append
    if not isinstance(turn, dict):
        err(Issue(INVALID_TURN, f"{where} is {_type_name(turn)}, not an object", where))
        return
    if not is_number(turn.get("turn_number")):
        err(Issue(INVALID_TURN_NUMBER, f"{where}.turn_number is missing or not a number",
                  f"{where}.turn_number"))
    role = turn.get("role")
    if role not in ("user", "assistant"):
        err(Issue(INVALID_ROLE, f"{where}.role is {role!r}; expected 'user' or 'assistant'",
                  f"{where}.role"))
    content = turn.get("content")
    if not isinstance(content, str) or not content.strip():
        err(Issue(INVALID_CONTENT, f"{where}.content is missing, blank or not a string",
                  f"{where}.content"))
    elif len(content.strip()) < SHORT_CONTENT_CHARS:
        report.warnings.append(Issue(
            SHORT_CONTENT, f"{where}.content is under {SHORT_CONTENT_CHARS} characters",
            f"{where}.content"))
    emotion = turn.get("emotional_context")
    if not isinstance(emotion, dict) or is_blank(emotion.get("primary_emotion")):
        err(Issue(INVALID_EMOTIONAL_CONTEXT,
                  f"{where}.emotional_context is missing or has no primary_emotion",
                  f"{where}.emotional_context"))
        return
    intensity = emotion.get("intensity")
    if not is_number(intensity) or not 0 <= intensity <= 1:  # type: ignore[operator]
        err(Issue(INVALID_INTENSITY, f"{where}.emotional_context.intensity is {intensity!r}; "
                  "expected a number in 0..1", f"{where}.emotional_context.intensity"))
    elif intensity in (0, 1):
        report.warnings.append(Issue(
            INTENSITY_AT_BOUND, f"{where}.emotional_context.intensity is exactly {intensity}",
            f"{where}.emotional_context.intensity"))


def _check_sequence(turns: list[Any], report: Report) -> None:
    numbers = [t.get("turn_number") for t in turns if isinstance(t, dict)]
    if numbers != list(range(1, len(turns) + 1)):
        report.warnings.append(Issue(
            TURN_NUMBERS_NOT_SEQUENTIAL, "turn numbers are not 1..n in order", "turns"))
    roles = [t.get("role") for t in turns if isinstance(t, dict)]
    if any(a == b for a, b in itertools.pairwise(roles)):
        report.warnings.append(Issue(
            ROLES_NOT_ALTERNATING, "user and assistant turns do not alternate", "turns"))


def validate_parsed(document: Any) -> Report:
    """Check a stored parsed document against the contract's rules."""
    report = Report()
    if not isinstance(document, dict):
        report.errors.append(Issue(
            NOT_AN_OBJECT, f"parsed document is {_type_name(document)}, not an object"))
        return report
    meta = document.get("conversation_metadata")
    if not isinstance(meta, dict):
        report.errors.append(Issue(
            MISSING_CONVERSATION_METADATA, "conversation_metadata is missing or not an object",
            "conversation_metadata"))
    else:
        for name in REQUIRED_METADATA:
            if is_blank(meta.get(name)):
                report.errors.append(Issue(
                    MISSING_METADATA_FIELD,
                    f"conversation_metadata.{name} is missing, blank or not a string",
                    f"conversation_metadata.{name}"))
        if is_blank(meta.get("expected_outcome")):
            report.warnings.append(Issue(
                MISSING_EXPECTED_OUTCOME, "conversation_metadata.expected_outcome is missing",
                "conversation_metadata.expected_outcome"))
    turns = document.get("turns")
    if not isinstance(turns, list):
        report.errors.append(Issue(MISSING_TURNS, "turns is missing or not an array", "turns"))
        return report
    if len(turns) < MIN_TURNS:
        report.errors.append(Issue(
            TOO_FEW_TURNS, f"{len(turns)} turn(s); at least {MIN_TURNS} are required", "turns"))
    for index, turn in enumerate(turns):
        _check_turn(index, turn, report)
    _check_sequence(turns, report)
    return report
