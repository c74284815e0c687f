"""The values a row is read as and a page's outcome is written as.

Pure types shared by the enrichment step (which fills them) and the database
layer (which reads and writes them), so neither layer imports the other for
its own values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

import orjson

from worker.enrichment.models import ConversationInputs


class RawJsonb(bytes):
    """JSON text already serialized (by orjson): sent to a jsonb parameter as is."""


@dataclass(slots=True)
class StoredRow:
    """A conversation as read for enrichment: what it is built from and what is stored now.

    The parsed document stays JSON bytes until `inputs` is asked for: a row whose
    input hash is unchanged is never parsed (the cheap path of a no-op run).
    The parsed value is not kept, so a page never holds all its parsed documents.
    """

    conversation_id: uuid.UUID
    inputs_json: bytes  # parsed_json as the server renders jsonb, UTF-8 (stable: hashed as is)
    fields: ConversationInputs  # everything but `parsed`
    input_hash: str | None
    enriched_hash: str | None
    status: str
    error: str | None
    # What the inputs were read at: the row's xmin and its queue mark (None: not
    # marked). A write is made only while both are still the same.
    row_version: str
    marks: int | None

    @property
    def inputs(self) -> ConversationInputs:
        return replace(self.fields, parsed=orjson.loads(self.inputs_json))


@dataclass(frozen=True, slots=True)
class Changed:
    conversation_id: uuid.UUID
    document: RawJsonb
    document_hash: str
    input_hash: str
    report: RawJsonb
    row_version: str  # the row's xmin when its inputs were read
    marks: int | None  # its queue mark then


@dataclass(frozen=True, slots=True)
class Failed:
    conversation_id: uuid.UUID
    code: str
    message: str
    details: RawJsonb
    report: RawJsonb
    rewrite_row: bool  # False when the row already records this same failure
    row_version: str
    marks: int | None


@dataclass(frozen=True, slots=True)
class PageCounts:
    processed: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    deferred: int = 0  # not written now (inputs changed meanwhile, or a lock held): later


