"""What an export writes: its options, the files (sinks), the rows of one document,
and the run that turns selected documents into rows (counts, lengths, members).

Shared by the export in one process (`worker.dataset.export`) and its
key-range slices in several (`worker.dataset.export_slices`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from worker.dataset import formats, hub, review_rules
from worker.dataset.dedup_export import NEAR_DUPLICATE, ExportClusters
from worker.dataset.export_report import (
    ExportReport,
    Lengths,
    SamplingSummary,
    SplitTally,
    TokenCounter,
    TokenizerError,
)
from worker.dataset.review_rules import ReviewRules
from worker.dataset.sampling import (
    SamplePlan,
    SamplingError,
    SamplingSpec,
    make_plan,
    stratum_key,
    stratum_label,
)
from worker.db import dataset
from worker.db.dataset import DatasetFilters
from worker.enrichment.contract import dumps, in_contract_order
from worker.enrichment.enrich import round_half_up
from worker.errors import ReenrichError, UsageError

log = structlog.get_logger("reenrich.export")

TRAIN, VALIDATION = "train", "validation"


class ExportError(ReenrichError):
    """The export cannot run as asked; the message says what to change."""


class ExportUsageError(ExportError, UsageError):
    """The export's flags do not fit together (exit status 2); found before any work."""


class EmptyExport(ExportError):
    """The filters and sampling left no row; nothing was written."""


# What to look at when a removal reason took everything.
REMOVAL_HINTS = {
    "not_enriched": "run `reenrich backfill` first",
    "persona": "--persona", "arc": "--arc", "topic": "--topic",
    "since": "--since", "until": "--until", "tier": "--tier", "min_quality": "--min-quality",
    "missing_scaffolding": "--require-scaffolding", "failed": "--exclude-failed",
    "stratum_key_null": "--stratify-by: a key is null", "not_sampled": "--per-stratum/--balance",
    "over_max_tokens": "--max-tokens with --drop-over-max",
}


def check_writable(path: Path, flag: str) -> None:
    """`path` can be written: not a directory, its folder exists (made now) and takes files."""
    if path.is_dir():
        raise ExportError(f"{flag} {path} is a directory: give a file path "
                          f"(e.g. {path / 'train.jsonl'})")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{flag} {path}: cannot create the folder {folder}: "
                          f"{exc.strerror or exc}") from exc
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ExportError(f"{flag} {path}: cannot write into {folder}: "
                          f"{exc.strerror or exc}") from exc


@dataclass(frozen=True)
class ExportOptions:
    format: str
    output: Path | None  # None with `hub`
    filters: DatasetFilters = field(default_factory=DatasetFilters)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    validation_output: Path | None = None
    condition: formats.Condition = "none"
    strip_metadata: bool = False
    meta: bool = False  # brightrun-v4: a leading _meta line
    target_model: str | None = None  # full-json
    tokenizer: Path | None = None
    max_tokens: int | None = None
    drop_over_max: bool = False
    review: ReviewRules = field(default_factory=ReviewRules)
    hub: Path | None = None  # a Hugging Face dataset folder (`worker.dataset.hub`)
    shard_size_mb: float | None = None  # hub: default hub.DEFAULT_SHARD_MB
    license: str | None = None  # hub: the card's license, default "other"
    allow_empty: bool = False  # write an empty file instead of failing when nothing is selected
    dedup: bool = False  # keep only each near-duplicate cluster's representative
    workers: int = 1  # processes rendering key-range slices (`worker.dataset.export_slices`)

    def check(self) -> None:
        """The flags fit together (ExportUsageError, exit 2); nothing is touched."""
        fmt = self.format
        if self.review.approved_only and self.review.include_rejected:
            raise ExportUsageError("--approved-only already leaves rejected pairs out: "
                                   "drop --include-rejected")
        if fmt not in formats.FORMATS:
            raise ExportUsageError(f"unknown format {fmt!r}: use one of "
                                   f"{', '.join(formats.FORMATS)}")
        if self.condition not in ("none", "system"):
            raise ExportUsageError(f"--condition is none or system, got {self.condition!r}")
        messages = fmt in ("chat", "prompt-completion")
        if self.condition != "none" and not messages:
            raise ExportUsageError("--condition applies to chat and prompt-completion only")
        if self.strip_metadata and not messages:
            raise ExportUsageError("--strip-metadata applies to chat and prompt-completion only "
                              f"({fmt} writes the stored pairs as they are)")
        if self.meta and fmt != "brightrun-v4":
            raise ExportUsageError("--meta applies to brightrun-v4 only")
        if self.target_model is not None and fmt != "full-json":
            raise ExportUsageError("--target-model applies to full-json only")
        try:
            self.sampling.check()
        except SamplingError as exc:
            raise ExportUsageError(str(exc)) from exc
        self._check_placement()
        if self.max_tokens is not None and self.tokenizer is None:
            raise ExportUsageError("--max-tokens needs --tokenizer PATH (a local tokenizer.json)")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ExportUsageError("--max-tokens must be at least 1")
        if self.drop_over_max and self.max_tokens is None:
            raise ExportUsageError("--drop-over-max needs --max-tokens N")
        if self.workers < 1:
            raise ExportUsageError(f"--workers is a whole number of at least 1, got "
                                   f"{self.workers}")

    def _check_placement(self) -> None:
        """Where the files go: --output [--validation-output], or --hub DIR."""
        split, where = self.sampling.validation_fraction is not None, self.validation_output
        if self.hub is not None:
            self._check_hub()
        elif self.output is None:
            raise ExportUsageError("give --output PATH (or --hub DIR for chat and "
                                   "prompt-completion)")
        elif self.shard_size_mb is not None or self.license is not None:
            raise ExportUsageError("--shard-size and --license apply to --hub DIR only")
        elif split and where is None:
            raise ExportUsageError("--split-validation needs --validation-output PATH")
        if where is not None and not split:
            raise ExportUsageError("--validation-output needs --split-validation F")
        if where is not None and self.output is not None \
                and where.resolve() == self.output.resolve():
            raise ExportUsageError("--validation-output must differ from --output")

    def _check_hub(self) -> None:
        if self.format not in hub.HUB_FORMATS:
            raise ExportUsageError(f"--hub writes Parquet for chat and prompt-completion, not "
                              f"{self.format}: use --output PATH for {self.format}")
        if self.output is not None or self.validation_output is not None:
            raise ExportUsageError("--hub DIR writes DIR/data/<split>-*.parquet: leave out "
                              "--output and --validation-output")
        if self.shard_size_mb is not None and not self.shard_size_mb > 0:
            raise ExportUsageError("--shard-size is a positive number of megabytes")
        if self.license is not None and not hub.LICENSE_ID.match(self.license):
            raise ExportUsageError(f"--license {self.license!r} is not a license id: use a Hub "
                              "license id such as apache-2.0, cc-by-4.0 or other")

    def check_paths(self, extra: Mapping[str, Path | None] | None = None) -> None:
        """Every file the export writes can be written (ExportError), before any reading.

        `extra`: more files by flag (`--report`, `--card`).
        """
        paths: dict[str, Path | None] = {"--output": self.output,
                                         "--validation-output": self.validation_output,
                                         **(extra or {})}
        for flag, path in paths.items():
            if path is not None:
                check_writable(path, flag)


# ---------------------------------------------------------------- the sinks


COPY_CHUNK = 1 << 20


def temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class _Sink:
    """One output file: written beside its path, renamed into place on close.

    `part` (`export --workers`): the file is one slice of the body, written at
    `path` itself, with no head or tail; the final file's sink `absorb`s the parts
    in order.
    """

    separator = b""  # between the rows of two parts (full-json: a comma)

    def __init__(self, path: Path, spool: bool, part: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._tmp = path if part else temp_beside(path)
        self._out: IO[bytes] = self._tmp.open("wb")
        # The body goes to a spool file when the head can only be written at the end.
        self._body: IO[bytes] = (tempfile.TemporaryFile(dir=path.parent)  # noqa: SIM115
                                 if spool and not part else self._out)
        self.rows = 0

    def write(self, row: dict[str, Any], document: dict[str, Any]) -> None:
        raise NotImplementedError

    def head(self) -> bytes:
        return b""

    def tail(self) -> bytes:
        return b""

    def close(self) -> None:
        if self._body is not self._out:
            self._out.write(self.head())
            self._body.seek(0)
            shutil.copyfileobj(self._body, self._out)
            self._body.close()
        self._out.write(self.tail())
        self._out.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        for handle in (self._body, self._out):
            if not handle.closed:
                handle.close()
        self._tmp.unlink(missing_ok=True)

    def finish_part(self) -> dict[str, Any]:
        """Close a part; what the final file's head needs from it."""
        self._out.close()
        return self.part_state()

    def part_state(self) -> dict[str, Any]:
        return {}

    def absorb(self, part: Path, rows: int, state: dict[str, Any]) -> None:
        """Append a part's rows (and remove its file): as if they had been written here."""
        if rows:
            if self.rows and self.separator:
                self._body.write(self.separator)
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, self._body, COPY_CHUNK)
        part.unlink()
        self.rows += rows


class JsonlSink(_Sink):
    """One JSON value per line; with `meta`, a brightrun-v4 `_meta` line first."""

    def __init__(self, path: Path, meta: bool = False, part: bool = False) -> None:
        super().__init__(path, spool=meta, part=part)

    def write(self, row: dict[str, Any], document: dict[str, Any]) -> None:
        self._body.write(dumps(row) + b"\n")
        self.rows += 1

    def head(self) -> bytes:
        meta = {"file_name": self.path.name, "total_pairs": self.rows,
                "version": formats.BRIGHTRUN_VERSION}
        return dumps({"_meta": meta}) + b"\n"


class FullJsonSink(_Sink):
    """The full training file: metadata (known at the end), profile, conversations."""

    separator = b","

    def __init__(self, path: Path, target_model: str | None,
                 consultant_profile: dict[str, Any], part: bool = False) -> None:
        super().__init__(path, spool=True, part=part)
        self.target_model = target_model
        self.profile: dict[str, Any] | None = None
        self.fallback_profile = consultant_profile
        self.total_pairs = 0
        self.scored = 0
        self.score_sum: float = 0
        self.score_min: float | None = None
        self.score_max: float | None = None
        self.reviewed = 0
        self.distribution: dict[str, dict[str, int]] = {
            "personas": {}, "emotional_arcs": {}, "training_topics": {}}
        # A part keeps its scores in order: the final sink adds them up in the same
        # order as one process would (float sums depend on it).
        self.scores: list[float] | None = [] if part else None

    def write(self, row: dict[str, Any], document: dict[str, Any]) -> None:
        if self.rows:
            self._body.write(b",")
        self._body.write(dumps(row))
        self.rows += 1
        if self.profile is None:
            self.profile = document.get("consultant_profile")
        for pair in row["training_pairs"]:
            self.total_pairs += 1
            training = pair.get("training_metadata") or {}
            score = training.get("quality_score")
            if isinstance(score, int | float):
                self._score(score)
            if training.get("human_reviewed") is True:
                self.reviewed += 1
        scaffolding = row["conversation_metadata"]["scaffolding"]
        for name, key in (("personas", "persona_key"), ("emotional_arcs", "emotional_arc_key"),
                          ("training_topics", "training_topic_key")):
            value = scaffolding.get(key)
            if value is not None:
                counts = self.distribution[name]
                counts[value] = counts.get(value, 0) + 1

    def _score(self, score: float) -> None:
        self.score_sum += score
        self.scored += 1
        self.score_min = score if self.score_min is None else min(self.score_min, score)
        self.score_max = score if self.score_max is None else max(self.score_max, score)
        if self.scores is not None:
            self.scores.append(score)

    def part_state(self) -> dict[str, Any]:
        return {"profile": self.profile, "total_pairs": self.total_pairs,
                "scores": self.scores, "reviewed": self.reviewed,
                "distribution": self.distribution}

    def absorb(self, part: Path, rows: int, state: dict[str, Any]) -> None:
        super().absorb(part, rows, state)
        if self.profile is None:
            self.profile = state["profile"]
        self.total_pairs += state["total_pairs"]
        for score in state["scores"]:
            self._score(score)
        self.reviewed += state["reviewed"]
        for name, counts in state["distribution"].items():
            into = self.distribution[name]
            for value, count in counts.items():
                into[value] = into.get(value, 0) + count

    def head(self) -> bytes:
        now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        scored = self.scored
        average = float(round_half_up(self.score_sum / scored, 2)) if scored else None
        percentage = (float(round_half_up(100 * self.reviewed / self.total_pairs, 2))
                      if self.total_pairs else 0.0)
        metadata = {
            "file_name": self.path.name,
            "version": formats.BRIGHTRUN_VERSION,
            "created_date": now,
            "last_updated": now,
            "format_spec": formats.FORMAT_SPEC,
            "target_model": self.target_model,
            "vertical": formats.VERTICAL,
            "total_conversations": self.rows,
            "total_training_pairs": self.total_pairs,
            "quality_summary": {
                "avg_quality_score": average,
                "min_quality_score": self.score_min,
                "max_quality_score": self.score_max,
                "human_reviewed_count": self.reviewed,
                "human_reviewed_percentage": percentage,
            },
            "scaffolding_distribution": {
                name: dict(sorted(counts.items())) for name, counts in self.distribution.items()},
        }
        profile = self.profile if self.profile is not None else self.fallback_profile
        return (b'{"training_file_metadata":' + dumps(metadata)
                + b',"consultant_profile":' + dumps(profile) + b',"conversations":[')

    def tail(self) -> bytes:
        return b"]}\n"


Sink = _Sink | hub.ParquetSink


def open_sink(options: ExportOptions, split: str, consultant_profile: dict[str, Any]) -> Sink:
    if options.hub is not None:
        return hub.ParquetSink(options.hub, split, options.format, options.strip_metadata,
                               options.shard_size_mb or hub.DEFAULT_SHARD_MB)
    path = options.output if split == TRAIN else options.validation_output
    assert path is not None  # ExportOptions.check
    if options.format == "full-json":
        return FullJsonSink(path, options.target_model, consultant_profile)
    return JsonlSink(path, meta=options.meta)


# ---------------------------------------------------------------- rows


def _rows(options: ExportOptions, document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    fmt = options.format
    if fmt == "chat":
        row = formats.chat_row(document, condition=options.condition,
                               strip_metadata=options.strip_metadata)
        if row is not None:
            yield row
    elif fmt == "prompt-completion":
        yield from formats.prompt_completion_rows(document, condition=options.condition,
                                                  strip_metadata=options.strip_metadata)
    elif fmt == "brightrun-v4":
        yield from formats.brightrun_rows(in_contract_order(document))
    else:
        yield formats.full_json_conversation(in_contract_order(document))


def _reviewed_rows(options: ExportOptions, document: dict[str, Any],
                   ) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The rows of a document after the review rules, and the pairs they removed by reason."""
    rules = options.review
    if options.format in ("chat", "full-json"):
        apply = review_rules.for_chat if options.format == "chat" else review_rules.for_pairs
        applied = apply(document, rules)
        rows = [] if applied.document is None else list(_rows(options, applied.document))
        return rows, applied.pairs_removed
    # one row per assistant pair, in pair order: keep the rows of the pairs the rules keep
    assistant = [p for p in formats.pairs_in_order(document) if formats.is_assistant_pair(p)]
    reasons = [rules.drop_reason(pair) for pair in assistant]
    rows = [row for row, reason in zip(_rows(options, document), reasons, strict=True)
            if reason is None]
    return rows, Counter(reason for reason in reasons if reason is not None)


def _skip_reason(options: ExportOptions, document: dict[str, Any]) -> str | None:
    if options.format in ("chat", "prompt-completion"):
        return formats.skip_reason(document)
    if options.format == "brightrun-v4" and not any(
            formats.is_assistant_pair(p) for p in document.get("training_pairs") or []):
        return formats.NO_ASSISTANT_PAIR
    return None


def _pairs_in_row(fmt: str, row: dict[str, Any]) -> int:
    if fmt == "chat":
        return sum(1 for m in row["messages"] if m["role"] == "assistant")
    if fmt == "full-json":
        return sum(1 for p in row["training_pairs"] if formats.is_assistant_pair(p))
    return 1


def _scaffolding_keys(document: dict[str, Any]) -> dict[str, str | None]:
    params = document.get("input_parameters") or {}
    return {"persona": params.get("persona_key"), "arc": params.get("emotional_arc_key"),
            "topic": params.get("training_topic_key")}


# ---------------------------------------------------------------- the run


class ExportRun:
    def __init__(self, options: ExportOptions, counter: TokenCounter | None,
                 members: dict[uuid.UUID, str] | None = None) -> None:
        self.options = options
        self.counter = counter
        # --from-version: these conversations in these splits, whatever filters and
        # sampling would pick now (only a document that is gone leaves one out).
        self.members = members
        self.stream_filters = (DatasetFilters(include_rejected_tier=True)
                               if members is not None else options.filters)
        self.written: list[tuple[uuid.UUID, str]] = []  # (conversation_id, split) in order
        self.report = ExportReport(
            format=options.format, condition=options.condition,
            strip_metadata=options.strip_metadata, filters=options.filters.as_json(),
            sampling=SamplingSummary.of(options.sampling),
            tokens=Lengths() if counter is not None else None,
            tokenizer=str(options.tokenizer) if options.tokenizer else None,
            max_tokens=options.max_tokens, review_rules=options.review.as_json())
        self.plan: SamplePlan | None = None
        self.clusters = ExportClusters()

    def _kept(self, conn: Any) -> Iterator[tuple[Any, dict[str, str | None]]]:
        """The conversations the filters keep, counting the others by reason."""
        for candidate in dataset.select_candidates(conn, self.options.filters):
            self.report.conversations_in_table += 1
            if candidate.excluded_by is not None:
                self.report.removed[candidate.excluded_by] += 1
            elif self.options.dedup and self.clusters.is_duplicate(candidate.conversation_id):
                self.report.removed[NEAR_DUPLICATE] += 1
            else:
                yield candidate.conversation_id, candidate.keys()

    def select(self, conn: Any, want_ids: bool = False) -> list[Any] | None:
        """Selection pass: count removals; the sample's ids (None: all kept, unless
        `want_ids`)."""
        spec = self.options.sampling
        if self.options.dedup or spec.validation_fraction is not None:
            self.clusters = ExportClusters.load(conn)
        if not spec.active and self.options.dedup:
            return sorted(cid for cid, _ in self._kept(conn))
        if self.members is not None:
            self.plan = SamplePlan(side=dict(self.members))
            return sorted(self.members)
        if not spec.active:
            kept = (cid for cid, _ in self._kept(conn))
            if want_ids:
                return list(kept)
            for _ in kept:
                pass
            return None
        # make_plan consumes the stream: only (hash, id, stratum) per conversation is held.
        self.plan = make_plan(self._kept(conn), spec, self.clusters.cluster_of)
        self.report.removed["stratum_key_null"] += self.plan.stratum_key_null
        self.report.removed["not_sampled"] += self.plan.not_sampled
        for key, stratum in self.plan.strata.items():
            self.report.strata[stratum_label(spec.stratify_by, key)] = {
                "available": stratum.available, "picked": stratum.picked,
                "shortfall": stratum.shortfall,
                "validation_conversations": stratum.validation,
                "train_rows": 0, "validation_rows": 0}
        return sorted(self.plan.side)

    def measure(self, row: dict[str, Any]) -> bool:
        """Record the row's lengths; False when it is over --max-tokens and to be dropped."""
        prompt, completion = formats.row_texts(self.options.format, row)
        chars = sum(map(len, prompt)), sum(map(len, completion))
        if self.counter is None or self.report.tokens is None:
            self.report.chars.add(*chars)
            return True
        prompt_tokens, completion_tokens = self.counter.count(prompt), \
            self.counter.count(completion)
        max_tokens = self.options.max_tokens
        if max_tokens is not None and prompt_tokens + completion_tokens > max_tokens:
            self.report.rows_over_max_tokens += 1
            if self.options.drop_over_max:
                # A dropped row is in no length statistic: they describe the file.
                self.report.rows_dropped_over_max_tokens += 1
                return False
        self.report.chars.add(*chars)
        self.report.tokens.add(prompt_tokens, completion_tokens)
        return True

    def label(self, conversation_id: uuid.UUID, document: dict[str, Any]) -> str:
        spec = self.options.sampling
        if self.plan is None or not spec.stratify_by:
            return "all"
        key = self.plan.stratum_of.get(conversation_id)
        if key is None:  # --from-version: the stratum of the document as it is now
            key = stratum_key(_scaffolding_keys(document), spec.stratify_by)
        return stratum_label(spec.stratify_by, key)

    def write(self, conn: Any, ids: list[Any] | None, sinks: dict[str, Sink]) -> None:
        self.write_documents(dataset.stream_documents(conn, self.stream_filters, ids), sinks)
        self.count_strata_rows()

    def write_documents(self, documents: Iterable[tuple[uuid.UUID, int | None, str]],
                        sinks: Mapping[str, Sink]) -> None:
        """Render (conversation_id, enrichment_version, JSON text) in order into the sinks."""
        tallies = {name: SplitTally(path=str(sink.path)) for name, sink in sinks.items()}
        self.report.splits = tallies
        for conversation_id, version, text in documents:
            document = orjson.loads(text)
            reason = _skip_reason(self.options, document)
            if reason is not None:
                self.report.removed[reason] += 1
                continue
            side = self.plan.side[conversation_id] if self.plan else TRAIN
            label = self.label(conversation_id, document)
            tally, sink = tallies[side], sinks[side]
            kept_rows, review_removed = _reviewed_rows(self.options, document)
            self.report.review_pairs_removed.update(review_removed)
            if not kept_rows:
                self.report.removed[review_rules.CONVERSATION_REMOVED] += 1
                continue
            written = 0
            for row in kept_rows:
                if not self.measure(row):
                    continue
                sink.write(row, document)
                written += 1
                tally.pairs += _pairs_in_row(self.options.format, row)
            if not written:
                self.report.removed["over_max_tokens"] += 1
                continue
            tally.rows += written
            tally.rows_per_stratum[label] += written
            tally.add_conversation(_scaffolding_keys(document))
            self.report.enrichment_versions[str(version)] += 1
            self.written.append((conversation_id, side))

    def count_strata_rows(self) -> None:
        for name, tally in self.report.splits.items():
            for label, rows in tally.rows_per_stratum.items():
                self.report.strata.setdefault(label, {})[f"{name}_rows"] = rows


def token_counter(options: ExportOptions) -> TokenCounter | None:
    try:
        return TokenCounter(options.tokenizer) if options.tokenizer else None
    except TokenizerError as exc:
        raise ExportError(str(exc)) from exc
