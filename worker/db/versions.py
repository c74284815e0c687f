"""SQL of dataset versions (migration 0008): record, list, show, diff, re-export.

Members are written and read in chunks through arrays (`unnest`), one
statement per chunk, so a version of a million conversations is a few
hundred round trips, not a million.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from worker.dataset.versions import FileRecord, MemberPair, VersionError

CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class SplitCounts:
    split: str
    rows: int
    conversations: int
    pairs: int


@dataclass
class NewVersion:
    name: str
    format: str
    contract_version: int
    options: dict[str, Any]
    reenrich_version: str
    from_version: str | None
    splits: list[SplitCounts]
    files: list[FileRecord]
    members: list[tuple[uuid.UUID, str, str | None]]  # (conversation_id, split, enriched_hash)


@dataclass
class StoredVersion:
    version_id: int
    name: str
    created_at: datetime
    format: str
    contract_version: int
    options: dict[str, Any]
    reenrich_version: str
    from_version: str | None
    members: int
    splits: list[SplitCounts] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "created_at": self.created_at.isoformat(),
            "format": self.format, "contract_version": self.contract_version,
            "reenrich_version": self.reenrich_version, "from_version": self.from_version,
            "members": self.members,
            "rows": sum(s.rows for s in self.splits),
            "splits": {s.split: {"rows": s.rows, "conversations": s.conversations,
                                 "pairs": s.pairs} for s in self.splits},
            "files": [{"name": f.name, "path": f.path, "split": f.split,
                       "size_bytes": f.size_bytes, "sha256": f.sha256} for f in self.files],
            "options": self.options,
        }


class MemberState(StrEnum):
    SAME = "same"
    CHANGED = "changed"  # another enriched_hash now
    NOT_ENRICHED = "not_enriched"  # the row is there, its document is not
    MISSING = "missing"  # the conversation no longer exists


# ---------------------------------------------------------------- write


def name_taken(conn: Connection, name: str) -> bool:
    return bool(conn.execute(text("SELECT EXISTS (SELECT 1 FROM dataset_versions "
                                  "WHERE name = :name)"), {"name": name}).scalar_one())


def member_hashes(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """The `enriched_hash` of these conversations (call it in the export's snapshot)."""
    out: dict[uuid.UUID, str | None] = {}
    for start in range(0, len(ids), CHUNK):
        rows = conn.execute(text(
            "SELECT conversation_id, enriched_hash FROM conversations "
            "WHERE conversation_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": list(ids[start:start + CHUNK])})
        out.update({row.conversation_id: row.enriched_hash for row in rows})
    return out


INSERT_VERSION = text("""
INSERT INTO dataset_versions (name, format, contract_version, options, reenrich_version,
                              from_version)
VALUES (:name, :format, :contract_version, :options, :reenrich_version, :from_version)
RETURNING version_id
""").bindparams(bindparam("options", type_=JSONB))

INSERT_SPLIT = text("""
INSERT INTO dataset_version_splits (version_id, split, rows, conversations, pairs)
VALUES (:version_id, :split, :rows, :conversations, :pairs)
""")

INSERT_FILE = text("""
INSERT INTO dataset_version_files (version_id, name, path, split, size_bytes, sha256)
VALUES (:version_id, :name, :path, :split, :size_bytes, :sha256)
""")

INSERT_MEMBERS = text("""
INSERT INTO dataset_version_members (version_id, conversation_id, split, enriched_hash)
SELECT :version_id, m.id, m.split, m.hash
FROM unnest(CAST(:ids AS uuid[]), CAST(:splits AS text[]), CAST(:hashes AS text[]))
     AS m(id, split, hash)
""")


def insert_version(conn: Connection, version: NewVersion) -> int:
    """Record the version (the caller commits); a taken name is a VersionError."""
    params = {"name": version.name, "format": version.format,
              "contract_version": version.contract_version, "options": version.options,
              "reenrich_version": version.reenrich_version,
              "from_version": version.from_version}
    try:
        with conn.begin_nested():  # a savepoint: the caller's transaction stays usable
            version_id = int(conn.execute(INSERT_VERSION, params).scalar_one())
    except IntegrityError as exc:
        raise VersionError(f"a dataset version named {version.name!r} already exists: choose "
                           "another --name (see `reenrich datasets`)") from exc
    for split in version.splits:
        conn.execute(INSERT_SPLIT, {"version_id": version_id, "split": split.split,
                                    "rows": split.rows, "conversations": split.conversations,
                                    "pairs": split.pairs})
    for f in version.files:
        conn.execute(INSERT_FILE, {"version_id": version_id, "name": f.name, "path": f.path,
                                   "split": f.split, "size_bytes": f.size_bytes,
                                   "sha256": f.sha256})
    members = version.members
    for start in range(0, len(members), CHUNK):
        chunk = members[start:start + CHUNK]
        conn.execute(INSERT_MEMBERS, {"version_id": version_id, "ids": [m[0] for m in chunk],
                                      "splits": [m[1] for m in chunk],
                                      "hashes": [m[2] for m in chunk]})
    return version_id


# ---------------------------------------------------------------- read

VERSION_COLUMNS = """
SELECT v.version_id, v.name, v.created_at, v.format, v.contract_version, v.options,
       v.reenrich_version, v.from_version,
       (SELECT count(*) FROM dataset_version_members m
        WHERE m.version_id = v.version_id) AS members
FROM dataset_versions v
"""


def _stored(row: Any) -> StoredVersion:
    return StoredVersion(version_id=row.version_id, name=row.name, created_at=row.created_at,
                         format=row.format, contract_version=row.contract_version,
                         options=row.options, reenrich_version=row.reenrich_version,
                         from_version=row.from_version, members=int(row.members))


def _details(conn: Connection, version: StoredVersion) -> StoredVersion:
    params = {"version_id": version.version_id}
    version.splits = [SplitCounts(r.split, int(r.rows), int(r.conversations), int(r.pairs))
                      for r in conn.execute(text(
                          "SELECT split, rows, conversations, pairs FROM dataset_version_splits "
                          "WHERE version_id = :version_id ORDER BY split = 'validation', split"),
                          params)]
    version.files = [FileRecord(r.name, r.path, r.split, int(r.size_bytes), r.sha256)
                     for r in conn.execute(text(
                         "SELECT name, path, split, size_bytes, sha256 FROM "
                         "dataset_version_files WHERE version_id = :version_id "
                         "ORDER BY split IS NULL, name"), params)]
    return version


def list_versions(conn: Connection) -> list[StoredVersion]:
    rows = conn.execute(text(VERSION_COLUMNS + " ORDER BY v.created_at, v.version_id"))
    return [_details(conn, _stored(row)) for row in rows.all()]


def get_version(conn: Connection, name: str) -> StoredVersion:
    row = conn.execute(text(VERSION_COLUMNS + " WHERE v.name = :name"), {"name": name}).first()
    if row is None:
        raise VersionError(f"no dataset version named {name!r}: see `reenrich datasets` for "
                           "the names")
    return _details(conn, _stored(row))


def members(conn: Connection, version_id: int) -> dict[uuid.UUID, str]:
    """conversation_id -> split of every member."""
    rows = conn.execution_options(yield_per=CHUNK).execute(text(
        "SELECT conversation_id, split FROM dataset_version_members "
        "WHERE version_id = :version_id"), {"version_id": version_id})
    return {row.conversation_id: row.split for row in rows}


DIFF_SQL = text("""
SELECT COALESCE(a.conversation_id, b.conversation_id) AS conversation_id,
       a.split AS split_a, b.split AS split_b,
       a.enriched_hash AS hash_a, b.enriched_hash AS hash_b
FROM (SELECT * FROM dataset_version_members WHERE version_id = :a) a
FULL OUTER JOIN (SELECT * FROM dataset_version_members WHERE version_id = :b) b
    ON a.conversation_id = b.conversation_id
ORDER BY 1
""")


def diff_pairs(conn: Connection, a: int, b: int) -> Iterator[MemberPair]:
    result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(
        DIFF_SQL, {"a": a, "b": b})
    for row in result:
        yield MemberPair(row.conversation_id, row.split_a, row.split_b, row.hash_a, row.hash_b)


MEMBER_STATE_SQL = text("""
SELECT m.conversation_id,
       CASE WHEN c.conversation_id IS NULL THEN 'missing'
            WHEN c.enriched_json IS NULL THEN 'not_enriched'
            WHEN c.enriched_hash IS DISTINCT FROM m.enriched_hash THEN 'changed'
            ELSE 'same' END AS state
FROM dataset_version_members m
LEFT JOIN conversations c ON c.conversation_id = m.conversation_id
WHERE m.version_id = :version_id
ORDER BY m.conversation_id
""")


def member_states(conn: Connection, version_id: int) -> dict[MemberState, list[uuid.UUID]]:
    """Each member's document now against the one exported (call it in the snapshot)."""
    out: dict[MemberState, list[uuid.UUID]] = {state: [] for state in MemberState}
    for row in conn.execute(MEMBER_STATE_SQL, {"version_id": version_id}):
        out[MemberState(row.state)].append(row.conversation_id)
    return out
