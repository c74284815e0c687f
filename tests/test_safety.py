"""Data safety under concurrency and faults (issue 9): each test failed on the old code."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine

from tests.conftest import _admin, _with_database
from tests.helpers import seed
from worker.backfill import BackfillOptions, run_backfill
from worker.config import EnrichmentConfig
from worker.db.engine import libpq_url, make_engine
from worker.follow import Follower, FollowOptions
from worker.processing import Processor


def _documents(url: str) -> dict[uuid.UUID, str | None]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("SELECT conversation_id, enriched_json::text FROM conversations")
        return dict(rows.fetchall())


def _fresh_documents(server_url: str, db_url: str, config: EnrichmentConfig
                     ) -> dict[uuid.UUID, str | None]:
    """A copy of the database, every row enriched from scratch."""
    source = db_url.rsplit("/", 1)[1].split("?")[0]
    name = f"reenrich_fresh_{uuid.uuid4().hex[:10]}"
    with _admin(server_url) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    copy_url = _with_database(server_url, name)
    try:
        with psycopg.connect(libpq_url(copy_url), autocommit=True) as conn:
            conn.execute("UPDATE conversations SET enriched_json = NULL, enriched_hash = NULL, "
                         "enrichment_input_hash = NULL, enrichment_status = 'pending'")
        copy = make_engine(copy_url)
        try:
            run_backfill(copy, Processor(config), BackfillOptions(), threading.Event())
        finally:
            copy.dispose()
        return _documents(copy_url)
    finally:
        with _admin(server_url) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _queue_depth(raw: psycopg.Connection[Any]) -> int:
    return int(raw.execute("SELECT count(*) FROM enrichment_queue").fetchone()[0])  # type: ignore[index]


def test_a_backfill_beside_a_follower_and_an_editor_leaves_no_stale_document(
        engine: Engine, db_url: str, server_url: str, tmp_path: Path,
        config: EnrichmentConfig) -> None:
    raw = psycopg.connect(libpq_url(db_url), autocommit=True)
    seed(engine, tmp_path, count=600)
    # Nothing enriched yet and the queue empty: the backfill writes every row it reads.
    raw.execute("DELETE FROM enrichment_queue")

    stop_follow, stop_edit = threading.Event(), threading.Event()
    follower = Follower(engine, db_url, Processor(config),
                        FollowOptions(poll_interval=0.2, batch_size=10), stop_follow)
    follow_thread = threading.Thread(target=follower.run, daemon=True)
    follow_thread.start()
    edits = 0

    def edit_ahead_of_the_cursor() -> None:
        nonlocal edits
        rng = random.Random(7)
        with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
            while not stop_edit.is_set():
                row = conn.execute("SELECT cursor FROM backfill_slices ORDER BY updated_at DESC "
                                   "LIMIT 1").fetchone()
                cursor = row[0] if row else None
                ahead = conn.execute(
                    "SELECT conversation_id FROM conversations "
                    "WHERE CAST(%s AS uuid) IS NULL OR conversation_id > %s "
                    "ORDER BY conversation_id LIMIT 30", (cursor, cursor)).fetchall()
                for (cid,) in rng.sample(ahead, min(5, len(ahead))):
                    conn.execute(
                        "UPDATE conversations SET parsed_json = jsonb_set(parsed_json, "
                        "'{turns,0,content}', to_jsonb(%s::text)) WHERE conversation_id = %s",
                        (f"edited {uuid.uuid4().hex}", cid))
                    edits += 1
                time.sleep(0.005)

    editor = threading.Thread(target=edit_ahead_of_the_cursor, daemon=True)
    editor.start()
    try:
        run_backfill(engine, Processor(config), BackfillOptions(batch_size=20, sleep_seconds=0.25),
                     threading.Event())
    finally:
        stop_edit.set()
        editor.join(timeout=30)
    deadline = time.monotonic() + 60
    while _queue_depth(raw) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_follow.set()
    follow_thread.join(timeout=30)
    assert edits > 50
    assert _queue_depth(raw) == 0

    raw.close()
    engine.dispose()
    stored = _documents(db_url)
    fresh = _fresh_documents(server_url, db_url, config)
    stale = [cid for cid in fresh if stored[cid] != fresh[cid]]
    assert stale == [], f"{len(stale)} of {len(fresh)} documents are stale ({edits} edits)"
