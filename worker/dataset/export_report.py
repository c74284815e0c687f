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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.dataset.review_rules import REVIEW_ORDER
from worker.enrichment.models import QualityTier

if TYPE_CHECKING:
    from worker.dataset.hub import SplitInfo
    from worker.dataset.sampling import SamplingSpec
    from worker.dataset.versions import FileRecord

NONE_KEY = "(none)"  # how a null scaffolding key is shown in counts
SHORTFALL_LISTED = 8  # strata named in the printed short report

# The order reasons are listed in (filters first, in the order they apply).
REMOVAL_ORDER = ("since", "until", "not_enriched", "persona", "arc", "topic",
                 "missing_scaffolding", "tier", "rejected_tier", "min_quality", "failed",
                 "near_duplicate", "stratum_key_null", "not_sampled", "member_missing",
                 "no_assistant_pair", "roles_not_alternating", "empty_content", "review",
                 "over_max_tokens")
REJECTED_TIER_REMOVAL = "rejected_tier"  # the reason of the default tier filter


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


@dataclass(frozen=True)
class LengthSummary:
    """min, median, p95, max of one length (nearest rank: values that occur)."""

    min: int
    median: int
    p95: int
    max: int

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "median": self.median, "p95": self.p95, "max": self.max}

    def dist(self) -> str:
        """min/median/p95/max, as the short report prints it."""
        return f"{self.min}/{self.median}/{self.p95}/{self.max}"


def summarize(values: array[int]) -> LengthSummary | None:
    """The summary of `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return LengthSummary(ordered[0], rank(0.5), rank(0.95), ordered[-1])


SEQUENCE_STEP = 256  # recommended sequence lengths are multiples of this
# Token counts leave out the special tokens a chat template adds around each
# message: a row needs about this much more room (5% and 32 tokens).
TEMPLATE_SHARE, TEMPLATE_TOKENS = 0.05, 32


def _room(tokens: int) -> int:
    return math.ceil(tokens * (1 + TEMPLATE_SHARE)) + TEMPLATE_TOKENS


def _step_up(tokens: int) -> int:
    return -(-tokens // SEQUENCE_STEP) * SEQUENCE_STEP


@dataclass(frozen=True)
class SequenceLength:
    """The sequence length to train with, and what it would cut."""

    p95_tokens: int
    max_tokens: int
    recommended: int
    rows_longer: int
    covers_every_row: int

    def as_dict(self) -> dict[str, int]:
        return {"p95_tokens": self.p95_tokens, "max_tokens": self.max_tokens,
                "recommended": self.recommended, "rows_longer": self.rows_longer,
                "covers_every_row": self.covers_every_row}


def sequence_length(totals: array[int]) -> SequenceLength | None:
    """The p95 row's tokens and a chat template's room, up to a multiple of SEQUENCE_STEP;
    how many rows it would cut, and what covers all."""
    summary = summarize(totals)
    if summary is None:
        return None
    recommended = _step_up(_room(summary.p95))
    return SequenceLength(p95_tokens=summary.p95, max_tokens=summary.max,
                          recommended=recommended,
                          rows_longer=sum(1 for v in totals if _room(v) > recommended),
                          covers_every_row=_step_up(_room(summary.max)))


def _summary_dict(summary: LengthSummary | None) -> dict[str, int] | None:
    return summary.as_dict() if summary is not None else None


@dataclass(frozen=True)
class LengthStats:
    """The prompt, completion and total lengths of the rows (None: no rows)."""

    prompt: LengthSummary | None
    completion: LengthSummary | None
    total: LengthSummary | None

    def parts(self) -> list[tuple[str, LengthSummary]]:
        """(part, summary) of the parts that have rows, in report order."""
        return [(name, value) for name, value in (("prompt", self.prompt),
                                                  ("completion", self.completion),
                                                  ("total", self.total)) if value is not None]

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": _summary_dict(self.prompt),
                "completion": _summary_dict(self.completion),
                "total": _summary_dict(self.total)}


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

    def extend(self, other: Lengths) -> None:
        """Another slice's rows after these (row order is kept)."""
        self.prompt.extend(other.prompt)
        self.completion.extend(other.completion)
        self.total.extend(other.total)

    def stats(self) -> LengthStats:
        return LengthStats(summarize(self.prompt), summarize(self.completion),
                           summarize(self.total))


@dataclass(frozen=True)
class SplitSummary:
    """What went into one output file (keys counted with NONE_KEY for null)."""

    path: str
    rows: int
    conversations: int
    pairs: int  # assistant pairs trained on
    personas: dict[str, int]
    emotional_arcs: dict[str, int]
    training_topics: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "conversations": self.conversations,
                "pairs": self.pairs, "personas": self.personas,
                "emotional_arcs": self.emotional_arcs, "training_topics": self.training_topics}


@dataclass
class SplitTally:
    """What goes into one output file, counted while it is written."""

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

    def merge(self, other: SplitTally) -> None:
        """Add another slice's counts of the same file."""
        self.rows += other.rows
        self.conversations += other.conversations
        self.pairs += other.pairs
        self.personas.update(other.personas)
        self.arcs.update(other.arcs)
        self.topics.update(other.topics)
        self.rows_per_stratum.update(other.rows_per_stratum)

    def summary(self) -> SplitSummary:
        return SplitSummary(path=self.path, rows=self.rows, conversations=self.conversations,
                            pairs=self.pairs, personas=dict(sorted(self.personas.items())),
                            emotional_arcs=dict(sorted(self.arcs.items())),
                            training_topics=dict(sorted(self.topics.items())))


@dataclass(frozen=True)
class SamplingSummary:
    """The sampling an export asked for."""

    stratify_by: tuple[str, ...]
    per_stratum: int | None
    balance: bool
    seed: int
    split_validation: float | None

    @classmethod
    def of(cls, spec: SamplingSpec) -> SamplingSummary:
        return cls(stratify_by=tuple(spec.stratify_by), per_stratum=spec.per_stratum,
                   balance=spec.balance, seed=spec.seed,
                   split_validation=spec.validation_fraction)

    def as_dict(self) -> dict[str, Any]:
        return {"stratify_by": list(self.stratify_by), "per_stratum": self.per_stratum,
                "balance": self.balance, "seed": self.seed,
                "split_validation": self.split_validation}


@dataclass(frozen=True)
class Stratum:
    """One stratum's counts. None: not known for it (a stratum the sampling plan did not
    make, such as `all`, has rows only); such a key is left out of the JSON."""

    available: int | None = None
    picked: int | None = None
    shortfall: int | None = None
    validation_conversations: int | None = None
    train_rows: int | None = None
    validation_rows: int | None = None

    def as_dict(self) -> dict[str, int]:
        return {name: value for name, value in (
            ("available", self.available), ("picked", self.picked),
            ("shortfall", self.shortfall),
            ("validation_conversations", self.validation_conversations),
            ("train_rows", self.train_rows), ("validation_rows", self.validation_rows))
            if value is not None}


@dataclass(frozen=True)
class ReviewSummary:
    rules: dict[str, bool]
    pairs_removed: dict[str, int]  # assistant pairs, by reason (REVIEW_ORDER)

    def as_dict(self) -> dict[str, Any]:
        return {"rules": self.rules, "pairs_removed": self.pairs_removed}


@dataclass(frozen=True)
class FromVersion:
    """`--from-version`: the version rebuilt, and which of its members changed since."""

    name: str
    members: int
    written: int
    changed: tuple[str, ...]
    missing: tuple[str, ...]
    not_enriched: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "members": self.members, "written": self.written,
                "changed": list(self.changed), "missing": list(self.missing),
                "not_enriched": list(self.not_enriched)}


@dataclass(frozen=True)
class DatasetVersionInfo:
    """The dataset version an export is recorded as; `files` once they are recorded."""

    name: str
    members: int
    contract_version: int
    files: tuple[FileRecord, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "members": self.members,
                               "contract_version": self.contract_version}
        if self.files is not None:
            out["files"] = [asdict(f) for f in self.files]
        return out


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: the `--report` JSON (`as_dict`), the card's and the short
    report's source. `filters`, `review.rules` and `dedup` are option maps shown key by key.
    """

    format: str
    splits: dict[str, SplitSummary]
    conversations_in_table: int
    removed: dict[str, int]  # conversations, by reason in REMOVAL_ORDER
    filters: dict[str, Any]
    sampling: SamplingSummary
    condition: str
    strip_metadata: bool
    strata: dict[str, Stratum]
    chars: LengthStats
    tokens: LengthStats | None = None
    tokenizer: str | None = None
    max_tokens: int | None = None
    rows_over_max_tokens: int = 0
    rows_dropped_over_max_tokens: int = 0
    sequence_length: SequenceLength | None = None
    enrichment_versions: dict[str, int] = field(default_factory=dict)
    review: ReviewSummary = field(default_factory=lambda: ReviewSummary({}, {}))
    dedup: dict[str, Any] | None = None
    meta: bool = False
    from_version: FromVersion | None = None
    dataset_version: DatasetVersionInfo | None = None
    hub: SplitInfo | None = None  # --hub: the Parquet files (the card's dataset_info)

    def _total(self, name: str) -> int:
        return sum(int(getattr(split, name)) for split in self.splits.values())

    @property
    def rows(self) -> int:
        return self._total("rows")

    @property
    def conversations(self) -> int:
        return self._total("conversations")

    @property
    def pairs(self) -> int:
        return self._total("pairs")

    @property
    def shortfall(self) -> dict[str, int]:
        """The strata that had fewer conversations than asked for."""
        return {label: s.shortfall for label, s in self.strata.items() if s.shortfall}

    def with_files(self, files: Sequence[FileRecord]) -> ExportSummary:
        assert self.dataset_version is not None
        return replace(self, dataset_version=replace(self.dataset_version, files=tuple(files)))

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON: keys in this order, as `--report` has always written them."""
        out: dict[str, Any] = {
            "format": self.format, "rows": self.rows, "conversations": self.conversations,
            "pairs": self.pairs,
            "splits": {name: split.as_dict() for name, split in self.splits.items()},
            "conversations_in_table": self.conversations_in_table, "removed": self.removed,
            "filters": self.filters, "sampling": self.sampling.as_dict(),
            "condition": self.condition, "strip_metadata": self.strip_metadata,
            "strata": {label: s.as_dict() for label, s in self.strata.items()},
            "shortfall": self.shortfall,
            "lengths": {"chars": self.chars.as_dict(),
                        "tokens": self.tokens.as_dict() if self.tokens is not None else None},
            "tokenizer": self.tokenizer, "max_tokens": self.max_tokens,
            "rows_over_max_tokens": self.rows_over_max_tokens if self.max_tokens else None,
            "rows_dropped_over_max_tokens": self.rows_dropped_over_max_tokens,
            "sequence_length": (self.sequence_length.as_dict()
                                if self.sequence_length is not None else None),
            "enrichment_versions": self.enrichment_versions,
            "review": self.review.as_dict(), "dedup": self.dedup, "meta": self.meta,
            "from_version": self.from_version.as_dict() if self.from_version else None,
            "dataset_version": (self.dataset_version.as_dict()
                                if self.dataset_version is not None else None),
        }
        if self.hub is not None:
            out["hub"] = self.hub.as_dict()
        return out


@dataclass
class ExportReport:
    """What an export counts while it runs; `finish` makes its ExportSummary."""

    format: str
    condition: str
    strip_metadata: bool
    filters: dict[str, Any]
    sampling: SamplingSummary
    conversations_in_table: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    splits: dict[str, SplitTally] = field(default_factory=dict)
    # label -> counts (the keys of Stratum), filled by the sampling plan and the writer
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

    def merge(self, other: ExportReport) -> None:
        """Add a slice's report (`export --workers`): sums, and lengths in slice order."""
        self.removed.update(other.removed)
        self.review_pairs_removed.update(other.review_pairs_removed)
        self.enrichment_versions.update(other.enrichment_versions)
        self.rows_over_max_tokens += other.rows_over_max_tokens
        self.rows_dropped_over_max_tokens += other.rows_dropped_over_max_tokens
        self.chars.extend(other.chars)
        if self.tokens is not None and other.tokens is not None:
            self.tokens.extend(other.tokens)
        for name, tally in other.splits.items():
            self.splits[name].merge(tally)

    def removed_in_order(self) -> dict[str, int]:
        """The removals that removed something, in REMOVAL_ORDER (unknown reasons last)."""
        order = {reason: i for i, reason in enumerate(REMOVAL_ORDER)}
        return dict(sorted(((k, v) for k, v in self.removed.items() if v),
                           key=lambda item: (order.get(item[0], len(order)), item[0])))

    def finish(self, *, dedup: dict[str, Any] | None = None, meta: bool = False,
               from_version: FromVersion | None = None,
               dataset_version: DatasetVersionInfo | None = None,
               hub: SplitInfo | None = None) -> ExportSummary:
        return ExportSummary(
            format=self.format,
            splits={name: split.summary() for name, split in self.splits.items()},
            conversations_in_table=self.conversations_in_table,
            removed=self.removed_in_order(), filters=self.filters, sampling=self.sampling,
            condition=self.condition, strip_metadata=self.strip_metadata,
            strata={label: Stratum(**counts) for label, counts in self.strata.items()},
            chars=self.chars.stats(),
            tokens=self.tokens.stats() if self.tokens is not None else None,
            tokenizer=self.tokenizer, max_tokens=self.max_tokens,
            rows_over_max_tokens=self.rows_over_max_tokens,
            rows_dropped_over_max_tokens=self.rows_dropped_over_max_tokens,
            sequence_length=sequence_length(self.tokens.total) if self.tokens else None,
            enrichment_versions=dict(sorted(self.enrichment_versions.items())),
            review=ReviewSummary(self.review_rules, {
                k: self.review_pairs_removed[k] for k in REVIEW_ORDER
                if self.review_pairs_removed[k]}),
            dedup=dedup, meta=meta, from_version=from_version,
            dataset_version=dataset_version, hub=hub)


def _dist(summary: LengthSummary | None) -> str:
    return summary.dist() if summary is not None else "-"


def print_short(report: ExportSummary, out: Callable[[str], None]) -> None:
    """The few lines `reenrich export` prints."""
    for name, split in report.splits.items():
        out(f"{name}: {split.path}: {split.rows} rows, {split.conversations} "
            f"conversations, {split.pairs} pairs ({report.format})")
    removed = ", ".join(f"{k} {v}" for k, v in report.removed.items())
    out(f"removed conversations: {removed or 'none'} (of {report.conversations_in_table})")
    review = report.review.pairs_removed
    if review:
        out("removed by review: " + ", ".join(f"{k} {v}" for k, v in review.items())
            + " assistant pair(s)")
    rejected = report.removed.get(REJECTED_TIER_REMOVAL)
    if rejected:
        out(f"left out {rejected} conversations of quality tier {QualityTier.REJECTED} "
            "(keep them with --include-rejected-tier)")
    if report.sampling.stratify_by or report.sampling.per_stratum:
        shortfall = list(report.shortfall.items())
        short = ", ".join(f"{k} -{v}" for k, v in shortfall[:SHORTFALL_LISTED])
        if len(shortfall) > SHORTFALL_LISTED:
            short += f" (+{len(shortfall) - SHORTFALL_LISTED} more in --report)"
        out(f"strata: {len(report.strata)}; shortfall in {len(shortfall)}: {short or 'none'}")
    chars = report.chars
    out(f"chars min/median/p95/max: prompt {_dist(chars.prompt)}, "
        f"completion {_dist(chars.completion)}")
    _print_tokens(report, out)
    _print_version(report, out)


def _print_tokens(report: ExportSummary, out: Callable[[str], None]) -> None:
    tokens = report.tokens
    if tokens is not None:
        line = (f"tokens min/median/p95/max: prompt {_dist(tokens.prompt)}, "
                f"completion {_dist(tokens.completion)}, total {_dist(tokens.total)}")
        if report.max_tokens:
            line += f"; {report.rows_over_max_tokens} rows over {report.max_tokens}"
            if report.rows_dropped_over_max_tokens:
                line += f" ({report.rows_dropped_over_max_tokens} dropped)"
        out(line)
    sequence = report.sequence_length
    if sequence:
        out(f"sequence length: {sequence.recommended} covers the p95 row "
            f"({sequence.p95_tokens} tokens; {sequence.rows_longer} rows longer); "
            f"{sequence.covers_every_row} covers every row (max {sequence.max_tokens})")


def _print_version(report: ExportSummary, out: Callable[[str], None]) -> None:
    source = report.from_version
    if source:
        out(f"from dataset version {source.name}: {source.members} members, "
            f"{len(source.changed)} changed since, {len(source.missing)} no longer "
            f"exist, {len(source.not_enriched)} not enriched now")
    version = report.dataset_version
    if version:
        out(f"dataset version: {version.name} ({version.members} conversations, "
            f"contract version {version.contract_version})")
