"""The near-duplicate section of `reenrich stats` (text, JSON and the HTML page)."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

Out = Callable[[str], None]


def collect(conn: Connection) -> dict[str, Any] | None:
    """What the last `reenrich dedup` found, or None when it never ran."""
    from worker.db import dedup as db
    from worker.jobs.dedup import report

    if not db.has_tables(conn):
        return None
    run = db.last_run(conn)
    if run is None:
        return None
    found = report(conn)
    found.update(threshold=run["threshold"], scope=run["scope"],
                 run_finished_at=run["finished_at"].isoformat())
    return found


def print_text(found: dict[str, Any] | None, out: Out) -> None:
    from worker.cli.dedup import print_details

    out("")
    if found is None:
        out("near-duplicates: not computed (run `reenrich dedup`)")
        return
    out(f"near-duplicates (threshold {found['threshold']}, scope {found['scope']}, "
        f"{found['run_finished_at']}): {found['clusters']} clusters holding "
        f"{found['conversations_in_clusters']} conversations; duplicate rate "
        f"{100 * found['duplicate_rate']:.2f}% ({found['duplicates']} not representatives); "
        f"{found['cross_cell_clusters']} clusters span cells; "
        f"{found['unsigned_conversations']} conversations added since")
    for level in ("persona", "arc", "topic"):
        rows = found["duplicate_rates"][level]
        out(f"  duplicate rate by {level}: " + ", ".join(
            f"{'(none)' if r[level] is None else r[level]} {100 * r['duplicate_rate']:.1f}%"
            for r in rows))
    print_details({**found, "duplicate_rates": {
        **found["duplicate_rates"], "cell": found["duplicate_rates"]["cell"][:10]}}, out)


def render_html(found: dict[str, Any] | None, table: Callable[[list[str], list[list[Any]]], str]
                ) -> str:
    if found is None:
        return "<h2>Near-duplicates</h2><p>Not computed: run <code>reenrich dedup</code>.</p>"
    parts = ["<h2>Near-duplicates</h2>",
             f"<p>Threshold {found['threshold']}, scope {html.escape(found['scope'])}: "
             f"{found['clusters']} clusters holding {found['conversations_in_clusters']} "
             f"conversations; duplicate rate {100 * found['duplicate_rate']:.2f}% "
             f"({found['duplicates']} not representatives).</p>"]
    for level in ("persona", "arc", "topic"):
        parts.append(f"<h3>Duplicate rate by {level}</h3>")
        parts.append(table([level, "conversations", "in clusters", "duplicates", "rate"], [
            ["(none)" if r[level] is None else r[level], r["conversations"], r["in_clusters"],
             r["duplicates"], f"{100 * r['duplicate_rate']:.1f}%"]
            for r in found["duplicate_rates"][level]]))
    parts.append("<h3>Largest clusters</h3>")
    parts.append(table(["cluster", "size", "representative", "members (sample)"], [
        [c["cluster_id"], c["size"], c["representative"], " ".join(c["sample"])]
        for c in found["largest_clusters"]]))
    repeated = found["repeated_responses"]
    parts.append(f"<h3>Repeated assistant responses: {repeated['responses']}</h3>")
    parts.append(table(["conversations", "response (start)"], [
        [r["conversations"], r["preview"]] for r in repeated["top"]]))
    return "\n".join(parts)
