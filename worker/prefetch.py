"""Read ahead of the consumer: the next rows arrive while the current ones are processed.

An export spends about as long waiting for PostgreSQL to send the next batch
of documents (psycopg releases the GIL while it waits) as it does turning
documents into rows. `prefetch` runs the source iterator in one thread and
hands its items over through a small queue, so the wait and the work
overlap. The source (a server-side cursor) is used by that thread only,
from its first item to its last; the consumer gets the items in order, and
an error in the source is raised in the consumer. When the consumer stops
early (an error, a closed generator), the thread is told to stop and is
joined before `prefetch` returns, so nothing touches the connection after.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")
BATCH = 50  # items per hand-over: one queue operation per batch, not per item
DEPTH = 4  # batches read ahead at most (memory: DEPTH * BATCH documents)
_DONE = object()


def prefetch(source: Iterable[T], batch: int = BATCH,
             depth: int = DEPTH) -> Generator[T, None, None]:
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        chunk: list[T] = []
        outcome: object = _DONE
        try:
            iterator = iter(source)
            try:
                for item in iterator:
                    chunk.append(item)
                    if len(chunk) >= batch:
                        if not put(chunk):
                            return
                        chunk = []
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()  # the cursor is closed by the thread that used it
        except BaseException as exc:  # handed to the consumer, raised there
            outcome = exc
        if chunk and not put(chunk):
            return
        put(outcome)

    thread = threading.Thread(target=read, name="reenrich-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = handoff.get()
            if got is _DONE:
                return
            if isinstance(got, BaseException):
                raise got
            assert isinstance(got, list)
            yield from got
    finally:
        stop.set()
        thread.join()
