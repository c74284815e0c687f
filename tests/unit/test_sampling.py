"""Sampling and splits (pure): by conversation, keyed by seed and id only."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest

from worker.dataset.sampling import (
    SAMPLE_PURPOSE,
    SPLIT_PURPOSE,
    SamplingError,
    SamplingSpec,
    keyed_hash,
    make_plan,
    parse_stratify_by,
    stratum_label,
)

PERSONAS = ("a", "b", "c")
ARCS = ("x", "y")


def candidates(count: int, seed: int = 1, nulls: int = 0
               ) -> list[tuple[uuid.UUID, dict[str, str | None]]]:
    rng = random.Random(seed)
    out: list[tuple[uuid.UUID, dict[str, str | None]]] = []
    for i in range(count):
        persona: str | None = None if i < nulls else rng.choice(PERSONAS)
        out.append((uuid.UUID(int=rng.getrandbits(128), version=4),
                    {"persona": persona, "arc": rng.choice(ARCS), "topic": "t"}))
    return out


def picked(plan_side: dict[uuid.UUID, str]) -> set[uuid.UUID]:
    return set(plan_side)


def test_keyed_hash_depends_on_seed_id_and_purpose_only() -> None:
    cid = uuid.UUID("7a1e9c52-3b8f-4d2a-9e61-0c4b5d8f2a17")
    assert keyed_hash(3, cid, SAMPLE_PURPOSE) == keyed_hash(3, cid, SAMPLE_PURPOSE)
    assert keyed_hash(3, cid, SAMPLE_PURPOSE) != keyed_hash(4, cid, SAMPLE_PURPOSE)
    assert keyed_hash(3, cid, SAMPLE_PURPOSE) != keyed_hash(3, cid, SPLIT_PURPOSE)
    assert 0 <= keyed_hash(10**100, cid, SAMPLE_PURPOSE) < 1 << 64  # long seeds are fine


def test_parse_stratify_by() -> None:
    assert parse_stratify_by("persona") == ("persona",)
    assert parse_stratify_by("persona, arc,topic") == ("persona", "arc", "topic")
    for bad in ("", "persona,mood", "arc,arc"):
        with pytest.raises(SamplingError):
            parse_stratify_by(bad)
    assert stratum_label(("persona", "arc"), ("a", "x")) == "a|x"
    assert stratum_label((), ()) == "all"


def test_per_stratum_picks_n_per_stratum_and_reports_shortfall() -> None:
    pool = candidates(40, nulls=4)
    plan = make_plan(pool, SamplingSpec(stratify_by=("persona", "arc"), per_stratum=5, seed=7))
    sizes = Counter((keys["persona"], keys["arc"]) for _, keys in pool
                    if keys["persona"] is not None)
    assert plan.stratum_key_null == 4
    for key, size in sizes.items():
        stratum = plan.strata[key]
        assert (stratum.available, stratum.picked, stratum.shortfall) == \
            (size, min(size, 5), max(0, 5 - size))
    assert Counter(plan.stratum_of.values()) == {k: min(v, 5) for k, v in sizes.items()}
    assert plan.not_sampled == sum(max(0, v - 5) for v in sizes.values())
    # The picks are the lowest keyed hashes of each stratum.
    for key in sizes:
        members = sorted((keyed_hash(7, cid, SAMPLE_PURPOSE), cid) for cid, keys in pool
                         if (keys["persona"], keys["arc"]) == key)
        assert {cid for _, cid in members[:5]} == \
            {cid for cid, k in plan.stratum_of.items() if k == key}


def test_balance_takes_every_stratum_down_to_the_smallest() -> None:
    pool = candidates(50)
    plan = make_plan(pool, SamplingSpec(stratify_by=("persona",), balance=True))
    smallest = min(Counter(keys["persona"] for _, keys in pool).values())
    assert plan.target == smallest
    assert set(Counter(plan.stratum_of.values()).values()) == {smallest}
    with pytest.raises(SamplingError, match="--stratify-by"):
        make_plan(pool, SamplingSpec(balance=True))
    with pytest.raises(SamplingError, match="not both"):
        make_plan(pool, SamplingSpec(stratify_by=("persona",), balance=True, per_stratum=2))


def test_same_seed_same_sample_other_seed_other_sample_order_irrelevant() -> None:
    pool = candidates(60)
    spec = SamplingSpec(stratify_by=("persona",), per_stratum=6, seed=1)
    first = make_plan(pool, spec)
    again = make_plan(list(reversed(pool)), spec)  # input order does not matter
    assert first.side == again.side
    other = make_plan(pool, SamplingSpec(stratify_by=("persona",), per_stratum=6, seed=2))
    assert picked(other.side) != picked(first.side)


def test_adding_conversations_keeps_earlier_picks_unless_outranked() -> None:
    """Old conversations never enter; a pick leaves only for a new one ranking ahead of it."""
    old = candidates(45, seed=3)
    new = candidates(30, seed=4)
    spec = SamplingSpec(stratify_by=("persona",), per_stratum=5, seed=9)
    before = make_plan(old, spec)
    after = make_plan(old + new, spec)
    old_ids = {cid for cid, _ in old}
    kept_old = {cid for cid in after.side if cid in old_ids}
    assert kept_old <= set(before.side)  # no old conversation newly enters
    for cid in set(before.side) - kept_old:  # each one dropped was outranked by a new one
        key = before.stratum_of[cid]
        rank = keyed_hash(9, cid, SAMPLE_PURPOSE)
        assert any(after.stratum_of.get(n) == key and keyed_hash(9, n, SAMPLE_PURPOSE) < rank
                   for n, _ in new)
    # New conversations that rank behind every pick change nothing at all.
    worst = {key: max(keyed_hash(9, cid, SAMPLE_PURPOSE) for cid, k in before.stratum_of.items()
                      if k == key) for key in before.strata}
    behind = [(cid, keys) for cid, keys in new
              if keyed_hash(9, cid, SAMPLE_PURPOSE) > worst[(keys["persona"],)]]
    assert behind
    assert make_plan(old + behind, spec).side == before.side


def test_validation_split_is_by_conversation_and_stable_as_data_grows() -> None:
    pool = candidates(80, seed=5)
    spec = SamplingSpec(stratify_by=("persona",), validation_fraction=0.2, seed=3)
    plan = make_plan(pool, spec)
    assert set(plan.side) == {cid for cid, _ in pool}
    for key, stratum in plan.strata.items():
        members = [cid for cid, k in plan.stratum_of.items() if k == key]
        validation = [cid for cid in members if plan.side[cid] == "validation"]
        assert 1 <= len(validation) < len(members)
        assert stratum.validation == len(validation)
        # The threshold rule: below F of the split hash (the guarantees aside).
        below = [cid for cid in members if keyed_hash(3, cid, SPLIT_PURPOSE) < 0.2 * 2**64]
        if 0 < len(below) < len(members):
            assert set(validation) == set(below)
    share = sum(1 for side in plan.side.values() if side == "validation") / len(plan.side)
    assert 0.1 < share < 0.35
    grown = make_plan(pool + candidates(40, seed=6), spec)
    moved = [cid for cid in plan.side if grown.side[cid] != plan.side[cid]]
    assert moved == []


def test_small_strata_and_bad_fractions() -> None:
    lone = [(uuid.uuid4(), {"persona": "a", "arc": "x", "topic": "t"})]
    plan = make_plan(lone, SamplingSpec(validation_fraction=0.9))
    assert list(plan.side.values()) == ["train"]  # one conversation trains
    two = [*lone, (uuid.uuid4(), {"persona": "a", "arc": "x", "topic": "t"})]
    for fraction in (0.01, 0.99):  # at least one on each side of a stratum of two
        assert sorted(make_plan(two, SamplingSpec(validation_fraction=fraction)).side.values()) \
            == ["train", "validation"]
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(SamplingError):
            make_plan(two, SamplingSpec(validation_fraction=fraction))
