"""`reenrich review sheet|import|set|list`: the human review loop (`reviews.md`).

A recorded review is an input of its conversation's document: its insert
marks the conversation for `follow` (trigger), a backfill sees the input
hash change, and `import` / `set` re-enrich the reviewed conversations at
once through the same path as `reenrich enrich` (`--no-enrich` leaves that
to follow or backfill), so an export right after an import sees the reviews.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from worker.cli.args import (
    Subparsers,
    add_command,
    parse_count,
    parse_count_or_zero,
    parse_fields,
    parse_uuid,
)
from worker.cli.output import Column, Out, clip, flat, table, write
from worker.dataset.reviews import (
    STATUSES,
    BadRow,
    ReviewInput,
    Selection,
    SheetRow,
    check_set,
    read_filled,
    write_sheet,
)
from worker.dataset.sampling import SamplingError, SamplingSpec
from worker.errors import ReenrichError, UsageError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from worker.cli.context import Context
    from worker.config import EnrichmentConfig
    from worker.db import reviews as db

log = structlog.get_logger("reenrich.review")


class ReviewError(ReenrichError):
    """A review cannot be recorded as asked (the message says what to do)."""


# ------------------------------------------------------------------ sheet


@dataclass
class SheetSummary:
    path: Path
    pairs: int = 0
    conversations: int = 0
    strata: int = 0
    shortfall: dict[str, int] = field(default_factory=dict)


def make_sheet(engine: Engine, path: Path, selection: Selection,
               spec: SamplingSpec) -> SheetSummary:
    """Write the pairs to review; stratified like `export` (same seed, same conversations)."""
    from worker.dataset.sampling import make_plan
    from worker.db import dataset
    from worker.db import reviews as db

    summary = SheetSummary(path)
    seen: set[uuid.UUID] = set()
    with engine.connect() as conn, conn.begin():
        dataset.begin_snapshot(conn)
        ids: list[uuid.UUID] | None = None
        if spec.active:
            candidates = ((c.conversation_id, c.keys) for c in db.sheet_candidates(conn)
                          if c.counts[selection.value] > 0)
            plan = make_plan(candidates, spec)
            ids = sorted(plan.side)
            summary.strata = len(plan.strata)
            summary.shortfall = {"|".join(p or "" for p in key): s.shortfall
                                 for key, s in plan.strata.items() if s.shortfall}

        def rows() -> Iterator[SheetRow]:
            for row in db.sheet_rows(conn, selection.value, ids):
                seen.add(row.conversation_id)
                yield SheetRow(row.conversation_id, row.turn_number, row.persona_archetype,
                               row.emotional_arc_key, row.training_topic_key,
                               row.quality_tier, row.current_user_input, row.target_response,
                               row.content_sha256)

        summary.pairs = write_sheet(path, rows())
    summary.conversations = len(seen)
    log.info("review.sheet_written", path=str(path), pairs=summary.pairs,
             conversations=summary.conversations, selection=selection.value)
    return summary


# ------------------------------------------------------------------ record


@dataclass
class ImportSummary:
    recorded: int = 0
    stale: list[ReviewInput] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    skipped: int = 0
    conversations: list[uuid.UUID] = field(default_factory=list)


def _unknown(review: ReviewInput) -> BadRow:
    return BadRow(review.line, f"unknown pair: conversation {review.conversation_id} has no "
                               f"enriched assistant pair at turn {review.turn_number}")


def import_sheet(engine: Engine, path: Path) -> ImportSummary:
    """Record a filled sheet's good rows (one transaction); report stale and bad ones."""
    from worker.db import reviews as db

    sheet = read_filled(path)
    summary = ImportSummary(bad=list(sheet.bad), skipped=sheet.skipped)
    good: list[ReviewInput] = []
    with engine.begin() as conn:
        hashes = db.pair_hashes(conn, [r.conversation_id for r in sheet.reviews])
        for review in sheet.reviews:
            current = hashes.get((review.conversation_id, review.turn_number))
            if current is None:
                summary.bad.append(_unknown(review))
                continue
            good.append(review)
            if current != review.content_sha256:
                summary.stale.append(review)  # the reviewer read another text: stale at once
        summary.recorded = db.record(conn, good, source=f"import:{path.name}")
    summary.bad.sort(key=lambda bad: bad.line)
    summary.conversations = list(dict.fromkeys(r.conversation_id for r in good))
    log.info("review.imported", path=str(path), recorded=summary.recorded,
             stale=len(summary.stale), bad=len(summary.bad), skipped=summary.skipped)
    return summary


def set_review(engine: Engine, review: ReviewInput) -> None:
    """Record one review of the pair's current text (its hash is taken from the document)."""
    from worker.db import reviews as db

    with engine.begin() as conn:
        current = db.pair_hashes(conn, [review.conversation_id]).get(
            (review.conversation_id, review.turn_number))
        if current is None:
            raise ReviewError(f"conversation {review.conversation_id} has no enriched "
                              f"assistant pair at turn {review.turn_number}: see "
                              f"`reenrich show {review.conversation_id}`")
        db.record(conn, [_with_sha(review, current)], source="set")
    log.info("review.recorded", conversation_id=str(review.conversation_id),
             turn_number=review.turn_number, status=review.status.value)


def _with_sha(review: ReviewInput, sha: str) -> ReviewInput:
    return ReviewInput(review.line, review.conversation_id, review.turn_number, review.status,
                       review.reviewer, review.notes, review.use_as_seed_example,
                       review.generate_variations_count, sha, review.reviewed_at)


def _reenrich(engine: Engine, ids: Sequence[uuid.UUID], config: EnrichmentConfig,
              out: Out) -> None:
    from worker.api import enrich_conversations

    if not ids:
        return
    results = enrich_conversations(engine, ids, config=config)
    done = sum(1 for r in results if r.ok)
    out(f"re-enriched {done} reviewed conversation(s)")
    for result in results:
        if not result.ok:
            out(f"  {result.line()} (the review is recorded; see `reenrich failures`)")


# ------------------------------------------------------------------ list


def review_json(review: db.StoredReview) -> dict[str, Any]:
    return {
        "conversation_id": str(review.conversation_id),
        "turn_number": review.turn_number,
        "status": review.status,
        "reviewer": review.reviewer,
        "notes": review.notes,
        "use_as_seed_example": review.use_as_seed_example,
        "generate_variations_count": review.generate_variations_count,
        "reviewed_at": review.reviewed_at.isoformat(),
        "content_sha256": review.content_sha256,
        "stale": review.stale,
        "current": review.superseded_at is None,
        "source": review.source,
        "recorded_at": review.recorded_at.isoformat(),
        "superseded_at": review.superseded_at.isoformat() if review.superseded_at else None,
    }


def _state(review: db.StoredReview) -> str:
    return "stale" if review.stale else "current" if review.superseded_at is None else "history"


REVIEW_COLUMNS: tuple[Column[db.StoredReview], ...] = (
    Column("CONVERSATION_ID", lambda r: r.conversation_id),
    Column("TURN", lambda r: r.turn_number),
    Column("STATUS", lambda r: r.status),
    Column("REVIEWER", lambda r: r.reviewer),
    Column("STATE", _state),
    Column("REVIEWED_AT", lambda r: r.reviewed_at.isoformat(timespec="seconds")),
    Column("NOTES", lambda r: clip(flat(r.notes), 60)),
)


def print_list(items: list[db.StoredReview], as_json: bool, out: Out) -> None:
    if as_json:
        out(json.dumps([review_json(r) for r in items], ensure_ascii=False))
        return
    if not items:
        out("no reviews match")
        return
    table(items, REVIEW_COLUMNS, out)


# ------------------------------------------------------------------ CLI


def register(commands: Subparsers) -> None:
    """`review` and its subcommands (their --log-level is left to the settings, as it was)."""
    review = add_command(commands, "review", None, "human review of training pairs: sheet, "
                         "import, set, list", description="human review of training pairs",
                         checked_level=False)
    actions = review.add_subparsers(dest="review_command", required=True, metavar="COMMAND")
    _add_sheet(actions)
    p = add_command(actions, "import", cmd_import, "record a filled sheet (CSV or JSON Lines); "
                    "rows without a status are skipped; exit 1 if any row is bad (the good "
                    "ones are recorded)", checked_level=False)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--no-enrich", action="store_true",
                   help="record only; leave re-enrichment to follow or backfill")
    _add_set(actions)
    p = add_command(actions, "list", cmd_list, "current reviews (text or --json), each marked "
                    "stale when its pair's text changed since", checked_level=False)
    p.add_argument("--stale", action="store_true", help="only stale reviews")
    p.add_argument("--status", choices=list(STATUSES))
    p.add_argument("--reviewer", metavar="NAME")
    p.add_argument("--history", action="store_true", help="also the superseded reviews")
    p.add_argument("--json", action="store_true", help="a JSON array of objects")


def _add_sheet(actions: Subparsers) -> None:
    p = add_command(actions, "sheet", cmd_sheet, "write a sheet of assistant pairs to review "
                    "(CSV by the .csv suffix, else JSON Lines)", checked_level=False)
    p.add_argument("--output", required=True, metavar="PATH")
    p.add_argument("--select", choices=[s.value for s in Selection], default="unreviewed",
                   help="unreviewed (default): never reviewed; stale: the text changed since "
                        "its review; all")
    p.add_argument("--stratify-by", type=parse_fields, metavar="FIELDS",
                   help="persona, arc, topic or a comma list (as export)")
    p.add_argument("--per-stratum", type=parse_count, metavar="N",
                   help="N conversations per stratum (all their selected pairs)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")


def _add_set(actions: Subparsers) -> None:
    p = add_command(actions, "set", cmd_set, "record one review of a pair's current text",
                    checked_level=False)
    p.add_argument("conversation_id", type=parse_uuid, metavar="CONVERSATION_ID")
    p.add_argument("turn", type=parse_count_or_zero, metavar="TURN")
    p.add_argument("--status", required=True, choices=list(STATUSES))
    p.add_argument("--reviewer", required=True, metavar="NAME")
    p.add_argument("--notes", metavar="TEXT")
    p.add_argument("--seed-example", action="store_true", help="use as a seed example")
    p.add_argument("--variations", type=parse_count_or_zero, default=0, metavar="N",
                   help="variations to generate (default 0)")
    p.add_argument("--no-enrich", action="store_true",
                   help="record only; leave re-enrichment to follow or backfill")


def _spec(args: argparse.Namespace) -> SamplingSpec:
    spec = SamplingSpec(stratify_by=args.stratify_by or (), per_stratum=args.per_stratum,
                        seed=args.seed)
    try:
        spec.check()
    except SamplingError as exc:
        raise UsageError(str(exc)) from exc
    return spec


def cmd_sheet(args: argparse.Namespace, ctx: Context) -> int:
    spec = _spec(args)
    summary = make_sheet(ctx.engine(), Path(args.output), Selection(args.select), spec)
    line = (f"wrote {summary.path}: {summary.pairs} pair(s) of {summary.conversations} "
            f"conversation(s) to review ({args.select})")
    if spec.stratify_by:
        line += f"; {summary.strata} strata by {','.join(spec.stratify_by)}, seed {spec.seed}"
    write(line)
    if summary.shortfall:
        write("shortfall: " + ", ".join(f"{k} -{v}" for k, v in summary.shortfall.items()))
    if not summary.pairs:
        write("nothing to review for this selection (see `reenrich review list`)")
    return 0


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    from worker.config import load_enrichment_config

    summary = import_sheet(ctx.engine(), Path(args.path))
    write(f"imported {args.path}: {summary.recorded} review(s) recorded "
          f"({len(summary.stale)} stale), {summary.skipped} row(s) without a status skipped, "
          f"{len(summary.bad)} bad row(s)")
    for review in summary.stale:
        write(f"  line {review.line}: stale: the text of conversation {review.conversation_id} "
              f"turn {review.turn_number} changed since the sheet was made; recorded as stale, "
              f"review it again from a new sheet (`--select stale`)")
    for bad in summary.bad:
        write(f"  line {bad.line}: {bad.reason}")
    if not args.no_enrich:
        _reenrich(ctx.engine(), summary.conversations, load_enrichment_config(ctx.settings),
                  write)
    return 1 if summary.bad else 0


def cmd_set(args: argparse.Namespace, ctx: Context) -> int:
    from worker.config import load_enrichment_config

    try:
        status, reviewer = check_set(args.status, args.reviewer, args.variations)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    review = ReviewInput(line=0, conversation_id=args.conversation_id, turn_number=args.turn,
                         status=status, reviewer=reviewer, notes=args.notes or None,
                         use_as_seed_example=args.seed_example,
                         generate_variations_count=args.variations, content_sha256="")
    set_review(ctx.engine(), review)
    write(f"recorded: {args.conversation_id} turn {args.turn} {status.value} by {reviewer}")
    if not args.no_enrich:
        _reenrich(ctx.engine(), [args.conversation_id], load_enrichment_config(ctx.settings),
                  write)
    return 0


def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    from worker.db import reviews as db

    with ctx.engine().connect() as conn:
        items = db.list_reviews(conn, stale_only=args.stale, status=args.status,
                                reviewer=args.reviewer, history=args.history)
    print_list(items, args.json, write)
    return 0
