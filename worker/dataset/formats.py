"""From one stored enriched document to export rows (pure): `export-formats.md`.

Documents come in with keys in the contract's order (`contract.in_contract_order`).
The turn sequence of a conversation is read from its pairs in turn order: a
pair with a null `target_response` is a user turn (its `current_user_input`),
an assistant pair is an assistant turn (its `target_response`).

Trainers (TRL's SFTTrainer, Axolotl's chat_template datasets, OpenAI chat
fine-tuning) read `messages` rows whose roles alternate user/assistant after
an optional system message, and apply chat templates that reject anything
else. A conversation whose stored turns break that (roles not alternating,
an empty turn after control-character removal) is therefore skipped by
`chat` and `prompt-completion` and counted, never written in a shape a
trainer rejects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

FORMATS = ("chat", "prompt-completion", "brightrun-v4", "full-json")
Condition = Literal["none", "system"]

METADATA_COLUMNS = ("conversation_id", "persona_archetype", "emotional_arc_key",
                    "training_topic_key", "quality_score", "quality_tier")

# The conditioning block's lines: label, and the pair's conversation_metadata key.
CONDITION_LINES = (("Client persona", "persona_archetype"),
                   ("Emotional arc", "emotional_arc"),
                   ("Training topic", "training_topic"))

BRIGHTRUN_VERSION = "4.0.0"
FORMAT_SPEC = "brightrun-lora-v4"
VERTICAL = "financial_planning_consultant"

# Reasons a conversation yields no chat / prompt-completion rows.
NO_ASSISTANT_PAIR = "no_assistant_pair"
ROLES_NOT_ALTERNATING = "roles_not_alternating"
EMPTY_CONTENT = "empty_content"


def pairs_in_order(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The document's pairs by turn_number (stable for equal numbers)."""
    pairs: list[dict[str, Any]] = document.get("training_pairs") or []
    return sorted(pairs, key=lambda pair: pair.get("turn_number") or 0)


def is_assistant_pair(pair: dict[str, Any]) -> bool:
    return pair.get("target_response") is not None


def turn_of(pair: dict[str, Any]) -> dict[str, str]:
    if is_assistant_pair(pair):
        return {"role": "assistant", "content": pair["target_response"]}
    return {"role": "user", "content": pair.get("current_user_input") or ""}


def trained_turns(document: dict[str, Any]) -> list[dict[str, str]]:
    """The turn sequence up to and including the last assistant turn."""
    turns = [turn_of(pair) for pair in pairs_in_order(document)]
    while turns and turns[-1]["role"] != "assistant":
        turns.pop()
    return turns


def skip_reason(document: dict[str, Any]) -> str | None:
    """Why this conversation gives no chat / prompt-completion rows, or None."""
    turns = trained_turns(document)
    if not turns:
        return NO_ASSISTANT_PAIR
    if any(not turn["content"].strip() for turn in turns):
        return EMPTY_CONTENT
    expected = ("user", "assistant")
    if any(turn["role"] != expected[i % 2] for i, turn in enumerate(turns)):
        return ROLES_NOT_ALTERNATING
    return None


def condition_block(meta: dict[str, Any]) -> str:
    """The lines `--condition system` appends; "" when persona, arc and topic are all null."""
    lines = [f"{label}: {meta[key]}" for label, key in CONDITION_LINES
             if meta.get(key) is not None]
    return "\n".join(lines)


def system_content(system_prompt: str, meta: dict[str, Any], condition: Condition) -> str:
    if condition == "system":
        block = condition_block(meta)
        if block:
            return f"{system_prompt}\n\n{block}"
    return system_prompt


def metadata_columns(document: dict[str, Any], pair: dict[str, Any] | None = None,
                     ) -> dict[str, Any]:
    """The top-level metadata columns of a row (beside the messages, never inside)."""
    pairs = document.get("training_pairs") or []
    source = pair or (pairs[0] if pairs else {})
    meta = source.get("conversation_metadata") or {}
    training = source.get("training_metadata") or {}
    dataset = document.get("dataset_metadata") or {}
    columns = {
        "conversation_id": source.get("conversation_id"),
        "persona_archetype": meta.get("persona_archetype"),
        "emotional_arc_key": meta.get("emotional_arc_key"),
        "training_topic_key": meta.get("training_topic_key"),
        "quality_score": training.get("quality_score"),
        "quality_tier": dataset.get("quality_tier"),
    }
    if pair is not None:
        columns["turn_number"] = pair.get("turn_number")
    return columns


def chat_row(document: dict[str, Any], *, condition: Condition = "none",
             strip_metadata: bool = False) -> dict[str, Any] | None:
    """One row per conversation; None when it has none (see `skip_reason`)."""
    if skip_reason(document) is not None:
        return None
    first = pairs_in_order(document)[0]
    system = system_content(first["system_prompt"], first.get("conversation_metadata") or {},
                            condition)
    row: dict[str, Any] = {
        "messages": [{"role": "system", "content": system}, *trained_turns(document)]}
    if not strip_metadata:
        row.update(metadata_columns(document))
    return row


def prompt_completion_rows(document: dict[str, Any], *, condition: Condition = "none",
                           strip_metadata: bool = False) -> Iterator[dict[str, Any]]:
    """One row per assistant pair: the prompt ends on the user turn it answers."""
    if skip_reason(document) is not None:
        return
    for pair in pairs_in_order(document):
        if not is_assistant_pair(pair):
            continue
        system = system_content(pair["system_prompt"], pair.get("conversation_metadata") or {},
                                condition)
        prompt = [{"role": "system", "content": system}]
        prompt.extend({"role": entry["role"], "content": entry["content"]}
                      for entry in pair.get("conversation_history") or [])
        row: dict[str, Any] = {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": pair["target_response"]}],
        }
        if not strip_metadata:
            row.update(metadata_columns(document, pair))
        yield row


def brightrun_rows(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The assistant pairs as stored (the document is already in contract order)."""
    for pair in pairs_in_order(document):
        if is_assistant_pair(pair):
            yield pair


def full_json_conversation(document: dict[str, Any]) -> dict[str, Any]:
    """One entry of the full training file's `conversations`."""
    pairs = pairs_in_order(document)
    dataset = document.get("dataset_metadata") or {}
    params = document.get("input_parameters") or {}
    conversation_id = pairs[0].get("conversation_id") if pairs else \
        str(dataset.get("dataset_name", "")).removeprefix("fp_conversation_")
    return {
        "conversation_metadata": {
            "conversation_id": conversation_id,
            "source_file": f"fp_conversation_{conversation_id}.json",
            "created_date": dataset.get("created_date"),
            "total_turns": dataset.get("total_turns"),
            "quality_tier": dataset.get("quality_tier"),
            "scaffolding": {
                "persona_key": params.get("persona_key"),
                "persona_name": params.get("persona_name"),
                "emotional_arc_key": params.get("emotional_arc_key"),
                "emotional_arc": params.get("emotional_arc_name"),
                "training_topic_key": params.get("training_topic_key"),
                "training_topic": params.get("training_topic_name"),
            },
        },
        "training_pairs": pairs,
    }


def row_texts(fmt: str, row: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(prompt texts, completion texts) of a written row, for the length report.

    chat: the assistant turns are the completion (each is trained), the rest
    the prompt; prompt-completion: its two lists; brightrun-v4: system prompt
    and history, then the target response; full-json (one conversation): as
    chat, over its pairs.
    """
    if fmt == "chat":
        messages = row["messages"]
        return ([m["content"] for m in messages if m["role"] != "assistant"],
                [m["content"] for m in messages if m["role"] == "assistant"])
    if fmt == "prompt-completion":
        return [m["content"] for m in row["prompt"]], [m["content"] for m in row["completion"]]
    if fmt == "brightrun-v4":
        history = [entry["content"] for entry in row.get("conversation_history") or []]
        return [row["system_prompt"], *history], [row["target_response"]]
    pairs = row["training_pairs"]
    turns = [turn_of(pair) for pair in pairs]
    prompt = [pairs[0]["system_prompt"]] if pairs else []
    prompt += [t["content"] for t in turns if t["role"] == "user"]
    return prompt, [t["content"] for t in turns if t["role"] == "assistant"]
