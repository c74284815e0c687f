"""`reenrich export`: stored enriched documents -> a file a trainer loads (`export-formats.md`).

Two passes inside one read-only snapshot:
1. selection: one light row per conversation (id, scaffolding keys, the
   first filter that leaves it out), counted by reason; when sampling or
   splitting, the kept (id, keys) go to `sampling.make_plan`;
2. stream: the kept documents through a server-side cursor, ordered by
   created_at then conversation_id, turned into rows (`formats`) and
   written as they come.
Files are written beside their final path and renamed into place when
complete, so a failed export never leaves a half-written file behind. The
paths are checked before anything is read (a directory, a folder that cannot
be created or written), and an export that selects no rows writes nothing and
fails, naming what removed everything, unless `allow_empty`.
Formats whose head depends on the whole body (`brightrun-v4 --meta`,
`full-json`) spool the body to a temporary file first: memory stays flat.
`--hub DIR` writes the same rows as Parquet shards (`worker.dataset.hub`).
`--workers N` runs the stream pass in N processes, over contiguous key ranges
of what the selection kept, and puts their parts together into the same files
(`worker.dataset.export_slices`).

Every export that writes files is then recorded as a dataset version
(`worker.dataset.versions`, `worker.db.versions`): its options, counts, files with
their SHA-256, and its members with the `enriched_hash` read in the same
snapshot the documents came from. `--from-version` replays a version: its
members in their splits take the place of the filters and the sample.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy import Engine

from worker.dataset import hub, versions
from worker.dataset.card import relative_path, render_card
from worker.dataset.export_files import (
    REMOVAL_HINTS,
    TRAIN,
    VALIDATION,
    ExportRun,
    Sink,
    open_sink,
    temp_beside,
    token_counter,
)
from worker.dataset.export_files import (
    EmptyExport as EmptyExport,
)
from worker.dataset.export_files import (
    ExportError as ExportError,
)
from worker.dataset.export_files import (
    ExportOptions as ExportOptions,
)
from worker.dataset.export_files import (
    ExportUsageError as ExportUsageError,
)
from worker.dataset.export_files import (
    check_writable as check_writable,
)
from worker.dataset.export_report import (
    DatasetVersionInfo,
    ExportReport,
    ExportSummary,
    FromVersion,
    print_short,
)
from worker.db import dataset
from worker.db import versions as db_versions
from worker.enrichment.enrich import ENRICHMENT_VERSION

log = structlog.get_logger("reenrich.export")



@dataclass(frozen=True)
class Source:
    """The version a --from-version export rebuilds: its record and its members' splits."""

    version: db_versions.StoredVersion
    members: dict[uuid.UUID, str]


def _version_name(engine: Engine, options: ExportOptions, name: str | None) -> str:
    name = versions.check_name(name) if name is not None else versions.generated_name(
        options.format)
    with engine.connect() as conn:
        if db_versions.name_taken(conn, name):
            raise ExportError(f"a dataset version named {name!r} already exists: choose "
                              "another --name (see `reenrich datasets`)")
    return name


def _write_files(engine: Engine, run: ExportRun, consultant_profile: dict[str, Any],
                 source: Source | None) -> tuple[dict[str, Sink], dict[uuid.UUID, str | None],
                                                 dict[db_versions.MemberState, list[uuid.UUID]]]:
    """The snapshot: select, stream into the sinks, and read the members' hashes."""
    options = run.options
    if options.workers > 1:
        from worker.dataset import export_slices

        export_slices.start_processes()
    with engine.connect() as conn, conn.begin():
        dataset.begin_snapshot(conn)
        ids = run.select(conn, want_ids=options.workers > 1)
        log.info("export.selected", conversations=run.report.conversations_in_table,
                 removed=dict(run.report.removed), sampled=None if ids is None else len(ids))
        sinks: dict[str, Sink] = {TRAIN: open_sink(options, TRAIN, consultant_profile)}
        try:
            if options.sampling.validation_fraction is not None:
                sinks[VALIDATION] = open_sink(options, VALIDATION, consultant_profile)
            if options.workers > 1:
                assert ids is not None  # select(want_ids=True)
                export_slices.write_slices(conn, run, ids, sinks)
            else:
                run.write(conn, ids, sinks)
            if not options.allow_empty and not sum(s.rows for s in sinks.values()):
                raise EmptyExport(_nothing_selected(run.report))
            for sink in sinks.values():
                sink.close()
        except BaseException:
            for sink in sinks.values():
                sink.abort()
            raise
        hashes = db_versions.member_hashes(conn, [cid for cid, _ in run.written])
        states = (db_versions.member_states(conn, source.version.version_id)
                  if source is not None else {})
    return sinks, hashes, states


def _source_report(run: ExportRun, source: Source,
                   states: dict[db_versions.MemberState, list[uuid.UUID]]) -> FromVersion:
    State = db_versions.MemberState
    run.report.conversations_in_table = len(source.members)
    run.report.removed["not_enriched"] += len(states[State.NOT_ENRICHED])
    run.report.removed["member_missing"] += len(states[State.MISSING])
    return FromVersion(name=source.version.name, members=len(source.members),
                       written=len(run.written),
                       changed=tuple(str(c) for c in states[State.CHANGED]),
                       missing=tuple(str(c) for c in states[State.MISSING]),
                       not_enriched=tuple(str(c) for c in states[State.NOT_ENRICHED]))


def _write_card(text_: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_beside(path)
    temp.write_text(text_, encoding="utf-8")
    os.replace(temp, path)


def _files(options: ExportOptions, sinks: dict[str, Sink],
           cards: list[Path]) -> list[versions.FileRecord]:
    base = options.hub
    records = []
    for split, sink in sinks.items():
        paths = sink.shards if isinstance(sink, hub.ParquetSink) else [sink.path]
        records += [versions.file_record(p, split, base) for p in paths]
    return records + [versions.file_record(card, None, base) for card in cards]


def check_card_place(options: ExportOptions, card: Path | None) -> None:
    """Refuse a card its data files are not under (its paths would need `../`)."""
    if card is None:
        return
    if options.hub is not None:
        raise ExportUsageError("--hub DIR writes its card as DIR/README.md: leave out --card")
    for path in (options.output, options.validation_output):
        if path is not None and relative_path(str(path), card).startswith("../"):
            raise ExportUsageError(f"--card {card} is not in the folder of {path}: a Hub "
                                   "repository cannot reach ../ paths; put the card in that "
                                   "folder (or one above it), or use --hub DIR")


def run_export(engine: Engine, options: ExportOptions, *,
               consultant_profile: dict[str, Any], card_path: Path | None = None,
               name: str | None = None, source: Source | None = None) -> ExportSummary:
    """Write the export (its validation file, its card), record it as a dataset version;
    the report (`as_dict()`: its JSON)."""
    options.check()
    check_card_place(options, card_path)
    name = _version_name(engine, options, name)  # a taken name: refused before any file
    options.check_paths()
    counter = token_counter(options)
    run = ExportRun(options, counter, source.members if source is not None else None)
    sinks, hashes, states = _write_files(engine, run, consultant_profile, source)
    from_version = _source_report(run, source, states) if source is not None else None
    _warn_empty_validation(run.report)
    dedup = run.clusters.report(options.dedup)
    cards = [card_path] if card_path is not None else []
    split_info = None
    if options.hub is not None:
        parquet = {k: v for k, v in sinks.items() if isinstance(v, hub.ParquetSink)}
        hub.remove_stale_shards(options.hub, [p for s in parquet.values() for p in s.shards])
        split_info = hub.split_info(parquet, options.license or "other")
        cards = [options.hub / "README.md"]
    report = run.report.finish(
        dedup=dedup, meta=options.meta, from_version=from_version, hub=split_info,
        dataset_version=DatasetVersionInfo(name, len(run.written), ENRICHMENT_VERSION))
    for card in cards:
        _write_card(render_card(report, card), card)
    files = _files(options, sinks, cards)
    _record(engine, options, report, name, files, [
        (cid, split, hashes.get(cid)) for cid, split in run.written], source)
    report = report.with_files(files)
    log.info("export.done", format=options.format, output=str(options.output or options.hub),
             rows=report.rows, conversations=report.conversations, pairs=report.pairs,
             dataset_version=name)
    return report


def _record(engine: Engine, options: ExportOptions, report: ExportSummary, name: str,
            files: list[versions.FileRecord], members: list[tuple[uuid.UUID, str, str | None]],
            source: Source | None) -> None:
    splits = [db_versions.SplitCounts(split, s.rows, s.conversations, s.pairs)
              for split, s in report.splits.items()]
    record = db_versions.NewVersion(
        name=name, format=options.format, contract_version=ENRICHMENT_VERSION,
        options=versions.to_json(options), reenrich_version=versions.reenrich_version(),
        from_version=source.version.name if source is not None else None,
        splits=splits, files=files, members=members)
    try:
        with engine.begin() as conn:
            db_versions.insert_version(conn, record)
    except versions.VersionError as exc:
        raise ExportError(f"the files are written but not recorded: {exc}") from exc
    log.info("dataset_version.recorded", name=name, members=len(members), files=len(files))


def from_version_options(source: db_versions.StoredVersion, *, output: Path | None,
                         validation_output: Path | None, hub_dir: Path | None,
                         shard_size_mb: float | None, license_id: str | None,
                         workers: int = 1) -> ExportOptions:
    """The recorded options of `source`, written where (and by as many workers as) this
    export says."""
    recorded = {k: v for k, v in source.options.items()
                if k not in versions.PLACEMENT_FIELDS}
    options: ExportOptions = versions.from_json(ExportOptions, {
        **recorded, "output": output, "validation_output": validation_output, "hub": hub_dir,
        "shard_size_mb": shard_size_mb, "license": license_id, "workers": workers})
    split = options.sampling.validation_fraction is not None
    if split and hub_dir is None and validation_output is None:
        raise ExportError(f"dataset version {source.name} has a validation split: give "
                          "--validation-output PATH (or --hub DIR)")
    if not split and validation_output is not None:
        raise ExportError(f"dataset version {source.name} has no validation split: leave out "
                          "--validation-output")
    return options


def load_source(engine: Engine, name: str) -> Source:
    with engine.connect() as conn:
        try:
            version = db_versions.get_version(conn, name)
        except versions.VersionError as exc:
            raise ExportError(str(exc)) from exc
        return Source(version, db_versions.members(conn, version.version_id))


def _nothing_selected(report: ExportReport) -> str:
    """Why an export selected no row: each removal, with the flag or step to look at."""
    total = report.conversations_in_table
    if total == 0:
        return ("nothing to export: the database has no conversations (import some with "
                "`reenrich import FILE`); no file was written (--allow-empty writes an empty one)")
    removed = report.removed_in_order()
    reasons = ", ".join(f"{reason} {count}" + (f" ({REMOVAL_HINTS[reason]})"
                                                if reason in REMOVAL_HINTS else "")
                        for reason, count in removed.items())
    return (f"nothing to export: of {total} conversation(s) none is left; removed by "
            f"{reasons or 'nothing'}; no file was written (--allow-empty writes an empty one)")


def _warn_empty_validation(report: ExportReport) -> None:
    """An empty validation split is a warning naming the strata too small to split."""
    split = report.splits.get(VALIDATION)
    if split is None or split.rows or not report.total("rows"):
        return
    small = [f"{label} ({stratum.get('picked', 0)})" for label, stratum in report.strata.items()
             if not stratum.get("validation_rows")]
    log.warning("export.validation_empty", path=split.path, strata=small[:20],
                more_strata=max(0, len(small) - 20),
                message="the validation split is empty: a stratum needs at least 2 "
                        "conversations to give one to validation; these have fewer (or "
                        "lost theirs to filters): " + ", ".join(small[:20]))


def export_command(engine: Engine, options: ExportOptions, *, consultant_profile: dict[str, Any],
                   report_path: Path | None, card_path: Path | None,
                   out: Callable[[str], None], name: str | None = None,
                   source: Source | None = None) -> int:
    """`reenrich export`: write the files, the card, the report; print the short report."""
    name = _version_name(engine, options, name)  # a taken name: refused before any file
    options.check_paths({"--report": report_path, "--card": card_path})
    report = run_export(engine, options, consultant_profile=consultant_profile,
                        card_path=card_path, name=name, source=source)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_bytes(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2)
                                + b"\n")
    print_short(report, out)
    return 0
