"""Deterministic synthetic bundles: the demo's sample, test data and the benchmark's load.

Realistic shape: 4 to 10 turns of 300 to 1,500 characters, some non-ASCII;
by default 70% new-format rows (parsed document with input_parameters), 20%
legacy rows (scaffolding referenced by the row only), 10% with no
scaffolding at all. Same seed, same records.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

PERSONAS = [
    ("pragmatic_optimist", "David Chen", "The Pragmatic Optimist",
     {"age": 35, "gender": "male", "location": "Urban/Suburban",
      "family_status": "married or partnership"},
     "Modest but stable income. Values-driven financial decisions."),
    ("anxious_planner", "Marcus Thompson", "The Anxious Planner",
     {"age": 42, "gender": "male", "location": "Suburban", "family_status": "married, two kids"},
     "Six-figure household income, heavy mortgage, worries about retirement readiness."),
    ("overwhelmed_avoider", "Jennifer Martinez", "The Overwhelmed Avoider",
     {"age": 29, "gender": "female", "location": "Urban", "family_status": "single"},
     "Student loans and credit card debt; avoids opening statements."),
    ("late_starter", "Renée Okafor", "The Late Starter",
     {"age": 54, "location": "Rural"}, "Little retirement savings, strong earnings now."),
    ("windfall_receiver", "Søren Lindqvist", "The Windfall Receiver",
     "Early 40s, recently inherited a house and investment account", None),
    ("young_accumulator", "Priya Raman", "The Young Accumulator",
     {"age": 26, "gender": "female"}, "First job in tech, equity compensation."),
]
ARCS = [
    ("confusion_to_clarity", "Confusion → Clarity", "confusion", "clarity",
     ["normalize_confusion", "break_down_complexity", "check_understanding"]),
    ("shame_to_acceptance", "Shame → Acceptance", "shame", "acceptance",
     ["validate_feelings", "normalize_struggle", "reframe_past_decisions"]),
    ("fear_to_confidence", "Fear → Confidence", "fear", "confidence",
     ["acknowledge_fear", "specific_numbers", "small_next_step"]),
    ("overwhelm_to_empowerment", "Overwhelm → Empowerment", "overwhelm", "empowerment",
     ["single_step_focus", "celebrate_progress"]),
    ("anxiety_to_calm", "Anxiety → Calm", "anxiety", "calm", []),
    ("guilt_to_relief", "Guilt → Relief", "guilt", "relief", ["validate_feelings"]),
]
TOPICS = [
    ("mortgage_payoff_strategy", "Accelerated Mortgage Payoff", "intermediate"),
    ("hsa_vs_fsa_decision", "HSA vs FSA Decision", "beginner"),
    ("529_plan_setup", "529 College Savings Setup", "intermediate"),
    ("roth_conversion", "Roth Conversion Ladder", "advanced"),
    ("emergency_fund", "Building an Emergency Fund", "beginner"),
    ("debt_avalanche", "Debt Avalanche vs Snowball", None),
]
TEMPLATES = [
    ("Template - Confusion → Clarity - Education Focus", "educational"),
    ("Template - Shame → Acceptance - Validation Focus", "emotional_support"),
    ("Template - Crisis Response", None),
]
USER_EMOTIONS = ["confusion", "anxiety", "shame", "fear", "overwhelm", "hope", "frustration",
                 "curiosity", "relief", "guilt", "cautious optimism", "embarrassment"]
ASSISTANT_EMOTIONS = ["reassurance", "empathy", "clarity", "encouragement", "calm",
                      "confidence", "warmth", "guidance"]
WORDS = [
    "money", "feel", "plan", "budget", "savings", "retirement", "account", "tax",
    "mortgage", "payment", "rate", "invest", "index", "fund", "goal", "family", "month",
    "year", "worry", "honest", "think", "understand", "help", "step", "number", "percent",
    "balance", "debt", "interest", "emergency", "cushion", "employer", "match", "option",
    "choice", "decision", "clarity", "progress", "small", "win", "together", "—", "café",
    "naïve", "über", "5", "000", "€", "señor", "résumé", "₹", "3.5%", "$2,000", "401(k)",
    "HSA", "Roth",
]


def _text(rng: random.Random, low: int = 300, high: int = 1500) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    sentence = " ".join(words)[:target].rstrip()
    return sentence[0].upper() + sentence[1:] + "."


def scaffolding_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for key, name, archetype, demographics, background in PERSONAS:
        records.append({"type": "persona", "persona_key": key, "name": name,
                        "archetype": archetype, "demographics": demographics,
                        "financial_background": background})
    for key, name, start, end, techniques in ARCS:
        records.append({"type": "emotional_arc", "arc_key": key, "name": name,
                        "starting_emotion": start, "ending_emotion": end,
                        "arc_strategy": f"Move the client from {start} to {end}.",
                        "response_techniques": techniques})
    for key, name, level in TOPICS:
        record: dict[str, Any] = {"type": "training_topic", "topic_key": key, "name": name}
        if level:
            record["complexity_level"] = level
        records.append(record)
    for name, category in TEMPLATES:
        records.append({"type": "prompt_template", "template_name": name, "category": category})
    return records


def parsed_document(rng: random.Random, client: str, with_parameters: dict[str, Any] | None,
                    turns: int | None = None) -> dict[str, Any]:
    count = turns or rng.randint(4, 10)
    out_turns = []
    for n in range(1, count + 1):
        user = n % 2 == 1
        emotion: dict[str, Any] = {
            "primary_emotion": rng.choice(USER_EMOTIONS if user else ASSISTANT_EMOTIONS),
            "intensity": round(rng.uniform(0.2, 0.9), 2),
        }
        if rng.random() < 0.8:
            emotion["secondary_emotion"] = rng.choice(USER_EMOTIONS + ASSISTANT_EMOTIONS)
        out_turns.append({"turn_number": n, "role": "user" if user else "assistant",
                          "content": _text(rng), "emotional_context": emotion})
    document: dict[str, Any] = {
        "conversation_metadata": {
            "client_persona": client,
            "session_context": _text(rng, 80, 200),
            "conversation_phase": rng.choice(["initial_opportunity_exploration",
                                              "initial_shame_revelation", "follow_up_planning"]),
            "expected_outcome": _text(rng, 60, 150),
        },
        "turns": out_turns,
    }
    if rng.random() < 0.1:
        del document["conversation_metadata"]["expected_outcome"]
    if with_parameters is not None:
        document["input_parameters"] = with_parameters
    return document


def conversation_records(count: int, seed: int = 7, *, legacy_share: float = 0.2,
                         bare_share: float = 0.1,
                         start: datetime | None = None) -> Iterator[dict[str, Any]]:
    """`count` conversation records naming the scaffolding of `scaffolding_records()`."""
    rng = random.Random(seed)
    base = start or datetime(2025, 6, 1, tzinfo=UTC)
    for i in range(count):
        cid = uuid.UUID(int=rng.getrandbits(128), version=4)
        persona = rng.choice(PERSONAS)
        arc = rng.choice(ARCS)
        topic = rng.choice(TOPICS)
        template = rng.choice(TEMPLATES)
        draw = rng.random()
        record: dict[str, Any] = {
            "type": "conversation",
            "conversation_id": str(cid),
            "created_at": (base + timedelta(minutes=7 * i)).isoformat(),
            "quality_score": round(rng.uniform(1.5, 5.0), 1),
        }
        client = f"{persona[1]} - {persona[2]}"
        if draw < bare_share:
            record["parsed_json"] = parsed_document(rng, client, None)
        else:
            record.update({"persona_key": persona[0], "emotional_arc_key": arc[0],
                           "training_topic_key": topic[0], "template_name": template[0]})
            params = None if draw < bare_share + legacy_share else {
                "persona_key": persona[0], "persona_name": persona[1],
                "emotional_arc_key": arc[0], "emotional_arc_name": arc[1],
                "training_topic_key": topic[0], "training_topic_name": topic[1]}
            record["parsed_json"] = parsed_document(rng, client, params)
            if rng.random() < 0.3:
                record["system_prompt"] = ("You are Elena Morales, CFP. Acknowledge feelings "
                                           f"before facts. Focus: {topic[1]}.")
        yield record
