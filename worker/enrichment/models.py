"""Typed shapes of the documents: parsed input, scaffolding rows, enriched output.

Field order in the enriched-output models is the contract's key order
(`enriched-format.md`); `contract.KEY_ORDER` is derived from these models so
the printed order has a single source of truth.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


def content_sha256(current_user_input: str, target_response: str) -> str:
    """The hash a review binds to: SHA-256 of UTF-8(input) + NUL + UTF-8(response)."""
    data = current_user_input.encode() + b"\x00" + target_response.encode()
    return hashlib.sha256(data).hexdigest()


class QualityTier(StrEnum):
    """A conversation's tier, from its quality score (dataset_metadata.quality_tier)."""

    SEED_DATASET = "seed_dataset"
    PRODUCTION = "production"
    EXPERIMENTAL = "experimental"
    REJECTED = "rejected"

    @classmethod
    def rank(cls, name: str | None) -> int:
        """Best first; a name that is no tier (or null) after every tier."""
        names = [tier.value for tier in cls]
        return names.index(name) if name in names else len(names)


# ---------------------------------------------------------- scaffolding rows


@dataclass(frozen=True, slots=True)
class Persona:
    id: uuid.UUID | str
    key: str
    name: str
    archetype: str
    demographics: dict[str, Any] | str | None = None
    financial_background: str | None = None


@dataclass(frozen=True, slots=True)
class EmotionalArc:
    id: uuid.UUID | str
    key: str
    name: str
    starting_emotion: str
    ending_emotion: str
    response_techniques: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainingTopic:
    id: uuid.UUID | str
    key: str
    name: str
    complexity_level: str | None = None


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    name: str
    category: str | None = None


@dataclass(frozen=True, slots=True)
class PairReview:
    """A pair's current review as the enrichment reads it (`reviews.md`)."""

    turn_number: int
    status: str  # approved | rejected | needs_revision
    notes: str | None
    use_as_seed_example: bool
    generate_variations_count: int
    content_sha256: str  # what the reviewer read; another text makes the review stale


@dataclass(frozen=True, slots=True)
class ConversationInputs:
    """Everything one enriched document is built from (the enrichment's only input)."""

    conversation_id: uuid.UUID
    created_at: datetime
    parsed: Any  # the stored JSON value, any type: validation decides
    quality_score: float | None = None
    has_scaffolding_reference: bool = False
    persona: Persona | None = None
    arc: EmotionalArc | None = None
    topic: TrainingTopic | None = None
    template: PromptTemplate | None = None
    system_prompt: str | None = None
    reviews: tuple[PairReview, ...] = ()  # the current review of each reviewed pair


# ------------------------------------------------------------ enriched output


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputParameters(_Strict):
    persona_id: str | None
    persona_name: str | None
    persona_key: str | None
    persona_archetype: str | None
    emotional_arc_id: str | None
    emotional_arc_name: str | None
    emotional_arc_key: str | None
    training_topic_id: str | None
    training_topic_name: str | None
    training_topic_key: str | None


class DatasetMetadata(_Strict):
    dataset_name: str
    version: str
    created_date: str
    vertical: str
    consultant_persona: str
    target_use: str
    conversation_source: str
    quality_tier: QualityTier
    total_conversations: int
    total_turns: int
    notes: str


class PairMetadata(_Strict):
    client_persona: str
    persona_archetype: str | None
    client_background: str
    emotional_arc: str | None
    emotional_arc_key: str | None
    training_topic: str | None
    training_topic_key: str | None
    session_context: str
    conversation_phase: str
    expected_outcome: str


class EmotionalState(_Strict):
    primary: str
    secondary: str | None = None
    intensity: float


class HistoryEntry(_Strict):
    turn: int | float
    role: Literal["user", "assistant"]
    content: str
    emotional_state: EmotionalState


class DetectedEmotions(_Strict):
    primary: str
    primary_confidence: float
    secondary: str | None = None
    secondary_confidence: float | None = None
    intensity: float
    valence: Literal["positive", "negative", "mixed"]


class EmotionalContext(_Strict):
    detected_emotions: DetectedEmotions


class QualityCriteria(_Strict):
    empathy_score: float
    clarity_score: float
    appropriateness_score: float
    brand_voice_alignment: float


class TrainingMetadata(_Strict):
    difficulty_level: str
    key_learning_objective: str
    demonstrates_skills: list[str]
    conversation_turn: int | float
    emotional_progression_target: str
    quality_score: int
    quality_criteria: QualityCriteria
    human_reviewed: bool
    reviewer_notes: str | None
    use_as_seed_example: bool
    generate_variations_count: int
    review_status: Literal["approved", "rejected", "needs_revision"] | None


class TrainingPair(_Strict):
    id: str
    conversation_id: str
    turn_number: int | float
    conversation_metadata: PairMetadata
    system_prompt: str
    conversation_history: list[HistoryEntry]
    current_user_input: str
    emotional_context: EmotionalContext
    target_response: str | None
    training_metadata: TrainingMetadata


class EnrichedDocument(_Strict):
    input_parameters: InputParameters | None
    dataset_metadata: DatasetMetadata
    consultant_profile: dict[str, Any]
    training_pairs: list[TrainingPair]
