"""What an export wrote: counts, strata, removals, lengths (the `--report` JSON and its short form).

Lengths are measured on the rows as written (after conditioning): the
prompt side and the completion side of each row (see `formats.row_texts`),
in characters, and in tokens with `--tokenizer` (a local tokenizer.json
loaded with the `tokenizers` library; nothing is downloaded). Token counts
are those of the message contents, without the special tokens a chat
template adds around each message, so leave some room under `--max-tokens`.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.dataset.review_rules import REVIEW_ORDER

NONE_KEY = "(none)"  # how a null scaffolding key is shown in counts
SHORTFALL_LISTED = 8  # strata named in the printed short report

# The order reasons are listed in (filters first, in the order they apply).
REMOVAL_ORDER = ("since", "until", "not_enriched", "persona", "arc", "topic",
                 "missing_scaffolding", "tier", "rejected_tier", "min_quality", "failed",
                 "near_duplicate", "stratum_key_null", "not_sampled", "member_missing",
                 "no_assistant_pair", "roles_not_alternating", "empty_content", "review",
                 "over_max_tokens")


class TokenizerError(Exception):
    """The tokenizer cannot be loaded; the message says how to fix it."""


class TokenCounter:
    """Counts tokens with a local tokenizer.json (the `tokenizers` library)."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise TokenizerError("--tokenizer needs the `tokenizers` package: "
                                 "pip install 'reenrich[tokenizers]'") from exc
        if not path.is_file():
            raise TokenizerError(f"no tokenizer file at {path}: give the path of a local "
                                 "tokenizer.json (nothing is downloaded)")
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises its own exception types
            raise TokenizerError(f"{path} is not a tokenizer.json the `tokenizers` library "
                                 f"can load: {exc}") from exc
        self.path = path

    def count(self, texts: Sequence[str]) -> int:
        if not texts:
            return 0
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return sum(len(encoding.ids) for encoding in encodings)


def summarize(values: array[int]) -> dict[str, int] | None:
    """min, median, p95, max (nearest rank: values that occur), or None when empty."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {"min": ordered[0], "median": rank(0.5), "p95": rank(0.95), "max": ordered[-1]}


SEQUENCE_STEP = 256  # recommended sequence lengths are multiples of this
# Token counts leave out the special tokens a chat template adds around each
# message: a row needs about this much more room (5% and 32 tokens).
TEMPLATE_SHARE, TEMPLATE_TOKENS = 0.05, 32


def _room(tokens: int) -> int:
    return math.ceil(tokens * (1 + TEMPLATE_SHARE)) + TEMPLATE_TOKENS


def _step_up(tokens: int) -> int:
    return -(-tokens // SEQUENCE_STEP) * SEQUENCE_STEP


def sequence_length(totals: array[int]) -> dict[str, int] | None:
    """The sequence length to train with: the p95 row's tokens and a chat template's room,
    up to a multiple of SEQUENCE_STEP; how many rows it would cut, and what covers all."""
    summary = summarize(totals)
    if summary is None:
        return None
    recommended = _step_up(_room(summary["p95"]))
    return {"p95_tokens": summary["p95"], "max_tokens": summary["max"],
            "recommended": recommended,
            "rows_longer": sum(1 for v in totals if _room(v) > recommended),
            "covers_every_row": _step_up(_room(summary["max"]))}


@dataclass
class Lengths:
    """Per-row prompt and completion lengths (one integer each per row)."""

    prompt: array[int] = field(default_factory=lambda: array("q"))
    completion: array[int] = field(default_factory=lambda: array("q"))
    total: array[int] = field(default_factory=lambda: array("q"))

    def add(self, prompt: int, completion: int) -> None:
        self.prompt.append(prompt)
        self.completion.append(completion)
        self.total.append(prompt + completion)

    def as_json(self) -> dict[str, Any]:
        return {"prompt": summarize(self.prompt), "completion": summarize(self.completion),
                "total": summarize(self.total)}


@dataclass
class SplitTally:
    """What went into one output file."""

    path: str
    rows: int = 0
    conversations: int = 0
    pairs: int = 0  # assistant pairs trained on
    personas: Counter[str] = field(default_factory=Counter)
    arcs: Counter[str] = field(default_factory=Counter)
    topics: Counter[str] = field(default_factory=Counter)
    rows_per_stratum: Counter[str] = field(default_factory=Counter)

    def add_conversation(self, keys: dict[str, str | None]) -> None:
        self.conversations += 1
        self.personas[keys["persona"] or NONE_KEY] += 1
        self.arcs[keys["arc"] or NONE_KEY] += 1
        self.topics[keys["topic"] or NONE_KEY] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "rows": self.rows, "conversations": self.conversations,
            "pairs": self.pairs,
            "personas": dict(sorted(self.personas.items())),
            "emotional_arcs": dict(sorted(self.arcs.items())),
            "training_topics": dict(sorted(self.topics.items())),
        }


@dataclass
class ExportReport:
    format: str
    condition: str
    strip_metadata: bool
    filters: dict[str, Any]
    sampling: dict[str, Any]
    conversations_in_table: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    splits: dict[str, SplitTally] = field(default_factory=dict)
    strata: dict[str, dict[str, int]] = field(default_factory=dict)
    chars: Lengths = field(default_factory=Lengths)
    tokens: Lengths | None = None
    tokenizer: str | None = None
    max_tokens: int | None = None
    rows_over_max_tokens: int = 0
    rows_dropped_over_max_tokens: int = 0
    enrichment_versions: Counter[str] = field(default_factory=Counter)
    review_rules: dict[str, bool] = field(default_factory=dict)
    review_pairs_removed: Counter[str] = field(default_factory=Counter)  # assistant pairs

    def total(self, name: str) -> int:
        return sum(int(getattr(split, name)) for split in self.splits.values())

    def as_json(self) -> dict[str, Any]:
        order = {reason: i for i, reason in enumerate(REMOVAL_ORDER)}
        removed = dict(sorted(((k, v) for k, v in self.removed.items() if v),
                              key=lambda item: (order.get(item[0], len(order)), item[0])))
        return {
            "format": self.format,
            "rows": self.total("rows"),
            "conversations": self.total("conversations"),
            "pairs": self.total("pairs"),
            "splits": {name: split.as_json() for name, split in self.splits.items()},
            "conversations_in_table": self.conversations_in_table,
            "removed": removed,
            "filters": self.filters,
            "sampling": self.sampling,
            "condition": self.condition,
            "strip_metadata": self.strip_metadata,
            "strata": self.strata,
            "shortfall": {label: s["shortfall"] for label, s in self.strata.items()
                          if s.get("shortfall")},
            "lengths": {
                "chars": self.chars.as_json(),
                "tokens": self.tokens.as_json() if self.tokens is not None else None,
            },
            "tokenizer": self.tokenizer,
            "max_tokens": self.max_tokens,
            "rows_over_max_tokens": self.rows_over_max_tokens if self.max_tokens else None,
            "rows_dropped_over_max_tokens": self.rows_dropped_over_max_tokens,
            "sequence_length": sequence_length(self.tokens.total) if self.tokens else None,
            "enrichment_versions": dict(sorted(self.enrichment_versions.items())),
            "review": {"rules": self.review_rules,
                       "pairs_removed": {k: self.review_pairs_removed[k] for k in REVIEW_ORDER
                                         if self.review_pairs_removed[k]}},
        }


def _dist(summary: dict[str, int] | None) -> str:
    if summary is None:
        return "-"
    return "/".join(str(summary[k]) for k in ("min", "median", "p95", "max"))


def print_short(report: dict[str, Any], out: Callable[[str], None]) -> None:
    """The few lines `reenrich export` prints."""
    for name, split in report["splits"].items():
        out(f"{name}: {split['path']}: {split['rows']} rows, {split['conversations']} "
            f"conversations, {split['pairs']} pairs ({report['format']})")
    removed = ", ".join(f"{k} {v}" for k, v in report["removed"].items())
    out(f"removed conversations: {removed or 'none'} (of {report['conversations_in_table']})")
    review = report.get("review", {}).get("pairs_removed")
    if review:
        out("removed by review: " + ", ".join(f"{k} {v}" for k, v in review.items())
            + " assistant pair(s)")
    if report["removed"].get("rejected_tier"):
        out(f"left out {report['removed']['rejected_tier']} conversations of quality tier "
            "rejected (keep them with --include-rejected-tier)")
    strata = report["strata"]
    if report["sampling"].get("stratify_by") or report["sampling"].get("per_stratum"):
        shortfall = list(report["shortfall"].items())
        short = ", ".join(f"{k} -{v}" for k, v in shortfall[:SHORTFALL_LISTED])
        if len(shortfall) > SHORTFALL_LISTED:
            short += f" (+{len(shortfall) - SHORTFALL_LISTED} more in --report)"
        out(f"strata: {len(strata)}; shortfall in {len(shortfall)}: {short or 'none'}")
    chars = report["lengths"]["chars"]
    out(f"chars min/median/p95/max: prompt {_dist(chars['prompt'])}, "
        f"completion {_dist(chars['completion'])}")
    tokens = report["lengths"]["tokens"]
    if tokens is not None:
        line = (f"tokens min/median/p95/max: prompt {_dist(tokens['prompt'])}, "
                f"completion {_dist(tokens['completion'])}, total {_dist(tokens['total'])}")
        if report["max_tokens"]:
            line += f"; {report['rows_over_max_tokens']} rows over {report['max_tokens']}"
            if report["rows_dropped_over_max_tokens"]:
                line += f" ({report['rows_dropped_over_max_tokens']} dropped)"
        out(line)
    sequence = report.get("sequence_length")
    if sequence:
        out(f"sequence length: {sequence['recommended']} covers the p95 row "
            f"({sequence['p95_tokens']} tokens; {sequence['rows_longer']} rows longer); "
            f"{sequence['covers_every_row']} covers every row (max {sequence['max_tokens']})")
    _print_version(report, out)


def _print_version(report: dict[str, Any], out: Callable[[str], None]) -> None:
    source = report.get("from_version")
    if source:
        out(f"from dataset version {source['name']}: {source['members']} members, "
            f"{len(source['changed'])} changed since, {len(source['missing'])} no longer "
            f"exist, {len(source['not_enriched'])} not enriched now")
    version = report.get("dataset_version")
    if version:
        out(f"dataset version: {version['name']} ({version['members']} conversations, "
            f"contract version {version['contract_version']})")
