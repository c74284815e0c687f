"""Near-duplicate conversations, the pure part (spec dedup.md; no database here).

The definition, binding: a conversation's *text* is its turns' contents in
turn order joined by a newline, NFKC-normalised, lower-cased; its *tokens*
are the matches of `\\w+`; its *shingles* are the distinct runs of 5 tokens
(fewer than 5 tokens: one shingle of all of them); the similarity of two
conversations is the Jaccard index of their shingle sets; near-duplicates
have a similarity of at least the threshold; clusters are the connected
components; the representative has the highest quality score, ties to the
smallest conversation id.

MinHash signatures come from rensa's R-MinHash (measured 40x faster than
datasketch here with the same estimate error: see bench/dedup_bench.py).
Candidates are found by LSH banding; every candidate is then verified with
the exact Jaccard index, so the estimate never decides a pair.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import version
from typing import Any

import numpy as np
import rensa

SHINGLE_SIZE = 5
DEFAULT_THRESHOLD = 0.7
NUM_PERM = 128
SEED = 20261126  # fixed: signatures of different runs must be comparable
TARGET_RECALL = 0.98  # per pair at the threshold (the spec asks 0.95; margin for the sketch)
DEFAULT_QUALITY = 3.0  # the contract's score for a row without one
PREVIEW_CHARS = 80

TOKEN = re.compile(r"\w+")
# Names how a signature was made: another library version, fold or seed is recomputed.
SHINGLE_FOLD = 2
METHOD = (f"rensa-{version('rensa')}-rminhash-v{rensa.RMinHash.ALGORITHM_VERSION}"
          f"-fold{SHINGLE_FOLD}-p{NUM_PERM}-s{SEED}")


class Scope(StrEnum):
    """Over which conversations near-duplicates are looked for."""

    TABLE = "table"  # the whole table
    CELL = "cell"  # only within one persona × arc × topic cell


# ------------------------------------------------------------ the definition


def turn_contents(turns: Any) -> list[str]:
    """The contents of the stored turns, in the stored (turn) order; non-text skipped."""
    if not isinstance(turns, list):
        return []
    return [t["content"] for t in turns
            if isinstance(t, dict) and isinstance(t.get("content"), str)]


def normalise(value: str) -> str:
    """NFKC, then lower case."""
    return unicodedata.normalize("NFKC", value).lower()


def conversation_text(contents: Sequence[str]) -> str:
    return normalise("\n".join(contents))


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def shingle_list(words: Sequence[str]) -> list[str]:
    """Every run of 5 tokens (repeats included), each as its tokens joined by a space.

    A token never holds a space, so the join is one-to-one. A text with fewer
    than 5 tokens has one shingle: all its tokens (none: the empty string).
    """
    if len(words) < SHINGLE_SIZE:
        return [" ".join(words)]
    return [" ".join(run) for run in zip(*(words[i:] for i in range(SHINGLE_SIZE)),
                                         strict=False)]


def shingles(text: str) -> set[str]:
    return set(shingle_list(tokens(text)))


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


# ------------------------------------------------------------ signatures


@dataclass(frozen=True, slots=True)
class Source:
    """A conversation as read for signing: its stored turns and their hash."""

    conversation_id: uuid.UUID
    row_xmin: int
    source_hash: int
    turns: Any
    old_text_hash: bytes | None = None  # of its stored signature, if any of this method

    @property
    def text(self) -> str:
        return conversation_text(turn_contents(self.turns))


@dataclass(frozen=True, slots=True)
class Sketch:
    """What is stored per conversation."""

    conversation_id: uuid.UUID
    row_xmin: int
    source_hash: int
    text_hash: bytes
    signature: bytes  # NUM_PERM uint32, little-endian
    shingles: int  # runs of 5 tokens, repeats included
    responses: tuple[tuple[bytes, str], ...] = ()  # (hash, preview) of assistant responses


def responses(turns: Any) -> tuple[tuple[bytes, str], ...]:
    """The distinct normalised assistant responses (target_response) of a conversation."""
    seen: dict[bytes, str] = {}
    if isinstance(turns, list):
        for turn in turns:
            if (isinstance(turn, dict) and turn.get("role") == "assistant"
                    and isinstance(turn.get("content"), str)):
                value = normalise(turn["content"])
                digest = hashlib.blake2b(value.encode("utf-8"), digest_size=16).digest()
                seen.setdefault(digest, value[:PREVIEW_CHARS])
    return tuple(seen.items())


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
        np.uint64(0x94D049BB133111EB))


def _mix(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """splitmix64's finaliser, on every element (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX[1]
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX[2]
    out: np.ndarray[Any, Any] = x ^ (x >> np.uint64(31))
    return out


def shingle_hashes(words: Sequence[str]) -> np.ndarray[Any, Any]:
    """The 64-bit hashes of a text's shingles (repeats included): what is signed.

    Tokens are hashed by rensa (stable across runs); a run of 5 is folded as
    a polynomial in an odd 64-bit constant, then mixed, so the hash is that of
    the sequence. Signing these instead of joined strings is ~2x faster; two
    distinct shingles collide with a chance of about 2^-64, and the exact
    check (strings) never uses them.
    """
    hashed = np.asarray(rensa.RMinHash.hash_token_sets([list(words)])[0], dtype=np.uint64)
    count = len(hashed)
    with np.errstate(over="ignore"):
        if count < SHINGLE_SIZE:
            acc = np.uint64(count)
            for value in hashed:
                acc = acc * _MIX[0] + value
            return _mix(np.array([acc], dtype=np.uint64))
        width = count - SHINGLE_SIZE + 1
        folded = hashed[:width].copy()
        for i in range(1, SHINGLE_SIZE):
            folded *= _MIX[0]
            folded += hashed[i:i + width]
        return _mix(folded)


def sketch_page(sources: Sequence[tuple[Source, str]]) -> list[Sketch]:
    """Signatures of a page of (conversation, its text): one bulk call into rensa."""
    if not sources:
        return []
    with np.errstate(over="ignore"):
        rows = [shingle_hashes(tokens(t)) for _, t in sources]
    flat = np.concatenate(rows)
    offsets = np.zeros(len(rows) + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    matrix = np.asarray(rensa.RMinHash.digest_matrix_from_flat_token_hashes(
        flat, offsets, NUM_PERM, SEED).to_rows(), dtype="<u4")
    return [Sketch(conversation_id=s.conversation_id, row_xmin=s.row_xmin,
                   source_hash=s.source_hash,
                   text_hash=text_hash(t), signature=matrix[i].tobytes(),
                   shingles=len(row), responses=responses(s.turns))
            for i, ((s, t), row) in enumerate(zip(sources, rows, strict=True))]


# ------------------------------------------------------------ LSH banding


@dataclass(frozen=True, slots=True)
class Layout:
    """`bands` bands of `rows` signature values each."""

    bands: int
    rows: int

    @property
    def name(self) -> str:
        return f"b{self.bands}r{self.rows}"

    def candidate_probability(self, similarity: float) -> float:
        """The chance a pair of this similarity shares at least one bucket."""
        return float(1 - (1 - similarity ** self.rows) ** self.bands)


def choose_layout(threshold: float, num_perm: int = NUM_PERM,
                  recall: float = TARGET_RECALL) -> Layout:
    """The widest bands (fewest false candidates) still finding `recall` of the pairs at
    the threshold; pairs above it are found more often still."""
    best = Layout(bands=num_perm, rows=1)
    for rows in range(1, num_perm + 1):
        layout = Layout(bands=num_perm // rows, rows=rows)
        if layout.candidate_probability(threshold) >= recall:
            best = layout
    return best


def estimate(a: bytes, b: bytes) -> float:
    """The signature estimate of the similarity (reported, never used to decide)."""
    x, y = np.frombuffer(a, dtype="<u4"), np.frombuffer(b, dtype="<u4")
    return float(np.mean(x == y))


# ------------------------------------------------------------ clusters

Cell = tuple[str | None, str | None, str | None]  # persona, arc, topic keys


@dataclass(frozen=True, slots=True)
class Member:
    """A conversation that has an exact copy or a near-duplicate text."""

    conversation_id: uuid.UUID
    text_hash: bytes
    quality: float | None
    cell: Cell


@dataclass(frozen=True, slots=True)
class Cluster:
    cluster_id: uuid.UUID  # its smallest member: fixed while its members are
    members: tuple[uuid.UUID, ...]
    representative: uuid.UUID
    cells: int  # persona × arc × topic cells its members are in


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def representative(members: Sequence[Member]) -> uuid.UUID:
    """The highest quality score (missing: 3.0), ties to the smallest conversation id."""
    def key(m: Member) -> tuple[float, uuid.UUID]:
        score = DEFAULT_QUALITY if m.quality is None else float(m.quality)
        return (-score, m.conversation_id)

    return min(members, key=key).conversation_id


def make_clusters(members: Iterable[Member], near: Iterable[tuple[bytes, bytes]],
                  scope: Scope) -> list[Cluster]:
    """The connected components of the near-duplicate relation, largest first.

    `near` are the text pairs at or above the threshold; conversations with
    the same text are exact duplicates. Within cells, only conversations of
    the same cell are linked: a node is then a (text, cell), else a text.
    """
    found = UnionFindClusters(scope)
    for member in members:
        found.add(member)
    for a, b in near:
        found.link(a, b)
    return found.clusters()


class UnionFindClusters:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.sets = _UnionFind()
        self.members: list[Member] = []
        self.cells_of: dict[bytes, set[Cell]] = {}

    def _node(self, text: bytes, cell: Cell) -> tuple[bytes, Cell | None]:
        return (text, cell if self.scope is Scope.CELL else None)

    def add(self, member: Member) -> None:
        self.members.append(member)
        self.cells_of.setdefault(member.text_hash, set()).add(member.cell)
        self.sets.find(self._node(member.text_hash, member.cell))

    def link(self, a: bytes, b: bytes) -> None:
        if self.scope is Scope.CELL:
            shared = self.cells_of.get(a, set()) & self.cells_of.get(b, set())
            for cell in shared:
                self.sets.union((a, cell), (b, cell))
        elif a in self.cells_of and b in self.cells_of:
            self.sets.union((a, None), (b, None))

    def clusters(self) -> list[Cluster]:
        groups: dict[Any, list[Member]] = {}
        for m in self.members:
            groups.setdefault(self.sets.find(self._node(m.text_hash, m.cell)), []).append(m)
        out = []
        for group in groups.values():
            if len(group) < 2:
                continue
            ids = sorted(m.conversation_id for m in group)
            out.append(Cluster(cluster_id=ids[0], members=tuple(ids),
                               representative=representative(group),
                               cells=len({m.cell for m in group})))
        return sorted(out, key=lambda c: (-len(c.members), c.cluster_id))
