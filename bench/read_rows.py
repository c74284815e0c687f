"""The floor for a no-op backfill: just read every conversation with its joins.

Phase "read" of `bench/backfill_bench.py`. It reads the rows a backfill needs
(the parsed document as text, the row's fields, its persona, arc, topic,
template and latest system prompt) in keyset pages, the same joins as the
backfill's page query, and does nothing with them: no JSON parsing, no
hashing. A no-op backfill (nothing changed) cannot be faster than this; the
target is to reach at least half its speed.

    DATABASE_URL=postgresql://... .venv/bin/python bench/read_rows.py [--page 500]

prints one JSON object on stdout: rows, pages, seconds, bytes of parsed JSON text read.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker.config import load_settings  # noqa: E402
from worker.db.engine import libpq_url, normalize_url  # noqa: E402

# Written here on purpose (not imported from worker/): the floor must not move
# when the backfill's own query changes.
READ_PAGE = """
SELECT c.conversation_id, c.created_at, c.quality_score, c.parsed_json::text,
       c.enrichment_input_hash, c.enriched_hash, c.enrichment_status, c.enrichment_error,
       p.id, p.persona_key, p.name, p.archetype, p.demographics, p.financial_background,
       a.id, a.arc_key, a.name, a.starting_emotion, a.ending_emotion, a.response_techniques,
       t.id, t.topic_key, t.name, t.complexity_level,
       pt.template_name, pt.category,
       gl.system_prompt
FROM conversations c
LEFT JOIN personas p          ON p.id = c.persona_id
LEFT JOIN emotional_arcs a    ON a.id = c.emotional_arc_id
LEFT JOIN training_topics t   ON t.id = c.training_topic_id
LEFT JOIN prompt_templates pt ON pt.id = c.template_id
LEFT JOIN LATERAL (
    SELECT g.system_prompt FROM generation_logs g
    WHERE g.conversation_id = c.conversation_id
    ORDER BY g.created_at DESC, g.id DESC
    LIMIT 1
) gl ON true
WHERE %(after)s::uuid IS NULL OR c.conversation_id > %(after)s::uuid
ORDER BY c.conversation_id
LIMIT %(limit)s
"""


def read_all(conn: psycopg.Connection[Any], page: int) -> dict[str, Any]:
    started = time.perf_counter()
    after: uuid.UUID | None = None
    rows = pages = text_bytes = 0
    while True:
        batch = conn.execute(READ_PAGE, {"after": after, "limit": page}).fetchall()
        pages += 1
        rows += len(batch)
        text_bytes += sum(len(r[3]) for r in batch)
        if len(batch) < page:
            break
        after = batch[-1][0]
    return {"rows": rows, "pages": pages, "seconds": time.perf_counter() - started,
            "parsed_text_chars": text_bytes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="read every conversation with its joins")
    parser.add_argument("--page", type=int, default=500, help="rows per page (default 500)")
    args = parser.parse_args(argv)
    settings = load_settings()
    if not settings.database_url:
        sys.stderr.write("read_rows: set DATABASE_URL\n")
        return 1
    url = libpq_url(normalize_url(settings.database_url))
    with psycopg.connect(url, autocommit=True, application_name="reenrich-bench-read") as conn:
        result = read_all(conn, args.page)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
