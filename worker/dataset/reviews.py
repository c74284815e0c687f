"""Human review of training pairs, the pure parts (`reviews.md`): sheets, filled rows.

A review binds to the text the reviewer read through `content_sha256`, the
SHA-256 (lower-case hex) of these bytes:

    UTF-8(current_user_input) + 0x00 + UTF-8(target_response)

taken from the pair as it stands in the enriched document (after the
contract's control-character removal, so the NUL separator cannot occur in
either text). The contract defines it (`worker.enrichment.models.content_sha256`);
`worker/db/reviews.py` computes the same hash in SQL; a test keeps the two equal.

A review sheet is one row per assistant pair, CSV (by the `.csv` suffix:
UTF-8 with a byte-order mark so spreadsheets detect the encoding, RFC 4180
quoting, CRLF rows) or JSON Lines (anything else). Importing reads either
back; the line reported for a bad row is the line its record starts on.
"""

from __future__ import annotations

import csv
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson

from worker.errors import ReenrichError


class ReviewStatus(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    NEEDS_REVISION = "needs_revision"


class Selection(StrEnum):
    """Which assistant pairs a sheet lists."""

    UNREVIEWED = "unreviewed"  # no review recorded (a stale review is not "unreviewed")
    STALE = "stale"  # the current review no longer matches the text
    ALL = "all"


STATUSES = tuple(s.value for s in ReviewStatus)

INFO_COLUMNS = ("conversation_id", "turn_number", "persona_archetype", "emotional_arc_key",
                "training_topic_key", "quality_tier", "current_user_input", "target_response",
                "content_sha256")
FILL_COLUMNS = ("status", "reviewer", "notes", "use_as_seed_example",
                "generate_variations_count")
SHEET_COLUMNS = INFO_COLUMNS + FILL_COLUMNS
# Columns an import needs; the others are for the reviewer's eyes. An optional
# `reviewed_at` column (ISO 8601) is read when present.
REQUIRED_COLUMNS = ("conversation_id", "turn_number", "content_sha256", "status", "reviewer")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COUNT = re.compile(r"\d+(\.0*)?")
_TRUE = {"true", "yes", "y", "1", "x"}
_FALSE = {"false", "no", "n", "0", ""}


class SheetError(ReenrichError):
    """A sheet cannot be written or read as a whole (the message says what to do)."""


def is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


# ------------------------------------------------------------------ writing


@dataclass(frozen=True, slots=True)
class SheetRow:
    conversation_id: uuid.UUID
    turn_number: int
    persona_archetype: str | None
    emotional_arc_key: str | None
    training_topic_key: str | None
    quality_tier: str | None
    current_user_input: str
    target_response: str
    content_sha256: str

    def as_dict(self) -> dict[str, Any]:
        info = {name: getattr(self, name) for name in INFO_COLUMNS}
        info["conversation_id"] = str(self.conversation_id)
        return {**info, **dict.fromkeys(FILL_COLUMNS)}


def write_sheet(path: Path, rows: Iterable[SheetRow]) -> int:
    """Write the sheet beside `path`, rename it into place when complete; rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    try:
        if is_csv(path):
            with tmp.open("w", encoding="utf-8-sig", newline="") as handle:
                writer = csv.writer(handle)  # excel dialect: CRLF, quotes where needed
                writer.writerow(SHEET_COLUMNS)
                for row in rows:
                    values = row.as_dict()
                    writer.writerow(["" if values[c] is None else values[c]
                                     for c in SHEET_COLUMNS])
                    count += 1
        else:
            with tmp.open("wb") as out:
                for row in rows:
                    out.write(orjson.dumps(row.as_dict()) + b"\n")
                    count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


# ------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class ReviewInput:
    """One filled row, checked: what `record` stores."""

    line: int
    conversation_id: uuid.UUID
    turn_number: int
    status: ReviewStatus
    reviewer: str
    notes: str | None
    use_as_seed_example: bool
    generate_variations_count: int
    content_sha256: str
    reviewed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    reason: str


@dataclass
class FilledSheet:
    reviews: list[ReviewInput] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    skipped: int = 0  # rows with a blank status


class _Bad(Exception):
    pass


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Bad(f"{name} must be text, got {type(value).__name__}")
    return str(value)


def parse_status(value: Any) -> ReviewStatus:
    text = _text(value, "status").strip().lower().replace(" ", "_").replace("-", "_")
    try:
        return ReviewStatus(text)
    except ValueError:
        raise _Bad(f"unknown status {value!r}: use {', '.join(STATUSES)}") from None


def parse_flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value, "use_as_seed_example").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Bad(f"use_as_seed_example {value!r} is not true or false")


def parse_count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise _Bad(f"generate_variations_count {value} is negative")
        return value
    text = _text(value, "generate_variations_count").strip()
    if not text:
        return 0
    if not _COUNT.fullmatch(text):
        raise _Bad(f"generate_variations_count {value!r} is not a whole number of 0 or more")
    return int(text.split(".")[0])


def _turn(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value, "turn_number").strip()
    if not re.fullmatch(r"\d{1,9}", text):
        raise _Bad(f"turn_number {value!r} is not a whole number")
    return int(text)


def _uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(_text(value, "conversation_id").strip())
    except ValueError:
        raise _Bad(f"conversation_id {value!r} is not a UUID") from None


def _when(value: Any) -> datetime | None:
    text = _text(value, "reviewed_at").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _Bad(f"reviewed_at {value!r} is not an ISO 8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_row(record: Mapping[str, Any], line: int) -> ReviewInput | None:
    """A filled row as a review; None when its status is blank (skipped). Raises _Bad."""
    if not _text(record.get("status"), "status").strip():
        return None
    reviewer = _text(record.get("reviewer"), "reviewer").strip()
    if not reviewer:
        raise _Bad("reviewer is blank: say who reviewed the pair")
    sha = _text(record.get("content_sha256"), "content_sha256").strip().lower()
    if not _SHA256.fullmatch(sha):
        raise _Bad("content_sha256 is missing or not a SHA-256: keep the column as "
                   "`reenrich review sheet` wrote it")
    notes = record.get("notes")
    if notes is not None and not isinstance(notes, str):
        raise _Bad(f"notes must be text, got {type(notes).__name__}")
    return ReviewInput(
        line=line, conversation_id=_uuid(record.get("conversation_id")),
        turn_number=_turn(record.get("turn_number")), status=parse_status(record["status"]),
        reviewer=reviewer, notes=notes or None,  # kept exactly; empty means none
        use_as_seed_example=parse_flag(record.get("use_as_seed_example")),
        generate_variations_count=parse_count(record.get("generate_variations_count")),
        content_sha256=sha, reviewed_at=_when(record.get("reviewed_at")))


def _csv_records(handle: IO[str], path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(handle)
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise SheetError(f"{path} has no column {', '.join(missing)}: import a sheet written "
                         "by `reenrich review sheet` (header row kept)")
    start = reader.line_num + 1
    for record in reader:
        if None in record:
            yield start, {"_extra": True}
        else:
            yield start, record
        start = reader.line_num + 1


def _jsonl_records(handle: IO[str]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, {"_error": f"not JSON: {exc}"}
            continue
        yield number, value if isinstance(value, dict) else {"_error": "not a JSON object"}


def read_filled(path: Path) -> FilledSheet:
    """Every row of a filled sheet: the reviews, the bad rows (with line), the skipped."""
    if not path.is_file():
        raise SheetError(f"no file at {path}: give the filled sheet's path")
    sheet = FilledSheet()
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            records = _csv_records(handle, path) if is_csv(path) else _jsonl_records(handle)
            for line, record in records:
                if "_error" in record:
                    sheet.bad.append(BadRow(line, str(record["_error"])))
                    continue
                if "_extra" in record:
                    sheet.bad.append(BadRow(line, "more cells than the header has columns"))
                    continue
                try:
                    review = check_row(record, line)
                except _Bad as exc:
                    sheet.bad.append(BadRow(line, str(exc)))
                    continue
                if review is None:
                    sheet.skipped += 1
                else:
                    sheet.reviews.append(review)
    except UnicodeDecodeError as exc:
        raise SheetError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start}): save the "
                         "sheet as UTF-8 (CSV UTF-8 in a spreadsheet)") from exc
    except csv.Error as exc:
        raise SheetError(f"{path} is not a readable CSV file ({exc}): save it as CSV "
                         "again") from exc
    return sheet


def check_set(status: str, reviewer: str, variations: int) -> tuple[ReviewStatus, str]:
    """`review set`'s arguments, checked before connecting (raises ValueError with why)."""
    try:
        checked = parse_status(status)
    except _Bad as exc:
        raise ValueError(str(exc)) from None
    if not reviewer.strip():
        raise ValueError("--reviewer is blank: say who reviewed the pair")
    if variations < 0:
        raise ValueError(f"--variations {variations} is negative: give 0 or more")
    return checked, reviewer.strip()
