"""reenrich: keeps every stored conversation's enriched document carrying its scaffolding.

The public API for the generation pipeline (see worker.api):

    from worker import enrich_conversations
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.api import EnrichResult, enrich_conversations

__all__ = ["EnrichResult", "enrich_conversations"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI's commands need not load the API.
    if name in __all__:
        from worker import api

        return getattr(api, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
