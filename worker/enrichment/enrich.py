"""The enrichment: (parsed document, row, scaffolding, system prompt) -> enriched document.

A pure, deterministic function: no I/O, no clock, no randomness. The same
inputs give the same dict, built in the contract's key order, so the same
bytes when serialized. The rules are those of `enriched-format.md`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from worker.config import EnrichmentConfig
from worker.enrichment.models import (
    ConversationInputs,
    PairReview,
    Persona,
    QualityTier,
    content_sha256,
)
from worker.enrichment.validation import (
    CONTROL_CHARACTERS_REMOVED,
    Issue,
    Report,
    is_blank,
    validate_parsed,
)

# Bumped whenever a change here changes documents, so operators can see which
# rows were built by which logic (`reenrich stats`). Version 2: whole
# conversation uuid in pair ids, review fields from the pair's current review.
ENRICHMENT_VERSION = 2

DOCUMENT_VERSION = "1.0.0"
DEFAULT_EXPECTED_OUTCOME = "Provide emotionally intelligent support"
DEFAULT_LEARNING_OBJECTIVE = "Provide emotionally intelligent financial guidance"
DEFAULT_SKILLS = ("empathy", "active_listening")
DEFAULT_COMPLEXITY = "intermediate"
DEFAULT_QUALITY_SCORE = 3.0
PRIMARY_CONFIDENCE = 0.8
SECONDARY_CONFIDENCE = 0.7

POSITIVE_WORDS = ("hope", "relief", "excitement", "joy", "confidence", "gratitude", "pride",
                  "determination", "calm", "optimism")
NEGATIVE_WORDS = ("shame", "fear", "anxiety", "guilt", "anger", "frustration", "overwhelm",
                  "sadness", "embarrassment", "worry", "stress")

INPUT_PARAMETER_KEYS = (
    "persona_id", "persona_name", "persona_key", "persona_archetype",
    "emotional_arc_id", "emotional_arc_name", "emotional_arc_key",
    "training_topic_id", "training_topic_name", "training_topic_key",
)

# C0 controls except tab, newline, carriage return; DEL; C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class InvalidDocument(Exception):
    """The parsed document breaks a blocking rule; `report.errors` says which."""

    def __init__(self, report: Report) -> None:
        self.report = report
        first = report.errors[0]
        more = f" (+{len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        super().__init__(f"{first.message}{more}")

    @property
    def code(self) -> str:
        return self.report.errors[0].code


@dataclass(frozen=True, slots=True)
class EnrichmentResult:
    document: dict[str, Any]
    report: Report


def round_half_up(value: float, places: int = 0) -> Decimal:
    exponent = Decimal(1).scaleb(-places)
    return Decimal(str(value)).quantize(exponent, rounding=ROUND_HALF_UP)


def quality_tier(score: float) -> str:
    # The plain value: the document holds a str, as it always had.
    if score >= 4.5:
        return QualityTier.SEED_DATASET.value
    if score >= 3.5:
        return QualityTier.PRODUCTION.value
    if score >= 2.5:
        return QualityTier.EXPERIMENTAL.value
    return QualityTier.REJECTED.value


@functools.lru_cache(maxsize=4096)
def valence(primary_emotion: str) -> str:
    lowered = primary_emotion.lower()
    if any(word in lowered for word in POSITIVE_WORDS):
        return "positive"
    if any(word in lowered for word in NEGATIVE_WORDS):
        return "negative"
    return "mixed"


class _Cleaner:
    """Removes control characters from strings, remembering where it did."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def text(self, value: str, path: str) -> str:
        if _CONTROL.search(value) is None:
            return value
        self.paths.append(path)
        return _CONTROL.sub("", value)

    def opt(self, value: Any, path: str) -> Any:
        return self.text(value, path) if isinstance(value, str) else value

    def tree(self, value: Any, path: str) -> Any:
        # The common case has nothing to remove: answer it without building paths or copies.
        if not _has_control(value):
            return value
        return self._tree(value, path)

    def _tree(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            return self.text(value, path)
        if isinstance(value, dict):
            return {k: self._tree(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self._tree(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value


# The profile is the same object for every document of a run: check it once.
_profile_memo: list[tuple[Any, bool]] = []


def _clean_profile(profile: dict[str, Any], clean: _Cleaner) -> Any:
    if not (_profile_memo and _profile_memo[0][0] is profile):
        _profile_memo[:] = [(profile, _has_control(profile))]
    return clean.tree(profile, "consultant_profile") if _profile_memo[0][1] else profile


def _has_control(value: Any) -> bool:
    if isinstance(value, str):
        return _CONTROL.search(value) is not None
    if isinstance(value, dict):
        return any(_has_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_control(v) for v in value)
    return False


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def client_background(persona: Persona | None, client_persona: str) -> str:
    groups: list[str] = []
    if persona is not None:
        demographics = persona.demographics
        if isinstance(demographics, str):
            if demographics.strip():
                groups.append(demographics)
        elif isinstance(demographics, dict):
            parts = []
            if _present(demographics.get("age")):
                parts.append(f"Age {demographics['age']}")
            parts.extend(str(demographics[name]) for name in ("gender", "location", "family_status")
                         if _present(demographics.get(name)))
            if parts:
                groups.append(", ".join(parts))
        if _present(persona.financial_background):
            groups.append(str(persona.financial_background))
    return "; ".join(groups) if groups else f"Client profile: {client_persona}"


def _input_parameters(inputs: ConversationInputs, parsed: dict[str, Any]) -> dict[str, Any] | None:
    """Rebuilt from the joins; the parsed copy only when the row references nothing."""
    if inputs.has_scaffolding_reference:
        p, a, t = inputs.persona, inputs.arc, inputs.topic
        return {
            "persona_id": str(p.id) if p else None,
            "persona_name": p.name if p else None,
            "persona_key": p.key if p else None,
            "persona_archetype": p.archetype if p else None,
            "emotional_arc_id": str(a.id) if a else None,
            "emotional_arc_name": a.name if a else None,
            "emotional_arc_key": a.key if a else None,
            "training_topic_id": str(t.id) if t else None,
            "training_topic_name": t.name if t else None,
            "training_topic_key": t.key if t else None,
        }
    stored = parsed.get("input_parameters")
    if not isinstance(stored, dict):
        return None
    return {key: stored[key] if isinstance(stored.get(key), str) else None
            for key in INPUT_PARAMETER_KEYS}


def _history_entry(turn: dict[str, Any]) -> dict[str, Any]:
    emotion = turn["emotional_context"]
    state: dict[str, Any] = {"primary": emotion["primary_emotion"]}
    if not is_blank(emotion.get("secondary_emotion")):
        state["secondary"] = emotion["secondary_emotion"]
    state["intensity"] = emotion["intensity"]
    return {"turn": turn["turn_number"], "role": turn["role"], "content": turn["content"],
            "emotional_state": state}


def _detected_emotions(turn: dict[str, Any]) -> dict[str, Any]:
    emotion = turn["emotional_context"]
    primary = emotion["primary_emotion"]
    detected: dict[str, Any] = {"primary": primary, "primary_confidence": PRIMARY_CONFIDENCE}
    if not is_blank(emotion.get("secondary_emotion")):
        detected["secondary"] = emotion["secondary_emotion"]
        detected["secondary_confidence"] = SECONDARY_CONFIDENCE
    detected["intensity"] = emotion["intensity"]
    detected["valence"] = valence(primary)
    return {"detected_emotions": detected}


def _clean_turns(turns: list[dict[str, Any]], clean: _Cleaner) -> list[dict[str, Any]]:
    strings: list[str] = []
    for turn in turns:
        emotion = turn["emotional_context"]
        strings += (turn["content"], emotion["primary_emotion"])
        if isinstance(emotion.get("secondary_emotion"), str):
            strings.append(emotion["secondary_emotion"])
    if _CONTROL.search("\n".join(strings)) is None:
        return turns  # nothing to remove: one scan instead of one per string
    out = []
    for i, turn in enumerate(turns):
        emotion = turn["emotional_context"]
        out.append({
            "turn_number": turn["turn_number"],
            "role": turn["role"],
            "content": clean.text(turn["content"], f"turns[{i}].content"),
            "emotional_context": {
                "primary_emotion": clean.text(emotion["primary_emotion"],
                                              f"turns[{i}].emotional_context.primary_emotion"),
                "secondary_emotion": clean.opt(emotion.get("secondary_emotion"),
                                               f"turns[{i}].emotional_context.secondary_emotion"),
                "intensity": emotion["intensity"],
            },
        })
    return out


def _current_review(reviews: dict[Any, PairReview], number: Any, user_input: str,
                    response: str) -> PairReview | None:
    """The turn's review if it was made of this very text; a stale one counts as none."""
    review = reviews.get(number)
    if review is None or review.content_sha256 != content_sha256(user_input, response):
        return None
    return review


def _review_fields(review: PairReview | None, clean: _Cleaner, index: int) -> dict[str, Any]:
    if review is None:
        return {"human_reviewed": False, "reviewer_notes": None, "use_as_seed_example": False,
                "generate_variations_count": 0, "review_status": None}
    return {"human_reviewed": True,
            "reviewer_notes": clean.opt(review.notes,
                                        f"training_pairs[{index}].reviewer_notes"),
            "use_as_seed_example": review.use_as_seed_example,
            "generate_variations_count": review.generate_variations_count,
            "review_status": review.status}


def _pair_metadata(inputs: ConversationInputs, meta: dict[str, Any], scaffold: dict[str, Any],
                   clean: _Cleaner) -> dict[str, Any]:
    """The conversation_metadata every pair carries (one dict, shared by all pairs)."""
    persona = inputs.persona
    if persona is not None:
        client_persona = clean.text(f"{persona.name} - {persona.archetype}", "persona")
    else:
        client_persona = clean.text(meta["client_persona"], "conversation_metadata.client_persona")
    background = clean.text(client_background(persona, client_persona), "persona.background")
    expected: Any = meta.get("expected_outcome")
    return {
        "client_persona": client_persona,
        "persona_archetype": scaffold["persona_key"],
        "client_background": background,
        "emotional_arc": scaffold["emotional_arc_name"],
        "emotional_arc_key": scaffold["emotional_arc_key"],
        "training_topic": scaffold["training_topic_name"],
        "training_topic_key": scaffold["training_topic_key"],
        "session_context": clean.text(meta["session_context"],
                                      "conversation_metadata.session_context"),
        "conversation_phase": clean.text(meta["conversation_phase"],
                                         "conversation_metadata.conversation_phase"),
        "expected_outcome": (clean.text(expected, "conversation_metadata.expected_outcome")
                             if not is_blank(expected) else DEFAULT_EXPECTED_OUTCOME),
    }


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every pair of one conversation has in common besides its metadata."""

    id_prefix: str
    conversation_id: str
    system_prompt: str
    complexity: str
    objective: str
    skills: list[Any]
    progression: str
    quality_score: int
    criteria: dict[str, float]


def _shared(inputs: ConversationInputs, config: EnrichmentConfig, scaffold: dict[str, Any],
            score: float, clean: _Cleaner) -> _Shared:
    topic, arc, template = inputs.topic, inputs.arc, inputs.template
    complexity = topic.complexity_level if topic else None
    prompt = inputs.system_prompt if inputs.system_prompt is not None \
        else config.default_system_prompt
    criterion = float(round_half_up(score, 1))
    techniques = list(arc.response_techniques) if arc and arc.response_techniques else []
    category = template.category if template else None
    return _Shared(
        id_prefix=(clean.text(category, "template.category")
                   if isinstance(category, str) and category.strip() else "fp_conversation"),
        conversation_id=str(inputs.conversation_id),
        system_prompt=clean.text(prompt, "system_prompt"),
        complexity=(complexity if complexity is not None and not is_blank(complexity)
                    else DEFAULT_COMPLEXITY),
        objective=(scaffold["training_topic_key"] or scaffold["training_topic_name"]
                   or DEFAULT_LEARNING_OBJECTIVE),
        skills=clean.tree(techniques, "arc.response_techniques") or list(DEFAULT_SKILLS),
        progression=(clean.text(f"{arc.starting_emotion}(0.8) → {arc.ending_emotion}(0.8)",
                                "arc") if arc else ""),
        quality_score=int(round_half_up(score)),
        criteria={"empathy_score": criterion, "clarity_score": criterion,
                  "appropriateness_score": criterion, "brand_voice_alignment": criterion},
    )


def _pairs(turns: list[dict[str, Any]], pair_meta: dict[str, Any], shared: _Shared,
           reviews: dict[int, PairReview], clean: _Cleaner) -> list[dict[str, Any]]:
    """One self-contained pair per turn, each with the turns before it as history."""
    pairs = []
    history: list[dict[str, Any]] = []
    last_user_input = ""
    for index, turn in enumerate(turns):
        number = turn["turn_number"]
        is_user = turn["role"] == "user"
        if is_user:
            last_user_input = turn["content"]
        review = None if is_user or not reviews else \
            _current_review(reviews, number, last_user_input, turn["content"])
        pairs.append({
            "id": f"{shared.id_prefix}_turn{number}_{shared.conversation_id}",
            "conversation_id": shared.conversation_id,
            "turn_number": number,
            "conversation_metadata": pair_meta,
            "system_prompt": shared.system_prompt,
            "conversation_history": list(history),
            "current_user_input": last_user_input,
            "emotional_context": _detected_emotions(turn),
            "target_response": None if is_user else turn["content"],
            "training_metadata": {
                "difficulty_level": f"{shared.complexity}_conversation_turn_{number}",
                "key_learning_objective": shared.objective,
                "demonstrates_skills": shared.skills,
                "conversation_turn": number,
                "emotional_progression_target": shared.progression,
                "quality_score": shared.quality_score,
                "quality_criteria": shared.criteria,
                **_review_fields(review, clean, index),
            },
        })
        history.append(_history_entry(turn))
    return pairs


def _dataset_metadata(inputs: ConversationInputs, config: EnrichmentConfig, score: float,
                      total_turns: int, clean: _Cleaner) -> dict[str, Any]:
    created = inputs.created_at
    created_utc = created.astimezone(UTC) if created.tzinfo else created.replace(tzinfo=UTC)
    constants = config.dataset_constants
    template = inputs.template
    return {
        "dataset_name": f"fp_conversation_{inputs.conversation_id}",
        "version": DOCUMENT_VERSION,
        "created_date": created_utc.date().isoformat(),
        "vertical": constants.get("vertical"),
        "consultant_persona": constants.get("consultant_persona"),
        "target_use": constants.get("target_use"),
        "conversation_source": constants.get("conversation_source"),
        "quality_tier": quality_tier(score),
        "total_conversations": 1,
        "total_turns": total_turns,
        "notes": "Generated via template: "
                 + (clean.text(template.name, "template.name") if template else "unknown"),
    }


def enrich(inputs: ConversationInputs, config: EnrichmentConfig) -> EnrichmentResult:
    """Build the enriched document, or raise InvalidDocument on a blocking error."""
    report = validate_parsed(inputs.parsed)
    if not report.ok:
        raise InvalidDocument(report)
    parsed: dict[str, Any] = inputs.parsed
    clean = _Cleaner()
    turns = _clean_turns(parsed["turns"], clean)
    raw_params = _input_parameters(inputs, parsed)
    params = clean.tree(raw_params, "input_parameters") if raw_params is not None else None
    scaffold = params or dict.fromkeys(INPUT_PARAMETER_KEYS)
    score = inputs.quality_score if inputs.quality_score is not None else DEFAULT_QUALITY_SCORE
    # Built in the order the old single function cleaned them: the warning
    # names paths as a sorted set, so order only matters for readability.
    pair_meta = _pair_metadata(inputs, parsed["conversation_metadata"], scaffold, clean)
    shared = _shared(inputs, config, scaffold, score, clean)
    reviews = {review.turn_number: review for review in inputs.reviews}
    document = {
        "input_parameters": params,
        "dataset_metadata": _dataset_metadata(inputs, config, score, len(turns), clean),
        "consultant_profile": _clean_profile(config.consultant_profile, clean),
        "training_pairs": _pairs(turns, pair_meta, shared, reviews, clean),
    }
    if clean.paths:
        report.warnings.append(Issue(
            CONTROL_CHARACTERS_REMOVED,
            "control characters removed from: " + ", ".join(sorted(set(clean.paths))),
            "enriched_document"))
    return EnrichmentResult(document=document, report=report)
