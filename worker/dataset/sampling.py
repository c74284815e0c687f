"""Stratified sampling and the validation split, by conversation (pure).

A conversation's fate depends only on the seed and its id: each one gets two
keyed hashes (blake2b keyed with the seed), one that orders it within its
stratum for sampling and an independent one that sends it to the validation
side. So:

- the same seed on the same data picks the same conversations;
- adding conversations never reshuffles the ones already there: within a
  stratum the earlier conversations keep their relative order, and a new one
  only enters a full stratum by ranking ahead of (and displacing) the last
  pick;
- the split is a threshold on the second hash (validation when it is below
  F), so a conversation never changes sides when others are added: a
  validation conversation of yesterday's export is not trained on today.
  The only exceptions are the two guarantees below, which look at the
  stratum: a stratum of two or more gets at least one validation and at
  least one training conversation.
- with near-duplicate clusters (`reenrich dedup`) the split hash is that of
  the conversation's cluster, so a cluster is on one side; a conversation
  that joins a cluster takes the cluster's side.

Nothing here knows about the database or the export formats.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from worker.errors import ReenrichError

# `--stratify-by` names and the scaffolding key each one reads.
STRATUM_FIELDS = ("persona", "arc", "topic")
SAMPLE_PURPOSE = b"reenrich-sample"
SPLIT_PURPOSE = b"reenrich-split"
HASH_SPACE = 1 << 64

StratumKey = tuple[str | None, ...]


class SamplingError(ReenrichError):
    """The sampling options do not fit together; the message says which to change."""


def parse_stratify_by(value: str) -> tuple[str, ...]:
    """`persona`, `arc`, `topic` or a comma list of them (a joint stratum)."""
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [n for n in names if n not in STRATUM_FIELDS]
    if not names or unknown:
        raise SamplingError(f"--stratify-by takes persona, arc, topic or a comma list of them, "
                            f"got {value!r}")
    if len(set(names)) != len(names):
        raise SamplingError(f"--stratify-by names a field twice: {value!r}")
    return names


def keyed_hash(seed: int, conversation_id: uuid.UUID, purpose: bytes) -> int:
    """A 64-bit number fixed by (seed, id, purpose): blake2b keyed with the seed."""
    key = str(seed).encode()
    if len(key) > 64:  # blake2b keys are at most 64 bytes
        key = hashlib.blake2b(key).digest()
    digest = hashlib.blake2b(conversation_id.bytes, digest_size=8, key=key, person=purpose)
    return int.from_bytes(digest.digest(), "big")


def stratum_label(fields: Sequence[str], key: StratumKey) -> str:
    """How a stratum is named in reports and cards: `a|b|c`, or `all` when unstratified."""
    if not fields:
        return "all"
    return "|".join("" if part is None else part for part in key)


@dataclass(frozen=True, slots=True)
class SamplingSpec:
    stratify_by: tuple[str, ...] = ()
    per_stratum: int | None = None
    balance: bool = False
    seed: int = 0
    validation_fraction: float | None = None

    def check(self) -> None:
        if self.per_stratum is not None and self.balance:
            raise SamplingError("give --per-stratum N or --balance, not both")
        if self.per_stratum is not None and self.per_stratum < 1:
            raise SamplingError("--per-stratum must be at least 1")
        if self.balance and not self.stratify_by:
            raise SamplingError("--balance needs --stratify-by (the strata to balance)")
        fraction = self.validation_fraction
        if fraction is not None and not 0 < fraction < 1:
            raise SamplingError(f"--split-validation must be between 0 and 1 (exclusive), "
                                f"got {fraction}")

    @property
    def active(self) -> bool:
        """Whether a plan is needed at all (else every candidate is kept, unsplit)."""
        return bool(self.stratify_by or self.per_stratum is not None or self.balance
                    or self.validation_fraction is not None)


@dataclass(slots=True)
class StratumPlan:
    key: StratumKey
    available: int = 0
    picked: int = 0
    shortfall: int = 0
    validation: int = 0


@dataclass
class SamplePlan:
    """Which conversations go where. `side[id]` is "train" or "validation"."""

    side: dict[uuid.UUID, str] = field(default_factory=dict)
    stratum_of: dict[uuid.UUID, StratumKey] = field(default_factory=dict)
    strata: dict[StratumKey, StratumPlan] = field(default_factory=dict)
    stratum_key_null: int = 0  # candidates left out: a stratify-by key is null
    not_sampled: int = 0  # candidates left out by --per-stratum / --balance
    target: int | None = None  # conversations per stratum asked for


def stratum_key(keys: Mapping[str, str | None], fields: Sequence[str]) -> StratumKey:
    return tuple(keys.get(name) for name in fields)


def make_plan(candidates: Iterable[tuple[uuid.UUID, Mapping[str, str | None]]],
              spec: SamplingSpec,
              groups: Mapping[uuid.UUID, uuid.UUID] | None = None) -> SamplePlan:
    """Sample and split `(conversation_id, {persona, arc, topic})` candidates.

    `groups` maps a conversation to its near-duplicate cluster: the members of
    a cluster fall on one side of the split (see `_split_by_cluster`).
    """
    spec.check()
    groups = groups or {}
    plan = SamplePlan()
    members: dict[StratumKey, list[tuple[int, uuid.UUID]]] = {}
    for conversation_id, keys in candidates:
        key = stratum_key(keys, spec.stratify_by)
        if any(part is None for part in key):
            plan.stratum_key_null += 1
            continue
        rank = keyed_hash(spec.seed, conversation_id, SAMPLE_PURPOSE)
        members.setdefault(key, []).append((rank, conversation_id))

    if spec.balance:
        plan.target = min((len(m) for m in members.values()), default=0)
    else:
        plan.target = spec.per_stratum

    for key in sorted(members, key=lambda k: tuple("" if p is None else p for p in k)):
        ranked = sorted(members[key])
        stratum = StratumPlan(key=key, available=len(ranked))
        chosen = ranked if plan.target is None else ranked[:plan.target]
        stratum.picked = len(chosen)
        if plan.target is not None:
            stratum.shortfall = max(0, plan.target - len(ranked))
        plan.not_sampled += len(ranked) - len(chosen)
        validation = _validation_ids([cid for _, cid in chosen], spec, groups)
        stratum.validation = len(validation)
        for _, cid in chosen:
            plan.side[cid] = "validation" if cid in validation else "train"
            plan.stratum_of[cid] = key
        plan.strata[key] = stratum
    if groups and spec.validation_fraction is not None:
        _split_by_cluster(plan, spec, groups)
    return plan


def _validation_ids(chosen: list[uuid.UUID], spec: SamplingSpec,
                    groups: Mapping[uuid.UUID, uuid.UUID]) -> set[uuid.UUID]:
    """The validation side of one stratum's picks: a threshold on the split hash.

    The hash is that of the conversation's cluster (its own id when in none),
    so a cluster's members agree; the two guarantees move whole clusters.
    """
    fraction = spec.validation_fraction
    if fraction is None or len(chosen) < 2:
        return set()  # a stratum of one conversation trains
    units: dict[uuid.UUID, list[uuid.UUID]] = {}
    for cid in chosen:
        units.setdefault(groups.get(cid, cid), []).append(cid)
    ranked = sorted((keyed_hash(spec.seed, unit, SPLIT_PURPOSE), unit) for unit in units)
    threshold = fraction * HASH_SPACE
    validation = [unit for value, unit in ranked if value < threshold]
    if not validation and len(ranked) > 1:
        validation = [ranked[0][1]]  # at least one per stratum of two or more
    if len(validation) == len(ranked):
        validation = validation[:-1]  # and at least one left to train on
    return {cid for unit in validation for cid in units[unit]}


def _split_by_cluster(plan: SamplePlan, spec: SamplingSpec,
                      groups: Mapping[uuid.UUID, uuid.UUID]) -> None:
    """A cluster spread over strata where a guarantee moved it in one: the cluster's own
    hash decides for all of it (near-copies on both sides would measure memory)."""
    sides: dict[uuid.UUID, set[str]] = {}
    for cid, side in plan.side.items():
        if cid in groups:
            sides.setdefault(groups[cid], set()).add(side)
    mixed = {cluster for cluster, found in sides.items() if len(found) > 1}
    if not mixed:
        return
    threshold = (spec.validation_fraction or 0) * HASH_SPACE
    for cid in list(plan.side):
        cluster = groups.get(cid)
        if cluster in mixed:
            side = ("validation" if keyed_hash(spec.seed, cluster, SPLIT_PURPOSE) < threshold
                    else "train")
            if side != plan.side[cid]:
                stratum = plan.strata[plan.stratum_of[cid]]
                stratum.validation += 1 if side == "validation" else -1
                plan.side[cid] = side
