"""Dataset versions, the parts without SQL: names, options as JSON, diffs, file hashes.

A dataset version is what one export that wrote files recorded (see
`dataset-versions.md`); the SQL is in `worker.db.versions`.

Options are recorded generically: every field of `ExportOptions` (and of the
dataclasses inside it, such as the filters and the sampling spec) goes to
JSON, and comes back through the field's type annotation. A field added to
the options later is recorded without any change here; a version recorded
before the field existed gets the field's default when it is re-exported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import types
import typing
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Any

from worker.errors import ReenrichError, UsageError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # the table's CHECK, too
HASH_CHUNK = 1 << 20
# Options that say where files go (or how many processes write them), not what is in
# them: not replayed by --from-version.
PLACEMENT_FIELDS = frozenset({"output", "validation_output", "hub", "shard_size_mb",
                              "license", "workers"})


class VersionError(ReenrichError):
    """A dataset version cannot be found, named or used as asked."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise UsageError(f"--name {name!r} is not a dataset version name: use 1 to 100 letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit")
    return name


def generated_name(fmt: str, now: datetime | None = None) -> str:
    """`<format>-<UTC time>-<4 hex>`: sortable, and unique enough to need no retry."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{fmt}-{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def reenrich_version() -> str:
    try:
        return metadata.version("reenrich")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


# ---------------------------------------------------------------- options <-> JSON


def to_json(value: Any) -> Any:
    """A JSON-ready copy of an options value (dataclasses, paths, dates, tuples)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):  # absolute: a re-export may run from another folder
        return os.path.abspath(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type[Any], data: Mapping[str, Any]) -> Any:
    """Rebuild the dataclass `cls` from `to_json` output; missing fields take their default."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in data and f.init:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name])
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        real = [a for a in args if a is not type(None)]
        return _coerce(real[0], value) if len(real) == 1 else value
    if origin is tuple:
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    if origin is list:
        return [_coerce(args[0] if args else Any, v) for v in value]
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            return from_json(hint, value)
        if issubclass(hint, Path):
            return Path(value)
        if issubclass(hint, datetime):
            return datetime.fromisoformat(value)
        if issubclass(hint, uuid.UUID):
            return uuid.UUID(value)
        if hint is float and isinstance(value, int):
            return float(value)
    return value


# ---------------------------------------------------------------- diff


class Change(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    MOVED = "moved"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class MemberPair:
    """One conversation in either version: its split and hash in A and in B (None: absent)."""

    conversation_id: uuid.UUID
    split_a: str | None
    split_b: str | None
    hash_a: str | None
    hash_b: str | None


@dataclass
class VersionDiff:
    a: str
    b: str
    splits: dict[str, dict[Change, list[str]]] = field(default_factory=dict)
    unchanged: int = 0

    def _add(self, split: str, change: Change, conversation_id: uuid.UUID) -> None:
        per = self.splits.setdefault(split, {c: [] for c in Change})
        per[change].append(str(conversation_id))

    def counts(self) -> dict[str, dict[str, int]]:
        return {split: {str(c): len(ids) for c, ids in per.items()}
                for split, per in self.splits.items()}

    def as_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b,
                "splits": {split: {str(c): ids for c, ids in per.items()}
                           for split, per in sorted(self.splits.items())},
                "counts": dict(sorted(self.counts().items())), "unchanged": self.unchanged}


def diff_members(a: str, b: str, pairs: Iterable[MemberPair]) -> VersionDiff:
    """Classify each conversation of A or B, under the split it is in (B's when in B).

    `added`: in B, not in A. `removed`: in A (under A's split), not in B.
    `moved`: in both, another split in B (listed under B's split). `changed`:
    in both, another `enriched_hash` (a moved conversation can be changed too).
    """
    diff = VersionDiff(a, b)
    for p in pairs:
        if p.split_a is None and p.split_b is not None:
            diff._add(p.split_b, Change.ADDED, p.conversation_id)
        elif p.split_b is None and p.split_a is not None:
            diff._add(p.split_a, Change.REMOVED, p.conversation_id)
        elif p.split_a is not None and p.split_b is not None:
            same = True
            if p.split_a != p.split_b:
                diff._add(p.split_b, Change.MOVED, p.conversation_id)
                same = False
            if p.hash_a != p.hash_b:
                diff._add(p.split_b, Change.CHANGED, p.conversation_id)
                same = False
            diff.unchanged += same
    for per in diff.splits.values():
        for ids in per.values():
            ids.sort()
    return diff


def print_diff(diff: VersionDiff, out: typing.Callable[[str], None]) -> None:
    out(f"{diff.a} -> {diff.b}: {diff.unchanged} conversations unchanged")
    if not diff.splits:
        out("no differences")
    for split, per in sorted(diff.splits.items()):
        counts = ", ".join(f"{c} {len(ids)}" for c, ids in per.items())
        out(f"{split}: {counts}")
        for change, ids in per.items():
            for cid in ids:
                out(f"  {change} {cid}")


# ---------------------------------------------------------------- files


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A written file: `name` relative to the export's folder, `path` absolute."""

    name: str
    path: str
    split: str | None
    size_bytes: int
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path, split: str | None, base: Path | None = None) -> FileRecord:
    resolved = path.resolve()
    name = resolved.relative_to(base.resolve()).as_posix() if base is not None else path.name
    return FileRecord(name=name, path=str(resolved), split=split,
                      size_bytes=resolved.stat().st_size, sha256=sha256_of(resolved))


class FileCheck(StrEnum):
    OK = "ok"
    DIFFERS = "differs"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Verified:
    name: str
    path: str
    outcome: FileCheck
    expected: str
    actual: str | None


def locate(files: list[FileRecord], paths: list[Path]) -> list[tuple[FileRecord, Path]]:
    """Where to look for each recorded file.

    No paths: where it was written. A folder: the file's name under it (a copy of
    the export's folder, such as a clone of the Hub repository). A file: the
    recorded file with the same base name (refused when none or several match).
    """
    if not paths:
        return [(f, Path(f.path)) for f in files]
    found: list[tuple[FileRecord, Path]] = []
    for path in paths:
        if path.is_dir():
            found += [(f, path / f.name) for f in files]
            continue
        matches = [f for f in files if Path(f.name).name == path.name]
        if len(matches) != 1:
            names = ", ".join(f.name for f in files)
            raise VersionError(f"{path} is not one of the version's files ({names}): give a "
                               "file by its recorded name, or the export's folder")
        found.append((matches[0], path))
    return found


def verify_files(located: list[tuple[FileRecord, Path]]) -> list[Verified]:
    results = []
    for record, path in located:
        if not path.is_file():
            results.append(Verified(record.name, str(path), FileCheck.MISSING, record.sha256,
                                    None))
            continue
        actual = sha256_of(path)
        outcome = FileCheck.OK if actual == record.sha256 else FileCheck.DIFFERS
        results.append(Verified(record.name, str(path), outcome, record.sha256, actual))
    return results
