"""Golden test: the old system's real output, with the contract's deliberate fixes applied.

The upstream document (tests/fixtures/reference/enriched-upstream-david-chen.json)
is taken apart into the inputs it was built from; our enrichment of those
inputs must equal the upstream document after exactly the changes listed in
"Deliberate differences" of the contract, byte for byte in contract order.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from tests.conftest import FIXTURES
from worker.config import EnrichmentConfig
from worker.enrichment.contract import in_contract_order
from worker.enrichment.enrich import enrich
from worker.enrichment.models import (
    ConversationInputs,
    EmotionalArc,
    Persona,
    PromptTemplate,
    TrainingTopic,
)

UPSTREAM: dict[str, Any] = json.loads(
    (FIXTURES / "reference" / "enriched-upstream-david-chen.json").read_text())
TECHNIQUES = ("normalize_confusion", "break_down_complexity", "check_understanding")


def _inputs() -> ConversationInputs:
    pairs = UPSTREAM["training_pairs"]
    meta = pairs[0]["conversation_metadata"]
    turns = []
    for p in pairs:
        emotions = p["emotional_context"]["detected_emotions"]
        user = p["target_response"] is None
        turns.append({
            "turn_number": p["turn_number"], "role": "user" if user else "assistant",
            "content": p["current_user_input"] if user else p["target_response"],
            "emotional_context": {"primary_emotion": emotions["primary"],
                                  "secondary_emotion": emotions["secondary"],
                                  "intensity": emotions["intensity"]}})
    parsed = {"conversation_metadata": {k: meta[k] for k in (
        "client_persona", "session_context", "conversation_phase", "expected_outcome")},
        "turns": turns}
    params = UPSTREAM["input_parameters"]
    demographics, background = meta["client_background"].split("; ", 1)
    age, gender, location, family = demographics.split(", ")
    return ConversationInputs(
        conversation_id=uuid.UUID(UPSTREAM["dataset_metadata"]["dataset_name"].split("_")[-1]),
        created_at=datetime(2025, 11, 30, 14, 0, tzinfo=UTC),
        parsed=parsed, quality_score=3.0, has_scaffolding_reference=True,
        persona=Persona(id=params["persona_id"], key=params["persona_key"],
                        name=params["persona_name"], archetype="The Pragmatic Optimist",
                        demographics={"age": int(age.removeprefix("Age ")), "gender": gender,
                                      "location": location, "family_status": family},
                        financial_background=background),
        arc=EmotionalArc(id=params["emotional_arc_id"], key=params["emotional_arc_key"],
                         name=params["emotional_arc_name"], starting_emotion="confusion",
                         ending_emotion="clarity", response_techniques=TECHNIQUES),
        topic=TrainingTopic(id=params["training_topic_id"], key=params["training_topic_key"],
                            name=params["training_topic_name"], complexity_level=None),
        template=PromptTemplate(name="Template - Confusion → Clarity - Education Focus",
                                category="educational"),
        system_prompt=pairs[0]["system_prompt"],
    )


def _expected() -> dict[str, Any]:
    """The upstream document with the contract's deliberate differences applied."""
    doc = copy.deepcopy(UPSTREAM)
    cid = UPSTREAM["dataset_metadata"]["dataset_name"].removeprefix("fp_conversation_")
    doc["input_parameters"]["persona_archetype"] = "The Pragmatic Optimist"
    for pair in doc["training_pairs"]:
        # ids were the template category alone and collided across conversations;
        # contract version 2 carries the whole conversation uuid
        pair["id"] = f"educational_turn{pair['turn_number']}_{cid}"
        pair["conversation_id"] = cid
        tm = pair["training_metadata"]
        # skills came from the template's persona keys; now the arc's techniques
        tm["demonstrates_skills"] = list(TECHNIQUES)
        # criteria had random noise; now each equals the score
        tm["quality_criteria"] = dict.fromkeys(tm["quality_criteria"], 3.0)
        # the objective named another topic; now the topic's own key
        tm["key_learning_objective"] = doc["input_parameters"]["training_topic_key"]
        # version 2 adds review_status as the last key (no review here: null)
        tm["review_status"] = None
    return doc


def test_upstream_document_reproduced_with_deliberate_fixes() -> None:
    config = EnrichmentConfig(
        consultant_profile=UPSTREAM["consultant_profile"],
        default_system_prompt="unused: the conversation has a logged prompt",
        dataset_constants={k: UPSTREAM["dataset_metadata"][k] for k in (
            "vertical", "consultant_persona", "target_use", "conversation_source")})
    ours = enrich(_inputs(), config).document
    expected = _expected()
    assert ours == expected
    assert orjson.dumps(ours) == orjson.dumps(in_contract_order(expected))


def test_upstream_differences_are_exactly_the_documented_ones() -> None:
    """Guard the golden test itself: the fixes touch only the documented fields."""
    expected = _expected()
    changed = set()
    for old, new in zip(UPSTREAM["training_pairs"], expected["training_pairs"], strict=True):
        changed |= {k for k in old if old[k] != new[k]}
        old_tm, new_tm = old["training_metadata"], new["training_metadata"]
        changed |= {f"training_metadata.{k}" for k in old_tm.keys() | new_tm.keys()
                    if old_tm.get(k, "<absent>") != new_tm.get(k, "<absent>")}
        assert list(new_tm)[:-1] == list(old_tm)  # review_status appended, order kept
        # the old review fields were constants, and no review is recorded here
        assert (old_tm["human_reviewed"], old_tm["reviewer_notes"], old_tm["use_as_seed_example"],
                old_tm["generate_variations_count"]) == (False, None, False, 0)
    assert changed == {"id", "conversation_id", "training_metadata",
                       "training_metadata.demonstrates_skills",
                       "training_metadata.quality_criteria",
                       "training_metadata.key_learning_objective",
                       "training_metadata.review_status"}
    cid = UPSTREAM["dataset_metadata"]["dataset_name"].removeprefix("fp_conversation_")
    assert [p["id"] for p in expected["training_pairs"]] == [
        f"educational_turn{n}_{cid}" for n in range(1, len(expected["training_pairs"]) + 1)]
    assert all(p["training_metadata"]["review_status"] is None
               for p in expected["training_pairs"])
