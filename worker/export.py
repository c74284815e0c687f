"""`reenrich export`: stored enriched documents -> a file a trainer loads (`export-formats.md`).

Two passes inside one read-only snapshot:
1. selection: one light row per conversation (id, scaffolding keys, the
   first filter that leaves it out), counted by reason; when sampling or
   splitting, the kept (id, keys) go to `sampling.make_plan`;
2. stream: the kept documents through a server-side cursor, ordered by
   created_at then conversation_id, turned into rows (`formats`) and
   written as they come.
Files are written beside their final path and renamed into place when
complete, so a failed export never leaves a half-written file behind.
Formats whose head depends on the whole body (`brightrun-v4 --meta`,
`full-json`) spool the body to a temporary file first: memory stays flat.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from sqlalchemy import Engine

from worker import formats
from worker.contract import dumps, in_contract_order
from worker.db import dataset
from worker.db.dataset import DatasetFilters
from worker.dedup_export import NEAR_DUPLICATE, ExportClusters
from worker.enrich import round_half_up
from worker.export_report import (
    ExportReport,
    Lengths,
    SplitTally,
    TokenCounter,
    TokenizerError,
    print_short,
)
from worker.sampling import SamplePlan, SamplingError, SamplingSpec, make_plan, stratum_label

log = structlog.get_logger("reenrich.export")

TRAIN, VALIDATION = "train", "validation"


class ExportError(Exception):
    """The export cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class ExportOptions:
    format: str
    output: Path
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
    dedup: bool = False  # keep only each near-duplicate cluster's representative

    def check(self) -> None:
        fmt = self.format
        if fmt not in formats.FORMATS:
            raise ExportError(f"unknown format {fmt!r}: use one of {', '.join(formats.FORMATS)}")
        if self.condition not in ("none", "system"):
            raise ExportError(f"--condition is none or system, got {self.condition!r}")
        messages = fmt in ("chat", "prompt-completion")
        if self.condition != "none" and not messages:
            raise ExportError("--condition applies to chat and prompt-completion only")
        if self.strip_metadata and not messages:
            raise ExportError("--strip-metadata applies to chat and prompt-completion only "
                              f"({fmt} writes the stored pairs as they are)")
        if self.meta and fmt != "brightrun-v4":
            raise ExportError("--meta applies to brightrun-v4 only")
        if self.target_model is not None and fmt != "full-json":
            raise ExportError("--target-model applies to full-json only")
        try:
            self.sampling.check()
        except SamplingError as exc:
            raise ExportError(str(exc)) from exc
        split, where = self.sampling.validation_fraction is not None, self.validation_output
        if split and where is None:
            raise ExportError("--split-validation needs --validation-output PATH")
        if where is not None and not split:
            raise ExportError("--validation-output needs --split-validation F")
        if where is not None and where.resolve() == self.output.resolve():
            raise ExportError("--validation-output must differ from --output")
        if self.max_tokens is not None and self.tokenizer is None:
            raise ExportError("--max-tokens needs --tokenizer PATH (a local tokenizer.json)")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ExportError("--max-tokens must be at least 1")
        if self.drop_over_max and self.max_tokens is None:
            raise ExportError("--drop-over-max needs --max-tokens N")

    def sampling_json(self) -> dict[str, Any]:
        spec = self.sampling
        return {"stratify_by": list(spec.stratify_by), "per_stratum": spec.per_stratum,
                "balance": spec.balance, "seed": spec.seed,
                "split_validation": spec.validation_fraction}


# ---------------------------------------------------------------- the sinks


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class _Sink:
    """One output file: written beside its path, renamed into place on close."""

    def __init__(self, path: Path, spool: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._tmp = _temp_beside(path)
        self._out: IO[bytes] = self._tmp.open("wb")
        # The body goes to a spool file when the head can only be written at the end.
        self._body: IO[bytes] = (tempfile.TemporaryFile(dir=path.parent)  # noqa: SIM115
                                 if spool else self._out)
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


class JsonlSink(_Sink):
    """One JSON value per line; with `meta`, a brightrun-v4 `_meta` line first."""

    def __init__(self, path: Path, meta: bool = False) -> None:
        super().__init__(path, spool=meta)

    def write(self, row: dict[str, Any], document: dict[str, Any]) -> None:
        self._body.write(dumps(row) + b"\n")
        self.rows += 1

    def head(self) -> bytes:
        meta = {"file_name": self.path.name, "total_pairs": self.rows,
                "version": formats.BRIGHTRUN_VERSION}
        return dumps({"_meta": meta}) + b"\n"


class FullJsonSink(_Sink):
    """The full training file: metadata (known at the end), profile, conversations."""

    def __init__(self, path: Path, target_model: str | None,
                 consultant_profile: dict[str, Any]) -> None:
        super().__init__(path, spool=True)
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
                self.score_sum += score
                self.scored += 1
                self.score_min = score if self.score_min is None else min(self.score_min, score)
                self.score_max = score if self.score_max is None else max(self.score_max, score)
            if training.get("human_reviewed") is True:
                self.reviewed += 1
        scaffolding = row["conversation_metadata"]["scaffolding"]
        for name, key in (("personas", "persona_key"), ("emotional_arcs", "emotional_arc_key"),
                          ("training_topics", "training_topic_key")):
            value = scaffolding.get(key)
            if value is not None:
                counts = self.distribution[name]
                counts[value] = counts.get(value, 0) + 1

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


def _open_sink(options: ExportOptions, path: Path, consultant_profile: dict[str, Any]) -> _Sink:
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


class _Run:
    def __init__(self, options: ExportOptions, counter: TokenCounter | None) -> None:
        self.options = options
        self.counter = counter
        self.report = ExportReport(
            format=options.format, condition=options.condition,
            strip_metadata=options.strip_metadata, filters=options.filters.as_json(),
            sampling=options.sampling_json(),
            tokens=Lengths() if counter is not None else None,
            tokenizer=str(options.tokenizer) if options.tokenizer else None,
            max_tokens=options.max_tokens)
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

    def select(self, conn: Any) -> list[Any] | None:
        """Selection pass: count removals; the sample's ids (None: all kept)."""
        spec = self.options.sampling
        if self.options.dedup or spec.validation_fraction is not None:
            self.clusters = ExportClusters.load(conn)
        if not spec.active and self.options.dedup:
            return sorted(cid for cid, _ in self._kept(conn))
        if not spec.active:
            for _ in self._kept(conn):
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
        self.report.chars.add(sum(map(len, prompt)), sum(map(len, completion)))
        if self.counter is None or self.report.tokens is None:
            return True
        prompt_tokens, completion_tokens = self.counter.count(prompt), \
            self.counter.count(completion)
        max_tokens = self.options.max_tokens
        if max_tokens is not None and prompt_tokens + completion_tokens > max_tokens:
            self.report.rows_over_max_tokens += 1
            if self.options.drop_over_max:
                self.report.rows_dropped_over_max_tokens += 1
                return False
        self.report.tokens.add(prompt_tokens, completion_tokens)
        return True

    def write(self, conn: Any, ids: list[Any] | None, sinks: dict[str, _Sink]) -> None:
        spec = self.options.sampling
        tallies = {name: SplitTally(path=str(sink.path)) for name, sink in sinks.items()}
        self.report.splits = tallies
        for conversation_id, version, text in dataset.stream_documents(
                conn, self.options.filters, ids):
            document = orjson.loads(text)
            reason = _skip_reason(self.options, document)
            if reason is not None:
                self.report.removed[reason] += 1
                continue
            side = self.plan.side[conversation_id] if self.plan else TRAIN
            label = (stratum_label(spec.stratify_by, self.plan.stratum_of[conversation_id])
                     if self.plan else "all")
            tally, sink = tallies[side], sinks[side]
            written = 0
            for row in _rows(self.options, document):
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
        for name, tally in tallies.items():
            for label, rows in tally.rows_per_stratum.items():
                self.report.strata.setdefault(label, {})[f"{name}_rows"] = rows


def run_export(engine: Engine, options: ExportOptions, *,
               consultant_profile: dict[str, Any]) -> dict[str, Any]:
    """Write the export (and its validation file); the report as JSON-ready dict."""
    options.check()
    try:
        counter = TokenCounter(options.tokenizer) if options.tokenizer else None
    except TokenizerError as exc:
        raise ExportError(str(exc)) from exc
    run = _Run(options, counter)
    with engine.connect() as conn, conn.begin():
        dataset.begin_snapshot(conn)
        ids = run.select(conn)
        log.info("export.selected", conversations=run.report.conversations_in_table,
                 removed=dict(run.report.removed), sampled=None if ids is None else len(ids))
        sinks: dict[str, _Sink] = {TRAIN: _open_sink(options, options.output,
                                                     consultant_profile)}
        try:
            if options.validation_output is not None:
                sinks[VALIDATION] = _open_sink(options, options.validation_output,
                                               consultant_profile)
            run.write(conn, ids, sinks)
            for sink in sinks.values():
                sink.close()
        except BaseException:
            for sink in sinks.values():
                sink.abort()
            raise
    report = run.report.as_json()
    report["dedup"] = run.clusters.report(options.dedup)
    log.info("export.done", format=options.format, output=str(options.output),
             rows=report["rows"], conversations=report["conversations"], pairs=report["pairs"])
    return report


def export_command(engine: Engine, options: ExportOptions, *, consultant_profile: dict[str, Any],
                   report_path: Path | None, card_path: Path | None,
                   out: Callable[[str], None]) -> int:
    """`reenrich export`: write the files, the report and the card; print the short report."""
    from worker.card import render_card

    report = run_export(engine, options, consultant_profile=consultant_profile)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if card_path is not None:
        card_path.parent.mkdir(parents=True, exist_ok=True)
        card_path.write_text(render_card(report, card_path), encoding="utf-8")
    print_short(report, out)
    return 0
