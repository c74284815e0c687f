"""A naive per-row re-enrichment worker: the shape of the system reenrich replaces.

Written for the benchmark only (phase c of `bench/backfill_bench.py`), never
used by reenrich. For every conversation it does what an ORM-style job does:

    BEGIN                                   (psycopg opens the transaction: 1 round trip)
    SELECT the conversation row             (1)
    SELECT its persona, arc, topic, template, one query each (up to 4)
    SELECT its latest generation log        (1)
    enrich in Python (worker.enrichment.enrich.enrich, the same function as the backfill)
    UPDATE the row                          (1)
    COMMIT                                  (1)

about 8 to 9 round trips and a commit per row (5 for a row without
scaffolding). It writes the same columns with the same bytes as the backfill
(orjson serialization of the same document, the same hashes), so the two
phases are comparable; it writes every row, changed or not, as the old system
did. Ids are listed by keyset pages of 1,000, so memory stays flat.

    DATABASE_URL=postgresql://... .venv/bin/python bench/naive_worker.py

prints one JSON object on stdout: rows, updated, failed, seconds (first query
to last commit), its own count of round trips (statements + BEGINs + COMMITs)
and the enriched bytes written. Enrichment settings come from the same
environment as the CLI (REENRICH_CONSULTANT_PROFILE_PATH, ...).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a fresh clone
    sys.path.insert(0, str(ROOT))

from worker.config import load_enrichment_config, load_settings  # noqa: E402
from worker.db.engine import libpq_url, normalize_url  # noqa: E402
from worker.enrichment.enrich import ENRICHMENT_VERSION, InvalidDocument, enrich  # noqa: E402
from worker.enrichment.models import (  # noqa: E402
    ConversationInputs,
    EmotionalArc,
    Persona,
    PromptTemplate,
    TrainingTopic,
)
from worker.enrichment.processing import Processor  # noqa: E402

ID_PAGE = 1000

LIST_IDS = """
SELECT conversation_id FROM conversations
WHERE %(after)s::uuid IS NULL OR conversation_id > %(after)s::uuid
ORDER BY conversation_id
LIMIT %(limit)s
"""

SELECT_ROW = """
SELECT conversation_id, created_at, quality_score, parsed_json::text,
       persona_id, emotional_arc_id, training_topic_id, template_id
FROM conversations WHERE conversation_id = %s
"""

SELECT_PERSONA = """
SELECT id, persona_key, name, archetype, demographics, financial_background
FROM personas WHERE id = %s
"""

SELECT_ARC = """
SELECT id, arc_key, name, starting_emotion, ending_emotion, response_techniques
FROM emotional_arcs WHERE id = %s
"""

SELECT_TOPIC = "SELECT id, topic_key, name, complexity_level FROM training_topics WHERE id = %s"

SELECT_TEMPLATE = "SELECT template_name, category FROM prompt_templates WHERE id = %s"

SELECT_PROMPT = """
SELECT system_prompt FROM generation_logs
WHERE conversation_id = %s
ORDER BY created_at DESC, id DESC
LIMIT 1
"""

UPDATE_ROW = """
UPDATE conversations
SET enriched_json         = %(document)s::jsonb,
    enriched_hash         = %(document_hash)s,
    enrichment_input_hash = %(input_hash)s,
    enrichment_version    = %(version)s,
    enrichment_status     = 'enriched',
    enrichment_error      = NULL,
    validation_report     = %(report)s::jsonb,
    enriched_at           = now(),
    updated_at            = now()
WHERE conversation_id = %(id)s
"""

MARK_FAILED = """
UPDATE conversations
SET enrichment_status = 'failed', enrichment_error = %(message)s,
    validation_report = %(report)s::jsonb, updated_at = now()
WHERE conversation_id = %(id)s
"""


@dataclass
class NaiveResult:
    rows: int = 0
    updated: int = 0
    failed: int = 0
    seconds: float = 0.0
    statements: int = 0
    transactions: int = 0  # each one's BEGIN is a round trip of its own (psycopg)
    commits: int = 0
    enriched_bytes: int = 0

    @property
    def round_trips(self) -> int:
        return self.statements + self.transactions + self.commits


class NaiveWorker:
    def __init__(self, conn: psycopg.Connection[Any], processor: Processor) -> None:
        self.conn = conn
        self.processor = processor
        self.result = NaiveResult()

    def _one(self, sql: str, params: Any) -> Any:
        self.result.statements += 1
        return self.conn.execute(sql, params).fetchone()

    def _commit(self) -> None:
        self.result.transactions += 1
        self.result.commits += 1
        self.conn.commit()

    def run(self) -> NaiveResult:
        started = time.perf_counter()
        after: uuid.UUID | None = None
        while True:
            self.result.statements += 1
            ids = [r[0] for r in self.conn.execute(LIST_IDS, {"after": after, "limit": ID_PAGE})]
            self._commit()
            for conversation_id in ids:
                self.row(conversation_id)
            if len(ids) < ID_PAGE:
                break
            after = ids[-1]
        self.result.seconds = time.perf_counter() - started
        return self.result

    def row(self, conversation_id: uuid.UUID) -> None:
        row = self._one(SELECT_ROW, (conversation_id,))
        if row is None:  # deleted meanwhile
            self._commit()
            return
        cid, created_at, quality_score, parsed_text, persona_id, arc_id, topic_id, template_id = row
        persona = arc = topic = template = None
        if persona_id is not None:
            p = self._one(SELECT_PERSONA, (persona_id,))
            persona = Persona(id=p[0], key=p[1], name=p[2], archetype=p[3], demographics=p[4],
                              financial_background=p[5])
        if arc_id is not None:
            a = self._one(SELECT_ARC, (arc_id,))
            arc = EmotionalArc(id=a[0], key=a[1], name=a[2], starting_emotion=a[3],
                               ending_emotion=a[4], response_techniques=tuple(a[5] or ()))
        if topic_id is not None:
            t = self._one(SELECT_TOPIC, (topic_id,))
            topic = TrainingTopic(id=t[0], key=t[1], name=t[2], complexity_level=t[3])
        if template_id is not None:
            pt = self._one(SELECT_TEMPLATE, (template_id,))
            template = PromptTemplate(name=pt[0], category=pt[1])
        prompt = self._one(SELECT_PROMPT, (cid,))
        inputs = ConversationInputs(
            conversation_id=cid, created_at=created_at, parsed=orjson.loads(parsed_text),
            quality_score=quality_score,
            has_scaffolding_reference=any(x is not None for x in (persona_id, arc_id, topic_id)),
            persona=persona, arc=arc, topic=topic, template=template,
            system_prompt=prompt[0] if prompt else None)
        self.result.rows += 1
        try:
            enriched = enrich(inputs, self.processor.config)
        except InvalidDocument as exc:
            self.result.statements += 1
            self.conn.execute(MARK_FAILED, {"id": cid, "message": str(exc),
                                            "report": orjson.dumps(exc.report.as_dict()).decode()})
            self._commit()
            self.result.failed += 1
            return
        document = orjson.dumps(enriched.document)
        self.result.statements += 1
        self.conn.execute(UPDATE_ROW, {
            "id": cid, "document": document.decode(),
            "document_hash": hashlib.sha256(document).hexdigest(),
            "input_hash": self.processor.input_hash(parsed_text, inputs),
            "version": ENRICHMENT_VERSION,
            "report": orjson.dumps(enriched.report.as_dict()).decode()})
        self._commit()
        self.result.updated += 1
        self.result.enriched_bytes += len(document)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.parse_args(argv)
    settings = load_settings()
    if not settings.database_url:
        sys.stderr.write("naive_worker: set DATABASE_URL\n")
        return 1
    processor = Processor(load_enrichment_config(settings))
    url = libpq_url(normalize_url(settings.database_url))
    with psycopg.connect(url, application_name="reenrich-bench-naive") as conn:
        result = NaiveWorker(conn, processor).run()
    out = asdict(result)
    out["round_trips"] = result.round_trips
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
