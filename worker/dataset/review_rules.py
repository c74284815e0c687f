"""What exports do with reviews (pure): `reviews.md`, "What exports do with reviews".

The review of a pair is the one its stored document carries
(`training_metadata.review_status`, `use_as_seed_example`; a stale review
was dropped by the enrichment already).

- By default rejected pairs are not trained on: `prompt-completion`,
  `brightrun-v4` and `full-json` leave rejected assistant pairs out; `chat`
  cuts the conversation just before its first rejected assistant turn (what
  is left ends on the last assistant turn before it; nothing left: the
  conversation is dropped). `include_rejected` keeps them.
- `approved_only`: only approved pairs (`chat`: only conversations whose
  assistant turns are all approved).
- `seed_examples_only`: only pairs marked as seed examples (`chat`: only
  conversations whose assistant turns all are).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from worker.dataset.formats import is_assistant_pair, pairs_in_order

# Why an assistant pair is not written (the report's `review.pairs_removed`).
REJECTED = "rejected"
NOT_APPROVED = "not_approved"
NOT_SEED_EXAMPLE = "not_seed_example"
AFTER_REJECTED = "after_rejected"  # chat: assistant turns cut off after a rejected one
REVIEW_ORDER = (REJECTED, AFTER_REJECTED, NOT_APPROVED, NOT_SEED_EXAMPLE)  # report order
# Why a whole conversation is not written (the report's `removed`).
CONVERSATION_REMOVED = "review"


@dataclass(frozen=True, slots=True)
class ReviewRules:
    include_rejected: bool = False
    approved_only: bool = False
    seed_examples_only: bool = False

    def as_json(self) -> dict[str, bool]:
        return {"include_rejected": self.include_rejected, "approved_only": self.approved_only,
                "seed_examples_only": self.seed_examples_only}

    def drop_reason(self, pair: dict[str, Any]) -> str | None:
        """Why this assistant pair is not written, or None."""
        training = pair.get("training_metadata") or {}
        status = training.get("review_status")
        if status == "rejected" and not self.include_rejected:
            return REJECTED
        if self.approved_only and status != "approved":
            return NOT_APPROVED
        if self.seed_examples_only and training.get("use_as_seed_example") is not True:
            return NOT_SEED_EXAMPLE
        return None


@dataclass
class Applied:
    """A document after the rules: None when nothing of it is left to write."""

    document: dict[str, Any] | None
    pairs_removed: Counter[str]


def for_pairs(document: dict[str, Any], rules: ReviewRules) -> Applied:
    """Pair formats: the assistant pairs the rules drop are taken out (user pairs stay)."""
    removed: Counter[str] = Counter()
    kept = []
    assistant_left = False
    for pair in pairs_in_order(document):
        if is_assistant_pair(pair):
            reason = rules.drop_reason(pair)
            if reason is not None:
                removed[reason] += 1
                continue
            assistant_left = True
        kept.append(pair)
    if not removed:
        return Applied(document, removed)
    if not assistant_left:
        return Applied(None, removed)
    return Applied({**document, "training_pairs": kept}, removed)


def for_chat(document: dict[str, Any], rules: ReviewRules) -> Applied:
    """`chat`: keep the whole conversation, cut it before a rejected turn, or drop it."""
    pairs = pairs_in_order(document)
    assistant = [p for p in pairs if is_assistant_pair(p)]
    removed: Counter[str] = Counter()
    if rules.approved_only or rules.seed_examples_only:
        reasons = [rules.drop_reason(p) for p in assistant]
        first = next((r for r in reasons if r is not None), None)
        if first is None:
            return Applied(document, removed)
        # dropped whole: every assistant turn is counted, passing ones under the first reason
        removed.update(r or first for r in reasons)
        return Applied(None, removed)
    if rules.include_rejected:
        return Applied(document, removed)
    cut = next((i for i, p in enumerate(pairs)
                if is_assistant_pair(p) and rules.drop_reason(p) == REJECTED), None)
    if cut is None:
        return Applied(document, removed)
    removed[REJECTED] += 1
    removed[AFTER_REJECTED] += sum(1 for p in pairs[cut + 1:] if is_assistant_pair(p))
    kept = pairs[:cut]
    if not any(is_assistant_pair(p) for p in kept):
        return Applied(None, removed)
    return Applied({**document, "training_pairs": kept}, removed)

