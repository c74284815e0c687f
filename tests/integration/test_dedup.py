"""`reenrich dedup` on real PostgreSQL with planted copies whose exact Jaccard the test
computes from the definition (spec dedup.md), independently of worker.dataset.dedup."""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
import unicodedata
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from tests.conftest import run_cli
from tests.dataset_helpers import backfill, read_jsonl
from tests.helpers import import_records
from worker import synthetic
from worker.config import EnrichmentConfig
from worker.dataset.dedup import Scope, choose_layout
from worker.dataset.export import ExportOptions, run_export
from worker.dataset.sampling import SamplingSpec
from worker.db.dataset import DatasetFilters
from worker.jobs.dedup import run_dedup

# ------------------------------------------------------------ the definition, again


def shingle_set(turns: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    text = unicodedata.normalize("NFKC", "\n".join(t["content"] for t in turns)).lower()
    words = re.findall(r"\w+", text)
    if len(words) < 5:
        return {tuple(words)}
    return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}


def exact_jaccard(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def truth(records: list[dict[str, Any]], threshold: float = 0.7) -> set[frozenset[str]]:
    """The clusters by brute force: every pair's exact Jaccard, connected components."""
    ids = [r["conversation_id"] for r in records]
    sets = {r["conversation_id"]: shingle_set(r["parsed_json"]["turns"]) for r in records}
    parent = {cid: cid for cid in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in itertools.combinations(ids, 2):
        sa, sb = sets[a], sets[b]
        if len(sa & sb) / len(sa | sb) >= threshold:
            parent[find(a)] = find(b)
    groups: dict[str, set[str]] = {}
    for cid in ids:
        groups.setdefault(find(cid), set()).add(cid)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


# ------------------------------------------------------------ planting copies


def edit(turns: list[dict[str, Any]], rng: random.Random, share: float) -> list[dict[str, Any]]:
    """Replace about `share` of the words with new ones (a rewrite of that strength)."""
    out = copy.deepcopy(turns)
    for turn in out:
        words = turn["content"].split(" ")
        for i in range(len(words)):
            if rng.random() < share:
                words[i] = f"w{rng.randrange(10**9)}"
        turn["content"] = " ".join(words)
    return out


def clone(record: dict[str, Any], turns: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(record)
    out["conversation_id"] = str(uuid.uuid4())
    out["parsed_json"]["turns"] = turns
    out.update(changes)
    return out


class Planted:
    """Synthetic conversations (unrelated: random words) plus planted copies."""

    def __init__(self, count: int = 30, seed: int = 23) -> None:
        rng = random.Random(seed)
        self.base = list(synthetic.conversation_records(count, seed=seed))
        for r in self.base:  # one cell for every base row: cell scope must not hide a copy
            r.update(persona_key="anxious_planner", emotional_arc_key="fear_to_confidence",
                     training_topic_key="emergency_fund", template_name=synthetic.TEMPLATES[0][0])
        turns = [r["parsed_json"]["turns"] for r in self.base]
        self.exact = clone(self.base[0], copy.deepcopy(turns[0]), quality_score=4.9)
        self.near = clone(self.base[1], edit(turns[1], rng, 0.02))
        middle = edit(turns[2], rng, 0.03)
        self.chain = [clone(self.base[2], middle), clone(self.base[2], edit(middle, rng, 0.03))]
        self.rewrite = clone(self.base[3], edit(turns[3], rng, 0.35))
        self.between = clone(self.base[4], edit(turns[4], rng, 0.05))
        self.tie = clone(self.base[5], copy.deepcopy(turns[5]),
                         quality_score=self.base[5]["quality_score"])
        self.planted = [self.exact, self.near, *self.chain, self.rewrite, self.between, self.tie]

    @property
    def records(self) -> list[dict[str, Any]]:
        return [*self.base, *self.planted]


@pytest.fixture
def planted(engine: Engine, tmp_path: Path) -> Planted:
    data = Planted()
    summary = import_records(engine, tmp_path, [*synthetic.scaffolding_records(), *data.records])
    assert summary.failed == 0, summary.errors
    return data


def stored_clusters(raw: psycopg.Connection[Any]) -> set[frozenset[str]]:
    rows = raw.execute("SELECT cluster_id, array_agg(conversation_id::text) FROM dedup_members "
                       "GROUP BY cluster_id").fetchall()
    return {frozenset(members) for _, members in rows}


def representatives(raw: psycopg.Connection[Any]) -> dict[frozenset[str], str]:
    rows = raw.execute("""
        SELECT array_agg(conversation_id::text),
               (array_agg(conversation_id::text) FILTER (WHERE is_representative))[1]
        FROM dedup_members GROUP BY cluster_id""").fetchall()
    return {frozenset(members): rep for members, rep in rows}


# ------------------------------------------------------------ the clusters


def test_planted_copies_are_the_exact_ground_truth(planted: Planted, db_url: str,
                                                   raw: psycopg.Connection[Any]) -> None:
    base, turns = planted.base, [r["parsed_json"]["turns"] for r in planted.base]
    # The plants are what they claim to be, by the definition.
    assert exact_jaccard(turns[0], planted.exact["parsed_json"]["turns"]) == 1.0
    assert 0.7 <= exact_jaccard(turns[1], planted.near["parsed_json"]["turns"]) < 1.0
    first, second = (c["parsed_json"]["turns"] for c in planted.chain)
    assert exact_jaccard(turns[2], first) >= 0.7
    assert exact_jaccard(first, second) >= 0.7
    assert exact_jaccard(turns[2], second) < 0.7  # linked only through the middle copy
    assert exact_jaccard(turns[3], planted.rewrite["parsed_json"]["turns"]) < 0.5
    assert 0.5 <= exact_jaccard(turns[4], planted.between["parsed_json"]["turns"]) < 0.7

    done = run_cli(db_url, "dedup", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    expected = truth(planted.records)

    def ids(*records: dict[str, Any]) -> frozenset[str]:
        return frozenset(r["conversation_id"] for r in records)

    assert expected == {ids(base[0], planted.exact), ids(base[1], planted.near),
                        ids(base[2], *planted.chain), ids(base[5], planted.tie)}
    assert stored_clusters(raw) == expected
    assert summary["clusters"] == 4
    assert summary["conversations_in_clusters"] == 9
    assert summary["signatures_computed"] == len(planted.records)
    assert summary["signatures_reused"] == 0
    assert summary["threshold"] == 0.7 and summary["scope"] == "table"
    assert summary["duplicates"] == 5

    reps = representatives(raw)
    assert reps[ids(base[0], planted.exact)] == planted.exact["conversation_id"]  # 4.9 wins
    tied = sorted([base[5]["conversation_id"], planted.tie["conversation_id"]])
    assert reps[ids(base[5], planted.tie)] == tied[0]  # same score: smallest id
    chain = [base[2], *planted.chain]
    best = max(chain, key=lambda r: (r["quality_score"], [-ord(c) for c in r["conversation_id"]]))
    assert reps[ids(*chain)] == best["conversation_id"]


def test_show_lists_clusters_largest_first(planted: Planted, db_url: str) -> None:
    assert run_cli(db_url, "dedup").returncode == 0
    shown = run_cli(db_url, "dedup", "--show", "--json")
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [c["size"] for c in lines] == [3, 2, 2, 2]
    for cluster in lines:
        assert cluster["size"] == len(cluster["members"])
        assert cluster["representative"] in cluster["members"]
        assert cluster["cluster_id"] == min(cluster["members"])
    text_out = run_cli(db_url, "dedup", "--show")
    assert len(text_out.stdout.splitlines()) == 4


def test_threshold_is_checked_before_any_work(db_url: str) -> None:
    done = run_cli(db_url, "dedup", "--threshold", "1.5")
    assert done.returncode == 2
    assert "threshold" in done.stderr


def test_lower_threshold_merges_the_mid_similarity_copy(planted: Planted, engine: Engine,
                                                       raw: psycopg.Connection[Any]) -> None:
    run_dedup(engine)
    summary = run_dedup(engine, threshold=0.5)
    assert summary["signatures_computed"] == 0  # another banding: buckets rebuilt, no text
    assert summary["texts_rebucketed"] > 0
    assert stored_clusters(raw) == truth(planted.records, 0.5)
    between = frozenset({planted.base[4]["conversation_id"], planted.between["conversation_id"]})
    assert between in stored_clusters(raw)


# ------------------------------------------------------------ incremental


def test_incremental_run_reuses_signatures_and_recomputes_changed_text(
        planted: Planted, engine: Engine, raw: psycopg.Connection[Any]) -> None:
    first = run_dedup(engine)
    before = dict(raw.execute("SELECT conversation_id::text, computed_at "
                              "FROM dedup_signatures").fetchall())
    again = run_dedup(engine)
    assert again["signatures_computed"] == 0
    assert again["signatures_reused"] == first["signatures_computed"]
    assert again["candidate_pairs_verified"] == 0

    # Every row is updated (as a backfill does) but no turns change: nothing is signed.
    raw.execute("UPDATE conversations SET enrichment_error = NULL")
    touched = run_dedup(engine)
    assert touched["signatures_computed"] == 0
    assert raw.execute("SELECT count(*) FROM dedup_signatures s JOIN conversations c "
                       "USING (conversation_id) WHERE s.row_xmin::text <> c.xmin::text"
                       ).fetchone() == (0,)

    # An emotion label changes: the turns hash changes, the text does not.
    near_id = planted.near["conversation_id"]
    raw.execute("""UPDATE conversations SET parsed_json = jsonb_set(parsed_json,
                   '{turns,0,emotional_context,primary_emotion}', '"calm"')
                   WHERE conversation_id = %s""", (near_id,))
    label = run_dedup(engine)
    assert label["signatures_computed"] == 0

    # The near copy is rewritten heavily: its signature is recomputed, it leaves its cluster.
    rewritten = edit(planted.near["parsed_json"]["turns"], random.Random(5), 0.4)
    raw.execute("UPDATE conversations SET parsed_json = jsonb_set(parsed_json, '{turns}', %s) "
                "WHERE conversation_id = %s", (json.dumps(rewritten), near_id))
    changed = run_dedup(engine)
    assert changed["signatures_computed"] == 1
    assert changed["signatures_reused"] == len(planted.records) - 1
    after = dict(raw.execute("SELECT conversation_id::text, computed_at "
                             "FROM dedup_signatures").fetchall())
    assert {cid for cid in after if after[cid] != before[cid]} == {near_id}
    records = [r if r["conversation_id"] != near_id else
               {**r, "parsed_json": {**r["parsed_json"], "turns": rewritten}}
               for r in planted.records]
    assert stored_clusters(raw) == truth(records)
    assert changed["clusters"] == 3

    # A new exact copy arrives (a new generation): only it is signed, and it joins.
    newcomer = clone(planted.base[1], copy.deepcopy(planted.base[1]["parsed_json"]["turns"]))
    raw.execute("INSERT INTO conversations (conversation_id, parsed_json, quality_score) "
                "VALUES (%s, %s, 2.0)", (newcomer["conversation_id"],
                                         json.dumps(newcomer["parsed_json"])))
    added = run_dedup(engine)
    assert added["signatures_computed"] == 1
    assert stored_clusters(raw) == truth([*records, newcomer])


def test_within_cell_keeps_copies_across_cells_apart_and_counts_them(
        planted: Planted, engine: Engine, raw: psycopg.Connection[Any]) -> None:
    raw.execute("""UPDATE conversations SET persona_id = (SELECT id FROM personas
                   WHERE persona_key = 'late_starter') WHERE conversation_id = %s""",
                (planted.exact["conversation_id"],))
    whole = run_dedup(engine)
    assert whole["cross_cell_clusters"] == 1
    cell = run_dedup(engine, scope=Scope.CELL)
    assert cell["scope"] == "cell"
    assert cell["clusters"] == whole["clusters"] - 1
    assert cell["cross_cell_clusters"] == 1  # still reported
    assert frozenset({planted.base[0]["conversation_id"], planted.exact["conversation_id"]}) \
        not in stored_clusters(raw)


def test_repeated_assistant_responses_are_counted(engine: Engine, tmp_path: Path) -> None:
    records = list(synthetic.conversation_records(6, seed=3))
    stock = "I HEAR you — and that's completely normal."
    for r in records[:3]:
        turns = r["parsed_json"]["turns"]
        turns[1]["content"] = stock if r is records[0] else stock.lower()
    import_records(engine, tmp_path, [*synthetic.scaffolding_records(), *records])
    summary = run_dedup(engine)
    repeated = summary["repeated_responses"]
    assert repeated["responses"] == 1
    assert repeated["conversations"] == 3
    assert repeated["top"][0]["conversations"] == 3
    assert repeated["top"][0]["preview"] == stock.lower()
    assert summary["clusters"] == 0  # one shared turn does not make a near-duplicate


def test_banding_finds_pairs_at_the_threshold() -> None:
    layout = choose_layout(0.7)
    assert layout.bands * layout.rows <= 128
    assert layout.candidate_probability(0.7) >= 0.95
    assert layout.candidate_probability(0.2) < 0.05


# ------------------------------------------------------------ export


def _export(engine: Engine, config: EnrichmentConfig, out: Path, **kwargs: Any
            ) -> dict[str, Any]:
    # Every planted conversation, quality tier rejected included (left out by default).
    kwargs.setdefault("filters", DatasetFilters(include_rejected_tier=True))
    return run_export(engine, ExportOptions(format="chat", output=out, **kwargs),
                      consultant_profile=config.consultant_profile).as_dict()


def test_export_dedup_keeps_representatives(planted: Planted, engine: Engine, tmp_path: Path,
                                            config: EnrichmentConfig,
                                            raw: psycopg.Connection[Any]) -> None:
    backfill(engine, config)
    run_dedup(engine)
    report = _export(engine, config, tmp_path / "dedup.jsonl", dedup=True)
    rows = read_jsonl(tmp_path / "dedup.jsonl")
    exported = {r["conversation_id"] for r in rows}
    duplicates = {cid for (cid,) in raw.execute(
        "SELECT conversation_id::text FROM dedup_members WHERE NOT is_representative")}
    assert len(duplicates) == 5
    assert exported == {r["conversation_id"] for r in planted.records} - duplicates
    assert report["removed"] == {"near_duplicate": 5}
    assert report["dedup"]["applied"] is True and report["dedup"]["clusters"] == 4
    full = _export(engine, config, tmp_path / "all.jsonl")
    assert full["conversations"] == len(planted.records)


def test_split_keeps_each_cluster_on_one_side(engine: Engine, tmp_path: Path,
                                              config: EnrichmentConfig,
                                              raw: psycopg.Connection[Any]) -> None:
    rng = random.Random(9)
    base = list(synthetic.conversation_records(40, seed=31))
    copies = [clone(r, edit(r["parsed_json"]["turns"], rng, 0.02)) for r in base[:20]
              for _ in range(2)]
    import_records(engine, tmp_path, [*synthetic.scaffolding_records(), *base, *copies])
    backfill(engine, config)
    run_dedup(engine)
    assert len(stored_clusters(raw)) == 20
    for dedup, stratify in ((False, ()), (False, ("persona",)), (True, ("persona",))):
        train, validation = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
        _export(engine, config, train, validation_output=validation, dedup=dedup,
                sampling=SamplingSpec(stratify_by=stratify, validation_fraction=0.3))
        sides = {r["conversation_id"]: "t" for r in read_jsonl(train)}
        sides.update({r["conversation_id"]: "v" for r in read_jsonl(validation)})
        assert "v" in sides.values() and "t" in sides.values()
        for cluster in stored_clusters(raw):
            assert len({sides[c] for c in cluster if c in sides}) <= 1, (dedup, stratify)


def test_stats_show_duplicate_rates(planted: Planted, db_url: str) -> None:
    assert run_cli(db_url, "dedup").returncode == 0
    done = run_cli(db_url, "stats", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["duplicates"]
    total = len(planted.records)
    assert found["duplicate_rates"]["overall"] == {
        "conversations": total, "in_clusters": 9, "duplicates": 5,
        "duplicate_rate": round(5 / total, 4)}
    persona = {r["persona"]: r for r in found["duplicate_rates"]["persona"]}
    assert persona["anxious_planner"]["duplicates"] == 5
    assert found["largest_clusters"][0]["size"] == 3
    text_out = run_cli(db_url, "stats")
    assert "duplicate rate" in text_out.stdout


def test_readme_worked_example() -> None:
    a = [{"content": "I have $2,000 extra each month and I keep flip-flopping."}]
    b = [{"content": "I have $2,000 extra each month and I keep changing my mind."}]
    assert exact_jaccard(a, b) == 6 / 11
    assert shingle_set([{"content": "I have $２,０００ EXTRA"}]) == \
        shingle_set([{"content": "i have $2,000 extra"}])
    assert len(shingle_set([{"content": "too short"}])) == 1


def test_stats_page_has_the_section(planted: Planted, db_url: str, tmp_path: Path) -> None:
    page = tmp_path / "stats.html"
    before = run_cli(db_url, "stats", "--html", str(page))
    assert before.returncode == 0, before.stderr
    assert "Not computed" in page.read_text(encoding="utf-8")
    assert run_cli(db_url, "dedup").returncode == 0
    assert run_cli(db_url, "stats", "--html", str(page)).returncode == 0
    assert "Duplicate rate by persona" in page.read_text(encoding="utf-8")


def test_show_refuses_run_flags_and_says_when_empty(db_url: str) -> None:
    done = run_cli(db_url, "dedup", "--show", "--threshold", "0.8")
    assert done.returncode == 2
    assert "--show" in done.stderr
    empty = run_cli(db_url, "dedup", "--show")
    assert empty.returncode == 0 and empty.stdout == ""
    assert "dedup.no_clusters" in empty.stderr


def test_worker_processes_sign_the_same(planted: Planted, engine: Engine,
                                        raw: psycopg.Connection[Any]) -> None:
    pooled = run_dedup(engine, workers=2)
    assert pooled["signatures_computed"] == len(planted.records)
    assert stored_clusters(raw) == truth(planted.records)
    signed = dict(raw.execute("SELECT conversation_id, signature FROM dedup_signatures"))
    raw.execute("DELETE FROM dedup_signatures")
    single = run_dedup(engine, workers=1)
    assert single["signatures_computed"] == len(planted.records)
    assert dict(raw.execute("SELECT conversation_id, signature FROM dedup_signatures")) == signed
