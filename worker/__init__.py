"""reenrich: keeps every stored conversation's enriched document carrying its scaffolding.

The public API for the generation pipeline (see worker.api):

    from worker import enrich_conversations

As a library reenrich writes nothing to stdout and configures no logging
handler: its events go to the standard library's `logging` (loggers named
`reenrich.*`), so the application's logging configuration decides what is
shown (see worker.logs.library_default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker import logs as _logs

if TYPE_CHECKING:
    from worker.api import EnrichResult, enrich_conversations

# The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.1.0"

__all__ = ["EnrichResult", "__version__", "enrich_conversations"]

_logs.library_default()


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI's commands need not load the API.
    if name in ("EnrichResult", "enrich_conversations"):
        from worker import api

        return getattr(api, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
