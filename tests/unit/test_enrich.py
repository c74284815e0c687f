"""The enrichment contract, rule by rule (pure: no database)."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from tests.conftest import FIXTURES
from worker.config import EnrichmentConfig
from worker.enrichment.contract import KEY_ORDER, in_contract_order
from worker.enrichment.enrich import (
    InvalidDocument,
    client_background,
    enrich,
    quality_tier,
    valence,
)
from worker.enrichment.models import (
    ConversationInputs,
    DatasetMetadata,
    EmotionalArc,
    EnrichedDocument,
    PairReview,
    Persona,
    PromptTemplate,
    QualityTier,
    TrainingTopic,
    content_sha256,
)

CID = uuid.UUID("3d4a31a7-9220-487a-9a27-50615968c3da")
CREATED = datetime(2025, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
PERSONA = Persona(id=uuid.UUID("aa514346-cd61-42ac-adad-498934975402"), key="pragmatic_optimist",
                  name="David Chen", archetype="The Pragmatic Optimist",
                  demographics={"age": 35, "gender": "male", "location": "Urban/Suburban",
                                "family_status": "married or partnership"},
                  financial_background="Modest but stable income.")
ARC = EmotionalArc(id=uuid.UUID("53583301-5758-4781-99df-57b9c5fc1949"),
                   key="confusion_to_clarity", name="Confusion → Clarity",
                   starting_emotion="confusion", ending_emotion="clarity",
                   response_techniques=("normalize_confusion", "break_down_complexity"))
TOPIC = TrainingTopic(id=uuid.UUID("a04a104f-96a6-4d0c-b0ea-5f44f4a2203d"),
                      key="mortgage_payoff_strategy", name="Accelerated Mortgage Payoff",
                      complexity_level="advanced")
TEMPLATE = PromptTemplate(name="Template - Confusion → Clarity - Education Focus",
                          category="educational")


def legacy_parsed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (FIXTURES / "reference" / "parsed-legacy-no-input-parameters.json").read_text())
    return data


def inputs(parsed: Any = None, **changes: Any) -> ConversationInputs:
    base: dict[str, Any] = dict(
        conversation_id=CID, created_at=CREATED,
        parsed=legacy_parsed() if parsed is None else parsed, quality_score=4.0,
        has_scaffolding_reference=True, persona=PERSONA, arc=ARC, topic=TOPIC,
        template=TEMPLATE, system_prompt=None)
    base.update(changes)
    return ConversationInputs(**base)


def doc(config: EnrichmentConfig, parsed: Any = None, **changes: Any) -> dict[str, Any]:
    return enrich(inputs(parsed, **changes), config).document


def pair(config: EnrichmentConfig, index: int = 0, **changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = doc(config, **changes)["training_pairs"][index]
    return result


# ------------------------------------------------------------- top level


def test_top_level_keys_in_contract_order(config: EnrichmentConfig) -> None:
    d = doc(config)
    assert list(d) == ["input_parameters", "dataset_metadata", "consultant_profile",
                       "training_pairs"]
    EnrichedDocument.model_validate(d)  # the output model accepts it, no extra keys


def test_input_parameters_rebuilt_from_joins(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    parsed["input_parameters"] = {"persona_key": "stale_copy", "persona_name": "Someone Else"}
    params = doc(config, parsed)["input_parameters"]
    assert params == {
        "persona_id": str(PERSONA.id), "persona_name": "David Chen",
        "persona_key": "pragmatic_optimist", "persona_archetype": "The Pragmatic Optimist",
        "emotional_arc_id": str(ARC.id), "emotional_arc_name": "Confusion → Clarity",
        "emotional_arc_key": "confusion_to_clarity", "training_topic_id": str(TOPIC.id),
        "training_topic_name": "Accelerated Mortgage Payoff",
        "training_topic_key": "mortgage_payoff_strategy",
    }
    assert list(params) == list(KEY_ORDER["input_parameters"])


def test_part_without_joined_row_is_null(config: EnrichmentConfig) -> None:
    params = doc(config, arc=None)["input_parameters"]
    assert params["emotional_arc_id"] is None and params["emotional_arc_key"] is None
    assert params["persona_key"] == "pragmatic_optimist"
    meta = pair(config, arc=None)["conversation_metadata"]
    assert meta["emotional_arc"] is None and meta["emotional_arc_key"] is None


def test_fallback_to_parsed_input_parameters_when_row_has_no_reference(
        config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    parsed["input_parameters"] = {"persona_key": "anxious_planner", "persona_name": "Marcus",
                                  "emotional_arc_name": "Fear → Confidence",
                                  "emotional_arc_key": "fear_to_confidence",
                                  "training_topic_key": "roth_conversion", "extra": "dropped",
                                  "training_topic_name": 42}
    d = doc(config, parsed, has_scaffolding_reference=False, persona=None, arc=None, topic=None)
    assert d["input_parameters"] == {
        "persona_id": None, "persona_name": "Marcus", "persona_key": "anxious_planner",
        "persona_archetype": None, "emotional_arc_id": None,
        "emotional_arc_name": "Fear → Confidence", "emotional_arc_key": "fear_to_confidence",
        "training_topic_id": None, "training_topic_name": None,
        "training_topic_key": "roth_conversion"}
    p = d["training_pairs"][0]
    meta = p["conversation_metadata"]
    assert meta["persona_archetype"] == "anxious_planner"
    assert meta["emotional_arc"] == "Fear → Confidence"
    assert meta["training_topic_key"] == "roth_conversion"
    assert meta["client_persona"] == parsed["conversation_metadata"]["client_persona"]
    assert meta["client_background"] == "Client profile: " + meta["client_persona"]
    assert p["training_metadata"]["key_learning_objective"] == "roth_conversion"
    assert p["training_metadata"]["emotional_progression_target"] == ""


def test_no_scaffolding_at_all_degrades_to_nulls(config: EnrichmentConfig) -> None:
    d = doc(config, has_scaffolding_reference=False, persona=None, arc=None, topic=None,
            template=None)
    assert d["input_parameters"] is None
    for p in d["training_pairs"]:
        meta = p["conversation_metadata"]
        for key in ("persona_archetype", "emotional_arc", "emotional_arc_key",
                    "training_topic", "training_topic_key"):
            assert key in meta and meta[key] is None
        tm = p["training_metadata"]
        assert tm["key_learning_objective"] == "Provide emotionally intelligent financial guidance"
        assert tm["demonstrates_skills"] == ["empathy", "active_listening"]
        assert tm["difficulty_level"].startswith("intermediate_conversation_turn_")
        assert p["id"].startswith("fp_conversation_turn")
    assert d["dataset_metadata"]["notes"] == "Generated via template: unknown"


def test_dataset_metadata(config: EnrichmentConfig) -> None:
    meta = doc(config)["dataset_metadata"]
    assert list(meta) == list(KEY_ORDER["dataset_metadata"])
    assert meta["dataset_name"] == f"fp_conversation_{CID}"
    assert meta["version"] == "1.0.0"
    assert meta["created_date"] == "2025-12-01"  # UTC date of 23:30 at UTC-5
    assert meta["vertical"] == "financial_planning_consultant"
    assert meta["consultant_persona"] == "Elena Morales, CFP - Pathways Financial Planning"
    assert meta["target_use"] == "LoRA fine-tuning for emotionally intelligent chatbot"
    assert meta["conversation_source"] == "synthetic_platform_generated"
    assert meta["total_conversations"] == 1
    assert meta["total_turns"] == 8
    assert meta["notes"] == f"Generated via template: {TEMPLATE.name}"


@pytest.mark.parametrize(("score", "tier"), [(5.0, "seed_dataset"), (4.5, "seed_dataset"),
                                             (4.49, "production"), (3.5, "production"),
                                             (3.49, "experimental"), (2.5, "experimental"),
                                             (2.49, "rejected"), (1.0, "rejected")])
def test_quality_tier(score: float, tier: str) -> None:
    assert quality_tier(score) == tier
    assert type(quality_tier(score)) is str  # the document keeps a plain string


def test_quality_tier_names_are_the_contracts() -> None:
    # The document model takes its tier names from the one enum.
    assert DatasetMetadata.model_fields["quality_tier"].annotation is QualityTier
    assert [t.value for t in QualityTier] == ["seed_dataset", "production", "experimental",
                                              "rejected"]
    assert [QualityTier.rank(t) for t in ("rejected", "seed_dataset", None, "x")] == [3, 0, 4, 4]


@pytest.mark.parametrize(("score", "rounded", "criterion"), [
    (2.5, 3, 2.5), (3.25, 3, 3.3), (3.5, 4, 3.5), (4.45, 4, 4.5), (1.04, 1, 1.0), (None, 3, 3.0)])
def test_quality_rounding_half_up(config: EnrichmentConfig, score: float | None, rounded: int,
                                  criterion: float) -> None:
    tm = pair(config, quality_score=score)["training_metadata"]
    assert tm["quality_score"] == rounded and isinstance(tm["quality_score"], int)
    assert tm["quality_criteria"] == {"empathy_score": criterion, "clarity_score": criterion,
                                      "appropriateness_score": criterion,
                                      "brand_voice_alignment": criterion}
    assert b'"empathy_score":%s' % str(criterion).encode() in orjson.dumps(tm)


def test_consultant_profile_is_the_shipped_default(config: EnrichmentConfig) -> None:
    assert doc(config)["consultant_profile"] == config.consultant_profile
    assert config.consultant_profile["name"] == "Elena Morales, CFP"


# ------------------------------------------------------------------ pairs


def test_one_pair_per_turn_in_order_with_keys_in_order(config: EnrichmentConfig) -> None:
    pairs = doc(config)["training_pairs"]
    assert [p["turn_number"] for p in pairs] == list(range(1, 9))
    for p in pairs:
        assert list(p) == list(KEY_ORDER["training_pairs"])
        assert list(p["conversation_metadata"]) == list(
            KEY_ORDER["training_pairs"]["conversation_metadata"])
        assert list(p["training_metadata"]) == list(
            KEY_ORDER["training_pairs"]["training_metadata"])


def test_pair_ids_are_unique_across_conversations(config: EnrichmentConfig) -> None:
    p = pair(config, 2)
    assert p["id"] == "educational_turn3_3d4a31a7-9220-487a-9a27-50615968c3da"
    assert p["conversation_id"] == str(CID)
    other = pair(config, 2, conversation_id=uuid.UUID("9e2b0c1d-0000-4000-8000-000000000000"))
    assert other["id"] == "educational_turn3_9e2b0c1d-0000-4000-8000-000000000000"


def uuid7(unix_ms: int, rand: int) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit millisecond timestamp, version 7, variant, random bits."""
    value = (unix_ms << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 \
        | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


def test_uuid7_ids_of_one_minute_give_unique_pair_ids(config: EnrichmentConfig) -> None:
    """Version 1's 8 hex characters are the timestamp's top bits for UUIDv7: they collided."""
    start = 1_764_500_000_000 // 65536 * 65536  # 2025-11-30; 50 s of generations
    ids = [uuid7(start + i * 997, i * 0x9E3779B97F4A7C15 % (1 << 74)) for i in range(50)]
    assert {i.version for i in ids} == {7}
    assert len({i.hex[:8] for i in ids}) == 1  # what version 1 built its pair ids from
    pair_ids = [p["id"] for cid in ids for p in doc(config, conversation_id=cid)["training_pairs"]]
    assert len(pair_ids) == 50 * 8
    assert len(set(pair_ids)) == len(pair_ids)


def test_pair_conversation_metadata(config: EnrichmentConfig) -> None:
    meta = pair(config)["conversation_metadata"]
    parsed_meta = legacy_parsed()["conversation_metadata"]
    assert meta == {
        "client_persona": "David Chen - The Pragmatic Optimist",
        "persona_archetype": "pragmatic_optimist",
        "client_background": "Age 35, male, Urban/Suburban, married or partnership; "
                             "Modest but stable income.",
        "emotional_arc": "Confusion → Clarity",
        "emotional_arc_key": "confusion_to_clarity",
        "training_topic": "Accelerated Mortgage Payoff",
        "training_topic_key": "mortgage_payoff_strategy",
        "session_context": parsed_meta["session_context"],
        "conversation_phase": parsed_meta["conversation_phase"],
        "expected_outcome": parsed_meta["expected_outcome"],
    }


@pytest.mark.parametrize(("demographics", "background", "expected"), [
    ({"age": 40, "location": "Austin"}, None, "Age 40, Austin"),
    ({"gender": "female", "family_status": "single"}, "Debt", "female, single; Debt"),
    ("Late 30s, renting in Berlin", "Saver", "Late 30s, renting in Berlin; Saver"),
    ({}, "Only money", "Only money"),
    ({"age": None, "gender": " "}, None, "Client profile: X - Y"),
])
def test_client_background(demographics: Any, background: str | None, expected: str) -> None:
    persona = Persona(id="p", key="k", name="X", archetype="Y", demographics=demographics,
                      financial_background=background)
    assert client_background(persona, "X - Y") == expected


def test_missing_expected_outcome_gets_default_and_warning(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    del parsed["conversation_metadata"]["expected_outcome"]
    result = enrich(inputs(parsed), config)
    meta = result.document["training_pairs"][0]["conversation_metadata"]
    assert meta["expected_outcome"] == "Provide emotionally intelligent support"
    assert [w.code for w in result.report.warnings] == ["missing_expected_outcome"]


def test_system_prompt_from_log_else_stripped_default(config: EnrichmentConfig) -> None:
    assert pair(config)["system_prompt"] == config.default_system_prompt
    assert config.default_system_prompt == config.default_system_prompt.strip()
    assert config.default_system_prompt.startswith("You are an emotionally intelligent")
    logged = "  Custom prompt as stored \n"
    assert pair(config, system_prompt=logged)["system_prompt"] == logged


def test_history_current_input_and_target(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    del parsed["turns"][0]["emotional_context"]["secondary_emotion"]
    pairs = doc(config, parsed)["training_pairs"]
    turns = parsed["turns"]
    assert pairs[0]["conversation_history"] == []
    assert pairs[0]["current_user_input"] == turns[0]["content"]
    assert pairs[0]["target_response"] is None
    assert pairs[1]["current_user_input"] == turns[0]["content"]
    assert pairs[1]["target_response"] == turns[1]["content"]
    assert pairs[3]["current_user_input"] == turns[2]["content"]
    history = pairs[2]["conversation_history"]
    assert history[0] == {"turn": 1, "role": "user", "content": turns[0]["content"],
                          "emotional_state": {"primary": "confusion", "intensity": 0.75}}
    assert history[1]["emotional_state"] == {"primary": "reassurance", "secondary": "curiosity",
                                             "intensity": 0.65}
    assert [len(p["conversation_history"]) for p in pairs] == list(range(8))


def test_current_user_input_empty_without_earlier_user_turn(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    parsed["turns"][0]["role"] = "assistant"
    p = doc(config, parsed)["training_pairs"][0]
    assert p["current_user_input"] == ""
    assert p["target_response"] == parsed["turns"][0]["content"]


def test_emotional_context(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    parsed["turns"][1]["emotional_context"]["secondary_emotion"] = "   "
    pairs = doc(config, parsed)["training_pairs"]
    assert pairs[0]["emotional_context"] == {"detected_emotions": {
        "primary": "confusion", "primary_confidence": 0.8, "secondary": "anxiety",
        "secondary_confidence": 0.7, "intensity": 0.75, "valence": "mixed"}}
    # A blank secondary emotion counts as absent: neither key appears.
    assert pairs[1]["emotional_context"]["detected_emotions"] == {
        "primary": "reassurance", "primary_confidence": 0.8, "intensity": 0.65,
        "valence": "mixed"}
    assert pairs[2]["emotional_context"]["detected_emotions"]["valence"] == "positive"  # hope


@pytest.mark.parametrize(("emotion", "expected"), [
    ("Hopeful", "positive"), ("relief", "positive"), ("cautious optimism", "positive"),
    ("Calm", "positive"), ("SHAME", "negative"), ("overwhelmed", "negative"),
    ("worry", "negative"), ("confusion", "mixed"), ("hope and fear", "positive"),
])
def test_valence(emotion: str, expected: str) -> None:
    assert valence(emotion) == expected


def test_training_metadata(config: EnrichmentConfig) -> None:
    tm = pair(config, 4)["training_metadata"]
    assert tm == {
        "difficulty_level": "advanced_conversation_turn_5",
        "key_learning_objective": "mortgage_payoff_strategy",
        "demonstrates_skills": ["normalize_confusion", "break_down_complexity"],
        "conversation_turn": 5,
        "emotional_progression_target": "confusion(0.8) → clarity(0.8)",
        "quality_score": 4,
        "quality_criteria": {"empathy_score": 4.0, "clarity_score": 4.0,
                             "appropriateness_score": 4.0, "brand_voice_alignment": 4.0},
        "human_reviewed": False, "reviewer_notes": None, "use_as_seed_example": False,
        "generate_variations_count": 0, "review_status": None,
    }


def test_learning_objective_falls_back_to_topic_name_and_skills_to_default(
        config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    parsed["input_parameters"] = {"training_topic_name": "Roth ladders"}
    d = doc(config, parsed, has_scaffolding_reference=False, persona=None, arc=None, topic=None)
    assert d["training_pairs"][0]["training_metadata"]["key_learning_objective"] == "Roth ladders"
    empty_arc = EmotionalArc(id="a", key="k", name="n", starting_emotion="fear",
                             ending_emotion="calm", response_techniques=())
    tm = pair(config, arc=empty_arc)["training_metadata"]
    assert tm["demonstrates_skills"] == ["empathy", "active_listening"]
    assert tm["emotional_progression_target"] == "fear(0.8) → calm(0.8)"


def test_template_without_category_uses_fp_conversation_prefix(config: EnrichmentConfig) -> None:
    p = pair(config, template=PromptTemplate(name="T", category=None))
    assert p["id"] == f"fp_conversation_turn1_{CID}"


# ------------------------------------------------------ text and determinism


def test_truncation_artefacts_are_kept_verbatim(config: EnrichmentConfig) -> None:
    raw = json.loads((FIXTURES / "reference" / "parsed-raw-with-truncation-artifacts.json")
                     .read_text())
    p = doc(config, raw)["training_pairs"][1]
    assert p["target_response"] == raw["turns"][1]["content"]
    # As stored: a literal backslash-n pair and a dangling backslash where the text was cut.
    assert p["target_response"].endswith("the \\") and "\\n\\n" in p["target_response"]


def test_control_characters_removed_with_warning(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    parsed["turns"][0]["content"] = "Line one\x07 and\ttab\nnewline\r\x1b[0m done\x85 \x7f!"
    parsed["conversation_metadata"]["session_context"] = "Evening\x00 call"
    result = enrich(inputs(parsed), config)
    first = result.document["training_pairs"][0]
    assert first["current_user_input"] == "Line one and\ttab\nnewline\r[0m done !"
    assert first["conversation_metadata"]["session_context"] == "Evening call"
    later = result.document["training_pairs"][3]["conversation_history"][0]["content"]
    assert later == first["current_user_input"]
    codes = [w.code for w in result.report.warnings]
    assert codes == ["control_characters_removed"]
    assert parsed["turns"][0]["content"].startswith("Line one\x07")  # input untouched


def test_same_inputs_give_the_same_bytes(config: EnrichmentConfig) -> None:
    first = orjson.dumps(doc(config))
    second = orjson.dumps(doc(config))
    assert first == second
    assert orjson.dumps(in_contract_order(orjson.loads(first))) == first


def test_no_wall_clock_or_random_values(config: EnrichmentConfig) -> None:
    a = orjson.dumps(doc(config))
    b = orjson.dumps(doc(config, created_at=CREATED + timedelta(hours=1)))
    assert a == b  # same UTC date: nothing else in the document depends on time


# ------------------------------------------------------------- validation


def _broken(mutate: Any) -> Any:
    parsed = legacy_parsed()
    out = mutate(parsed)
    return parsed if out is None else out


BLOCKERS = [
    ("not an object (string)", lambda p: "just text", "not_an_object"),
    ("not an object (array)", lambda p: [p], "not_an_object"),
    ("no conversation_metadata", lambda p: p.pop("conversation_metadata") and None,
     "missing_conversation_metadata"),
    ("metadata not an object", lambda p: p.update(conversation_metadata="x"),
     "missing_conversation_metadata"),
    ("no turns", lambda p: p.pop("turns") and None, "missing_turns"),
    ("turns not an array", lambda p: p.update(turns={"1": "x"}), "missing_turns"),
    ("blank client_persona", lambda p: p["conversation_metadata"].update(client_persona=" "),
     "missing_metadata_field"),
    ("no session_context", lambda p: p["conversation_metadata"].pop("session_context") and None,
     "missing_metadata_field"),
    ("phase not a string", lambda p: p["conversation_metadata"].update(conversation_phase=3),
     "missing_metadata_field"),
    ("one turn", lambda p: p.update(turns=p["turns"][:1]), "too_few_turns"),
    ("turn not an object", lambda p: p["turns"].__setitem__(1, "hi"), "invalid_turn"),
    ("turn number missing", lambda p: p["turns"][0].pop("turn_number") and None,
     "invalid_turn_number"),
    ("turn number string", lambda p: p["turns"][0].update(turn_number="1"),
     "invalid_turn_number"),
    ("role system", lambda p: p["turns"][1].update(role="system"), "invalid_role"),
    ("role missing", lambda p: p["turns"][1].pop("role") and None, "invalid_role"),
    ("content blank", lambda p: p["turns"][1].update(content="   "), "invalid_content"),
    ("content not a string", lambda p: p["turns"][1].update(content=["a"]), "invalid_content"),
    ("no emotional_context", lambda p: p["turns"][2].pop("emotional_context") and None,
     "invalid_emotional_context"),
    ("blank primary emotion",
     lambda p: p["turns"][2]["emotional_context"].update(primary_emotion=""),
     "invalid_emotional_context"),
    ("intensity high", lambda p: p["turns"][2]["emotional_context"].update(intensity="high"),
     "invalid_intensity"),
    ("intensity 7", lambda p: p["turns"][2]["emotional_context"].update(intensity=7),
     "invalid_intensity"),
    ("intensity negative", lambda p: p["turns"][2]["emotional_context"].update(intensity=-0.1),
     "invalid_intensity"),
    ("intensity bool", lambda p: p["turns"][2]["emotional_context"].update(intensity=True),
     "invalid_intensity"),
]


@pytest.mark.parametrize(("mutate", "code"), [(m, c) for _, m, c in BLOCKERS],
                         ids=[name for name, _, _ in BLOCKERS])
def test_blocking_errors(config: EnrichmentConfig, mutate: Any, code: str) -> None:
    with pytest.raises(InvalidDocument) as info:
        enrich(inputs(_broken(mutate)), config)
    assert info.value.code == code


WARNINGS = [
    ("numbers out of order", lambda p: p["turns"][2].update(turn_number=9),
     "turn_numbers_not_sequential"),
    ("roles not alternating", lambda p: p["turns"][1].update(role="user"),
     "roles_not_alternating"),
    ("short content", lambda p: p["turns"][3].update(content="Ok."), "short_content"),
    ("intensity 0", lambda p: p["turns"][3]["emotional_context"].update(intensity=0),
     "intensity_at_bound"),
    ("intensity 1", lambda p: p["turns"][3]["emotional_context"].update(intensity=1.0),
     "intensity_at_bound"),
    ("no expected_outcome",
     lambda p: p["conversation_metadata"].pop("expected_outcome") and None,
     "missing_expected_outcome"),
]


@pytest.mark.parametrize(("mutate", "code"), [(m, c) for _, m, c in WARNINGS],
                         ids=[name for name, _, _ in WARNINGS])
def test_warnings_do_not_block(config: EnrichmentConfig, mutate: Any, code: str) -> None:
    result = enrich(inputs(_broken(mutate)), config)
    assert [w.code for w in result.report.warnings] == [code]
    assert len(result.document["training_pairs"]) == 8


def test_out_of_order_turns_are_not_reordered(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    parsed["turns"][0]["turn_number"], parsed["turns"][1]["turn_number"] = 2, 1
    pairs = doc(config, parsed)["training_pairs"]
    assert [p["turn_number"] for p in pairs[:3]] == [2, 1, 3]


def test_invalid_document_lists_every_error(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    parsed["turns"][1]["role"] = "system"
    parsed["turns"][2]["emotional_context"]["intensity"] = "high"
    with pytest.raises(InvalidDocument) as info:
        enrich(inputs(parsed), config)
    assert [e.code for e in info.value.report.errors] == ["invalid_role", "invalid_intensity"]
    assert "(+1 more)" in str(info.value)


def test_enrich_does_not_modify_its_input(config: EnrichmentConfig) -> None:
    parsed = legacy_parsed()
    before = copy.deepcopy(parsed)
    enrich(inputs(parsed), config)
    assert parsed == before


def test_naive_created_at_is_taken_as_utc(config: EnrichmentConfig) -> None:
    naive = datetime(2025, 1, 2, 23, 59)
    assert doc(config, created_at=naive)["dataset_metadata"]["created_date"] == "2025-01-02"
    aware = datetime(2025, 1, 2, 23, 59, tzinfo=UTC)
    assert doc(config, created_at=aware)["dataset_metadata"]["created_date"] == "2025-01-02"


def test_control_characters_in_configured_profile_are_removed(config: EnrichmentConfig) -> None:
    dirty = EnrichmentConfig(
        consultant_profile={**config.consultant_profile, "name": "Elena\x07 Morales"},
        default_system_prompt=config.default_system_prompt,
        dataset_constants=config.dataset_constants)
    result = enrich(inputs(), dirty)
    assert result.document["consultant_profile"]["name"] == "Elena Morales"
    assert "consultant_profile.name" in result.report.warnings[0].message
    clean_again = enrich(inputs(), config)  # the shipped profile is used as is
    assert clean_again.document["consultant_profile"] is config.consultant_profile
    assert not clean_again.report.warnings


# ------------------------------------------------------------------ reviews


def _review(config: EnrichmentConfig, index: int, **changes: Any) -> PairReview:
    p = pair(config, index)
    base: dict[str, Any] = dict(
        turn_number=p["turn_number"], status="approved", notes="Good, \"warm\"\nnaïve ✓",
        use_as_seed_example=True, generate_variations_count=3,
        content_sha256=content_sha256(p["current_user_input"], p["target_response"]))
    base.update(changes)
    return PairReview(**base)


def test_current_review_fills_the_review_fields(config: EnrichmentConfig) -> None:
    review = _review(config, 1)
    pairs = doc(config, reviews=(review,))["training_pairs"]
    tm = pairs[1]["training_metadata"]
    assert list(tm)[-5:] == ["human_reviewed", "reviewer_notes", "use_as_seed_example",
                             "generate_variations_count", "review_status"]
    assert tm["human_reviewed"] is True
    assert tm["reviewer_notes"] == "Good, \"warm\"\nnaïve ✓"
    assert tm["use_as_seed_example"] is True
    assert tm["generate_variations_count"] == 3
    assert tm["review_status"] == "approved"
    # every other pair carries no review
    for other in pairs[:1] + pairs[2:]:
        assert other["training_metadata"]["human_reviewed"] is False
        assert other["training_metadata"]["review_status"] is None


def test_review_of_another_text_is_stale_and_counts_as_none(config: EnrichmentConfig) -> None:
    review = _review(config, 1)
    parsed = legacy_parsed()
    parsed["turns"][1]["content"] += " (regenerated)"
    tm = doc(config, parsed, reviews=(review,))["training_pairs"][1]["training_metadata"]
    assert tm["human_reviewed"] is False
    assert tm["reviewer_notes"] is None and tm["review_status"] is None
    assert tm["use_as_seed_example"] is False and tm["generate_variations_count"] == 0
    # the user turn it answers is part of what was read, too
    parsed = legacy_parsed()
    parsed["turns"][0]["content"] += " (regenerated)"
    tm = doc(config, parsed, reviews=(review,))["training_pairs"][1]["training_metadata"]
    assert tm["human_reviewed"] is False


def test_review_of_a_user_turn_is_never_applied(config: EnrichmentConfig) -> None:
    review = PairReview(turn_number=1, status="rejected", notes=None, use_as_seed_example=False,
                        generate_variations_count=0,
                        content_sha256=content_sha256(pair(config, 0)["current_user_input"], ""))
    tm = doc(config, reviews=(review,))["training_pairs"][0]["training_metadata"]
    assert tm["human_reviewed"] is False


def test_review_notes_lose_control_characters_with_a_warning(config: EnrichmentConfig) -> None:
    review = _review(config, 1, notes="bell\x07 here\ttab")
    result = enrich(inputs(reviews=(review,)), config)
    assert result.document["training_pairs"][1]["training_metadata"]["reviewer_notes"] \
        == "bell here\ttab"
    assert [w.code for w in result.report.warnings] == ["control_characters_removed"]


def test_content_sha256_byte_layout() -> None:
    expected = hashlib.sha256("Frage: naïve?".encode() + b"\x00" + "Antwort ✓".encode())
    assert content_sha256("Frage: naïve?", "Antwort ✓") == expected.hexdigest()
    assert content_sha256("ab", "c") != content_sha256("a", "bc")
