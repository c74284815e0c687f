"""Count client/server round trips of every psycopg connection in this process.

Loaded only when the benchmark puts this folder on PYTHONPATH and sets
BENCH_ROUNDTRIPS_DIR (a phase subprocess, and the processes it starts): Python
imports `sitecustomize` at start-up. The program itself (`python -m worker
backfill`, the naive worker) runs unchanged.

What counts as one round trip: every point where psycopg sends something and
then *waits for the server's answer*. psycopg funnels each of them through a
few generator functions, which are wrapped here:

- a statement or command (BEGIN, COMMIT, SET, a query, an auto-prepare, the
  start of a COPY, which waits for the server's CopyInResponse): `execute`;
- the end of a COPY FROM STDIN (waits for the final result): `copy_end`
  (the data itself streams without waiting: not a round trip);
- a streamed query (`Cursor.stream`): its `send`;
- a pipeline sync (pipeline mode, `executemany`): `_sync_gen`, `_exit_gen`.

Connections are counted apart (each costs its own start-up exchange). At exit
the counts go to BENCH_ROUNDTRIPS_DIR/<pid>.json. The wrapping costs one
Python frame per round trip: microseconds against a round trip's ~0.1 ms.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any

_COUNTS: Counter[str] = Counter()
_LOCK = threading.Lock()


def _counted(kind: str, func: Callable[..., Generator[Any, Any, Any]]
             ) -> Callable[..., Generator[Any, Any, Any]]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        with _LOCK:
            _COUNTS[kind] += 1
        return (yield from func(*args, **kwargs))

    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    return wrapper


def _wrap(owner: Any, name: str, kind: str) -> None:
    setattr(owner, name, _counted(kind, getattr(owner, name)))


def _install(out_dir: str) -> None:
    import psycopg  # noqa: F401  (loads the modules patched below)
    from psycopg import _copy, _cursor_base, _server_cursor_base, generators
    from psycopg._pipeline_base import BasePipeline

    # Module globals, looked up at call time by the modules that use them.
    _wrap(generators, "execute", "command")  # BEGIN, COMMIT, ... (_connection_base)
    _wrap(generators, "connect", "connect")
    _wrap(_cursor_base, "execute", "statement")
    _wrap(_cursor_base, "send", "stream")
    _wrap(_server_cursor_base, "execute", "server_cursor")
    _wrap(_copy, "copy_end", "copy_end")
    _wrap(BasePipeline, "_sync_gen", "pipeline_sync")
    _wrap(BasePipeline, "_exit_gen", "pipeline_sync")

    def dump() -> None:
        with _LOCK:
            counts = dict(_COUNTS)
        counts["round_trips"] = sum(v for k, v in counts.items() if k != "connect")
        path = os.path.join(out_dir, f"{os.getpid()}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(counts, handle)

    atexit.register(dump)


if os.environ.get("BENCH_ROUNDTRIPS_DIR"):
    _install(os.environ["BENCH_ROUNDTRIPS_DIR"])
