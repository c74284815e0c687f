"""`reenrich export`: a training file from the stored documents, or again from a dataset version."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from worker.cli.args import (
    Subparsers,
    add_command,
    add_dates,
    check_keys,
    parse_count,
    parse_fields,
    parse_fraction,
    parse_positive,
    parse_quality,
)
from worker.cli.output import write
from worker.dataset.formats import FORMATS
from worker.errors import UsageError

if TYPE_CHECKING:
    from worker.cli.context import Context
    from worker.dataset.export import ExportOptions, Source

# The contract's QualityTier values, written out: building the parser loads no pydantic
# (tests/unit/test_cli.py keeps them equal).
TIERS = ("seed_dataset", "production", "experimental", "rejected")
# Flags that say where a --from-version export writes; every other flag comes from the version.
FROM_VERSION_FLAGS = frozenset({"output", "validation_output", "hub", "shard_size", "license",
                                "name", "report", "card", "from_version", "workers"})


def register(commands: Subparsers) -> None:
    p = add_command(commands, "export", cmd_export, "write a training file from the stored "
                    f"enriched documents ({', '.join(FORMATS)}), with filters, stratified "
                    "sampling, a validation split, a report and a dataset card")
    p.add_argument("--format", choices=FORMATS, help="required, unless --from-version")
    p.add_argument("--output", metavar="PATH", help="the file to write (or --hub DIR)")
    _add_selection(p)
    _add_sampling(p)
    _add_shape(p)
    _add_review_rules(p)
    _add_version_flags(p)  # last: it records every flag's default


def _add_selection(p: argparse.ArgumentParser) -> None:
    """Which conversations: scaffolding keys, tiers, quality, dates, completeness."""
    p.add_argument("--persona", action="append", metavar="KEY", help="keep this persona key "
                   "(repeatable: any of them)")
    p.add_argument("--arc", action="append", metavar="KEY", help="keep this emotional arc key "
                   "(repeatable)")
    p.add_argument("--topic", action="append", metavar="KEY", help="keep this training topic "
                   "key (repeatable)")
    p.add_argument("--tier", action="append", metavar="NAME", choices=list(TIERS),
                   help="keep this quality tier (repeatable)")
    p.add_argument("--min-quality", type=parse_quality, metavar="X",
                   help="keep conversations whose quality score (1..5) is at least X")
    add_dates(p)
    p.add_argument("--require-scaffolding", action="store_true",
                   help="leave out conversations missing any of persona, arc, topic")
    p.add_argument("--exclude-failed", action="store_true",
                   help="leave out conversations with an unresolved enrichment failure")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    """Stratified sampling and the validation split."""
    p.add_argument("--stratify-by", type=parse_fields, metavar="FIELDS",
                   help="persona, arc, topic or a comma list (a joint stratum)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--per-stratum", type=parse_count, metavar="N",
                      help="N conversations per stratum")
    size.add_argument("--balance", action="store_true",
                      help="every stratum down to the smallest")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="sampling seed (default 0); a pick depends only on it and the id")
    p.add_argument("--split-validation", type=parse_fraction, metavar="F",
                   help="about F (0 < F < 1) of each stratum's conversations go to "
                        "--validation-output")
    p.add_argument("--validation-output", metavar="PATH", help="the validation file")


def _add_shape(p: argparse.ArgumentParser) -> None:
    """What a row holds, the report, token counts and the card."""
    p.add_argument("--condition", choices=["none", "system"], default="none",
                   help="system: end the system message with persona, arc and topic")
    p.add_argument("--strip-metadata", action="store_true",
                   help="no metadata columns (for services that refuse unknown keys)")
    p.add_argument("--meta", action="store_true", help="brightrun-v4: a first _meta line")
    p.add_argument("--target-model", metavar="NAME", help="full-json: the target model")
    p.add_argument("--report", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="a local tokenizer.json to count tokens with (nothing is downloaded)")
    p.add_argument("--max-tokens", type=parse_count, metavar="N",
                   help="report rows longer than N tokens (needs --tokenizer)")
    p.add_argument("--drop-over-max", action="store_true",
                   help="drop the rows over --max-tokens instead of only reporting them")
    p.add_argument("--card", metavar="PATH", help="write a dataset card (Markdown, YAML header)")


def _add_review_rules(p: argparse.ArgumentParser) -> None:
    """Which reviewed pairs, and near-duplicates."""
    p.add_argument("--include-rejected", action="store_true",
                   help="keep pairs a reviewer rejected (default: left out; chat cuts the "
                        "conversation before its first rejected turn)")
    p.add_argument("--approved-only", action="store_true",
                   help="only approved pairs (chat: conversations whose assistant turns all are)")
    p.add_argument("--seed-examples-only", action="store_true",
                   help="only pairs marked as seed examples")
    p.add_argument("--allow-empty", action="store_true",
                   help="write an empty file when nothing is selected (default: fail, naming "
                        "what removed everything)")
    p.add_argument("--dedup", action="store_true", help="keep only each near-duplicate "
                   "cluster's representative (clusters of the last `reenrich dedup`)")
    p.add_argument("--workers", type=parse_count, default=1, metavar="N",
                   help="processes writing key-range slices in parallel, each on its own "
                        "connection (default 1); the same files (--hub: the rows in N or more "
                        "shards)")


def _add_version_flags(p: argparse.ArgumentParser) -> None:
    """The Hub folder, the rejected tier, and dataset versions."""
    p.add_argument("--include-rejected-tier", action="store_true",
                   help="keep conversations of quality tier rejected (left out by default)")
    p.add_argument("--hub", metavar="DIR", help="chat, prompt-completion: write a Hugging Face "
                   "dataset folder (DIR/README.md, DIR/data/<split>-NNNNN-of-NNNNN.parquet)")
    p.add_argument("--shard-size", type=parse_positive, metavar="MB",
                   help="--hub: at most MB megabytes per Parquet shard (default 500)")
    p.add_argument("--license", metavar="ID", help="--hub: the card's license (default other)")
    p.add_argument("--name", type=parse_version_name, metavar="NAME",
                   help="the dataset version's name (default: generated, printed)")
    p.add_argument("--from-version", metavar="NAME", help="the members, splits and options of "
                   "this dataset version, from the current documents")
    # What each flag is when not given: --from-version refuses any other flag that is.
    p.set_defaults(export_defaults={a.dest: a.default for a in p._actions
                                    if a.dest != "help" and a.default != argparse.SUPPRESS})


def parse_version_name(value: str) -> str:
    from worker.dataset.versions import check_name

    try:
        return check_name(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    from worker.config import load_enrichment_config
    from worker.dataset.export import EmptyExport, export_command

    source = None
    if args.from_version:
        options, source = _from_version(args, ctx)
    else:
        options = _export_options(args)
    options.check()  # flags (exit 2) before connecting: a wrong flag needs no database
    engine = ctx.engine()
    check_keys(engine, persona=options.filters.personas, arc=options.filters.arcs,
               topic=options.filters.topics)
    try:
        return export_command(
            engine, options,
            consultant_profile=load_enrichment_config(ctx.settings).consultant_profile,
            report_path=_path(args.report), card_path=_path(args.card), out=write,
            name=args.name, source=source)
    except EmptyExport as exc:
        raise EmptyExport(f"{exc} (database: {ctx.database()})") from exc


def _export_options(args: argparse.Namespace) -> ExportOptions:
    from worker.dataset.export import ExportOptions
    from worker.dataset.review_rules import ReviewRules
    from worker.dataset.sampling import SamplingSpec
    from worker.db.dataset import DatasetFilters

    if args.format is None:
        raise UsageError("--format is required (or --from-version NAME)")
    return ExportOptions(
        format=args.format, output=_path(args.output),
        validation_output=_path(args.validation_output),
        filters=DatasetFilters(
            personas=tuple(args.persona or ()), arcs=tuple(args.arc or ()),
            topics=tuple(args.topic or ()), tiers=tuple(args.tier or ()),
            min_quality=args.min_quality, since=args.since, until=args.until,
            require_scaffolding=args.require_scaffolding, exclude_failed=args.exclude_failed,
            include_rejected_tier=args.include_rejected_tier),
        sampling=SamplingSpec(stratify_by=args.stratify_by or (), per_stratum=args.per_stratum,
                              balance=args.balance, seed=args.seed,
                              validation_fraction=args.split_validation),
        condition=args.condition, strip_metadata=args.strip_metadata, meta=args.meta,
        target_model=args.target_model, tokenizer=_path(args.tokenizer),
        max_tokens=args.max_tokens, drop_over_max=args.drop_over_max, hub=_path(args.hub),
        shard_size_mb=args.shard_size, license=args.license, allow_empty=args.allow_empty,
        dedup=args.dedup, workers=args.workers,
        review=ReviewRules(include_rejected=args.include_rejected,
                           approved_only=args.approved_only,
                           seed_examples_only=args.seed_examples_only))


def _from_version(args: argparse.Namespace, ctx: Context) -> tuple[ExportOptions, Source]:
    from worker.dataset.export import from_version_options, load_source

    given = sorted(f"--{dest.replace('_', '-')}" for dest, default in args.export_defaults.items()
                   if dest not in FROM_VERSION_FLAGS and getattr(args, dest, default) != default)
    if given:
        raise UsageError(f"--from-version replays the options recorded in the version: leave "
                         f"out {', '.join(given)} (see `reenrich datasets show "
                         f"{args.from_version}`)")
    source = load_source(ctx.engine(), args.from_version)
    options = from_version_options(
        source.version, output=_path(args.output),
        validation_output=_path(args.validation_output),
        hub_dir=_path(args.hub), shard_size_mb=args.shard_size, license_id=args.license,
        workers=args.workers)
    return options, source
