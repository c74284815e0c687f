"""What operators look at: runs, failures, stored documents (read-only)."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from worker.db import checkpoints, queue, repository
from worker.enrichment.contract import dumps, in_contract_order

Out = Callable[[str | bytes], None]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def run_summary(run: checkpoints.Run, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    end = run.finished_at or (run.heartbeat_at if run.status != "running" else now)
    elapsed = max((end - run.started_at).total_seconds(), 0.0)
    rate = run.processed / elapsed if elapsed > 0 else 0.0
    remaining = max(0, (run.total or 0) - run.processed)
    eta = round(remaining / rate, 1) if rate > 0 and run.status == "running" else None
    return {
        "name": run.name,
        "status": run.status,
        "processed": run.processed,
        "updated": run.updated,
        "unchanged": run.unchanged,
        "failed": run.failed,
        "total": run.total,
        "rows_per_second": round(rate, 1),
        "eta_seconds": eta,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "heartbeat_at": _iso(run.heartbeat_at),
        "workers": run.workers,
        "enrichment_version": run.enrichment_version,
        "filters": run.filters.as_json(),
        "last_error": run.last_error,
    }


# ------------------------------------------------------------ tables


def one_line(value: Any) -> str:
    """A cell's text on one line: a control character (newline, escape) is shown escaped."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def first_line(value: Any) -> str:
    """The first non-empty line of a (possibly multi-line) error message."""
    for line in ("" if value is None else str(value)).splitlines():
        if line.strip():
            return one_line(line.strip())
    return ""


def clip(text: str, width: int) -> str:
    if width < 1:
        return ""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def terminal_width() -> int:
    """The terminal's width (COLUMNS, else the tty's, else 80), at least 40."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    drop: int = 0  # 0: always shown; otherwise dropped (highest first) when too wide
    shrink: int = 0  # > 0: may be cut down to this many characters when too wide
    soft: int = 0  # > 0: cut to this first, before any column is dropped
    right: bool = False


def _table(rows: list[dict[str, Any]], columns: Sequence[Column], out: Out,
           width: int | None) -> None:
    """A table that fits `width` (None: no limit): optional columns go, then long ones shrink."""
    cells = {c.key: [one_line(r.get(c.key)) for r in rows] for c in columns}
    # An optional column with nothing in it (no ETA when nothing runs) is left out.
    shown = [c for c in columns if not c.drop or any(cells[c.key])]

    def natural(c: Column) -> int:
        return max([len(c.title)] + [len(v) for v in cells[c.key]])

    widths = {c.key: natural(c) for c in columns}

    def total() -> int:
        return sum(widths[c.key] for c in shown) + 2 * (len(shown) - 1)

    if width is not None:
        for column in shown:
            if column.soft and total() > width:
                floor = max(column.soft, len(column.title))
                widths[column.key] = max(min(floor, widths[column.key]),
                                         widths[column.key] - (total() - width))
        for column in sorted((c for c in shown if c.drop), key=lambda c: -c.drop):
            if total() <= width:
                break
            shown.remove(column)
        for column in shown:
            if column.shrink and total() > width:
                widths[column.key] = max(column.shrink, widths[column.key] - (total() - width))

    def line(values: list[str]) -> str:
        parts = []
        for column, value in zip(shown, values, strict=True):
            w = widths[column.key]
            value = clip(value, w)
            parts.append(value.rjust(w) if column.right else value.ljust(w))
        return "  ".join(parts).rstrip()

    out(line([c.title for c in shown]))
    for i in range(len(rows)):
        out(line([cells[c.key][i] for c in shown]))


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else ""


def _duration(value: float | None) -> str:
    if value is None:
        return ""
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


RUN_COLUMNS = (
    Column("name", "RUN", shrink=16, soft=30),
    Column("status", "STATUS"),
    Column("progress", "PROCESSED", right=True),
    Column("failed", "FAILED", right=True),
    Column("rate", "ROWS/S", drop=3, right=True),
    Column("eta", "ETA", drop=2, right=True),
    Column("started", "STARTED (UTC)", drop=4),
    Column("finished", "FINISHED (UTC)", drop=5),
    Column("updated", "UPDATED", drop=6, right=True),
    Column("unchanged", "UNCHANGED", drop=7, right=True),
)
WIDE_RUN_COLUMNS = tuple(Column(k, k.upper()) for k in (
    "name", "status", "processed", "total", "updated", "unchanged", "failed",
    "rows_per_second", "eta_seconds", "started_at", "finished_at", "workers", "last_error"))


def _run_row(run: checkpoints.Run, summary: dict[str, Any]) -> dict[str, Any]:
    total = "?" if run.total is None else str(run.total)
    return {"name": run.name, "status": run.status, "progress": f"{run.processed}/{total}",
            "failed": run.failed, "rate": summary["rows_per_second"] or "",
            "eta": _duration(summary["eta_seconds"]), "started": _when(run.started_at),
            "finished": _when(run.finished_at), "updated": run.updated,
            "unchanged": run.unchanged}


def print_status(engine: Engine, *, as_json: bool, out: Out, wide: bool = False,
                 width: int | None = None) -> int:
    """`reenrich status`: fits the terminal (80 columns when not one); --wide: every column."""
    with engine.connect() as conn:
        runs = checkpoints.list_runs(conn)
    summaries = [run_summary(r) for r in runs]
    if as_json:
        out(json.dumps(summaries, ensure_ascii=False))
        return 0
    fit = width or terminal_width()
    if not runs:
        out("no backfill runs yet: start one with `reenrich backfill`")
    elif wide:
        _table([{**s, "last_error": " ".join(str(s["last_error"] or "").split())}
                for s in summaries], WIDE_RUN_COLUMNS, out, None)
    else:
        _table([_run_row(r, s) for r, s in zip(runs, summaries, strict=True)], RUN_COLUMNS,
               out, fit)
        errors = [(r.name, first_line(r.last_error)) for r in runs if r.last_error]
        for name, error in errors:
            out(clip(f"  {clip(one_line(name), 30)}: {error}", fit))
        if errors:
            out(clip("  (last errors, first line: `reenrich status --wide` or --json has "
                     "them in full)", fit))
    out("")
    _print_versions(engine, out)
    _print_follow(engine, out, live_only=True, width=None if wide else fit)
    return 0


def _print_versions(engine: Engine, out: Out) -> None:
    """Enriched rows per enrichment version: rows below the current one await a backfill."""
    from worker.db.dataset import version_counts
    from worker.enrichment.enrich import ENRICHMENT_VERSION

    with engine.connect() as conn:
        counts = version_counts(conn)
    listed = ", ".join(f"v{k if k is not None else '?'}: {v}"
                       for k, v in counts.items()) or "none"
    behind = sum(v for k, v in counts.items() if k is None or k < ENRICHMENT_VERSION)
    out(f"enriched rows by contract version: {listed} (current v{ENRICHMENT_VERSION})")
    if behind:
        out(f"  {behind} row(s) behind: `reenrich backfill` brings them to v{ENRICHMENT_VERSION}")


def _workers(engine: Engine) -> tuple[queue.QueueStats, list[dict[str, Any]]]:
    with engine.connect() as conn:
        stats = queue.queue_stats(conn)
        rows = queue.list_workers(conn)
    return stats, [{
        "worker_id": r["worker_id"], "host": r["host"], "pid": r["pid"], "state": r["state"],
        "started_at": _iso(r["started_at"]), "heartbeat_at": _iso(r["heartbeat_at"]),
        "stopped_at": _iso(r["stopped_at"]), "batches": r["batches"],
        "rows_processed": r["rows_processed"], "rows_enriched": r["rows_enriched"],
        "rows_unchanged": r["rows_unchanged"], "rows_failed": r["rows_failed"],
        "claimed": r["claimed"], "last_batch_at": _iso(r["last_batch_at"]),
        "last_error": r["last_error"],
    } for r in rows]


WORKER_COLUMNS = (
    Column("worker_id", "WORKER", shrink=16, soft=30),
    Column("state", "STATE"),
    Column("heartbeat", "HEARTBEAT (UTC)", drop=3),
    Column("batches", "BATCHES", drop=4, right=True),
    Column("rows_enriched", "ENRICHED", right=True),
    Column("rows_failed", "FAILED", right=True),
    Column("claimed", "CLAIMED", drop=2, right=True),
)
WIDE_WORKER_COLUMNS = tuple(Column(k, k.upper()) for k in (
    "worker_id", "state", "heartbeat_at", "batches", "rows_processed", "rows_enriched",
    "rows_failed", "claimed", "started_at", "last_error"))


def _print_follow(engine: Engine, out: Out, *, live_only: bool, width: int | None) -> None:
    stats, workers = _workers(engine)
    oldest = f"{_when(stats.oldest_marked_at)} UTC" if stats.oldest_marked_at else "-"
    line = f"follow queue: {stats.depth} conversation(s) marked, {stats.claimed} claimed"
    if width is None or len(line) + len(oldest) + 14 <= width:
        out(f"{line}, oldest mark {oldest}")
    else:
        out(line)
        out(f"  oldest mark {oldest}")
    shown = [w for w in workers if w["state"] != "stopped"] if live_only else workers
    if not shown:
        out("no follow workers running: start one with `reenrich follow`" if live_only
            else "no follow workers yet: start one with `reenrich follow`")
        return
    if width is None:
        _table([{**w, "last_error": " ".join(str(w["last_error"] or "").split())}
                for w in shown], WIDE_WORKER_COLUMNS, out, None)
        return
    _table([{**w, "heartbeat": (w["heartbeat_at"] or "")[:16].replace("T", " ")}
            for w in shown], WORKER_COLUMNS, out, width)
    for w in shown:
        if w["last_error"]:
            out(clip(f"  {clip(one_line(w['worker_id']), 30)}: {first_line(w['last_error'])}",
                     width))


def print_workers(engine: Engine, *, as_json: bool, out: Out, wide: bool = False,
                  width: int | None = None) -> int:
    """`reenrich workers`: the queue depth and every follow worker (--json: one object)."""
    if as_json:
        stats, workers = _workers(engine)
        out(json.dumps({"queue": {"depth": stats.depth, "claimed": stats.claimed,
                                  "oldest_marked_at": _iso(stats.oldest_marked_at)},
                        "workers": workers}, ensure_ascii=False))
        return 0
    _print_follow(engine, out, live_only=False,
                  width=None if wide else (width or terminal_width()))
    return 0


FAILURE_COLUMNS = (
    Column("conversation_id", "CONVERSATION"),
    Column("error_code", "CODE", shrink=12),
    Column("attempts", "TRIES", drop=2, right=True),
    Column("last_seen", "LAST SEEN (UTC)", drop=1),
    Column("message", "MESSAGE", shrink=12, soft=40),
)


def print_failures(engine: Engine, *, run: str | None, as_json: bool, include_resolved: bool,
                   out: Out, wide: bool = False, width: int | None = None) -> int:
    with engine.connect() as conn:
        rows = checkpoints.list_failures(conn, run, include_resolved)
    items = [{
        "conversation_id": str(r["conversation_id"]),
        "error_code": r["error_code"],
        "message": r["message"],
        "run": r["run_name"],
        "attempts": r["attempts"],
        "first_seen_at": _iso(r["first_seen_at"]),
        "last_seen_at": _iso(r["last_seen_at"]),
        "resolved_at": _iso(r["resolved_at"]),
        "details": r["details"],
    } for r in rows]
    if as_json:
        out(json.dumps(items, ensure_ascii=False))
        return 0
    if not items:
        out("no failures")
        return 0
    if wide:
        _table(items, tuple(Column(k, k.upper()) for k in (
            "conversation_id", "error_code", "attempts", "last_seen_at", "run", "message")),
            out, None)
        return 0
    _table([{**i, "last_seen": (i["last_seen_at"] or "")[:16].replace("T", " "),
             "message": first_line(i["message"])} for i in items], FAILURE_COLUMNS, out,
           width or terminal_width())
    return 0


def show_documents(engine: Engine, ids: Sequence[uuid.UUID] | None, *, out: Out) -> int:
    """Stored enriched documents as JSON Lines; exit 1 if an id has none."""
    seen: set[uuid.UUID] = set()
    not_enriched: list[uuid.UUID] = []
    with engine.connect() as conn:
        for conversation_id, document in repository.stored_documents(conn, ids):
            seen.add(conversation_id)
            if document is None:
                not_enriched.append(conversation_id)
                continue
            out(dumps(in_contract_order(document)))
    missing = [i for i in ids or [] if i not in seen]
    for i in missing:
        sys.stderr.write(f"reenrich: no conversation {i}\n")
    for i in not_enriched:
        sys.stderr.write(f"reenrich: conversation {i} has no enriched document yet "
                         "(run `reenrich backfill`, or see `reenrich failures`)\n")
    return 1 if missing or not_enriched else 0
