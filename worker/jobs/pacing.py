"""How big the next page is and how long to wait before it.

Batch size adapts toward a target page duration (as GitLab's batched
background migrations do): a page that took half the target doubles the
next one, within bounds and at most x2 / x0.5 per step. A rate cap and a
fixed pause let a backfill run beside the live application. The loops know
nothing of this beyond asking `next_size()` and calling `after_page()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

MIN_BATCH = 20
# Memory: about five pages are alive at once (being read, queued, being
# enriched, queued, being written); only the last two hold enriched documents
# (~50 kB a conversation).
MAX_BATCH = 500
DEFAULT_BATCH = 500


@dataclass
class Pacer:
    fixed_size: int | None = None
    target_seconds: float = 2.0
    max_rows_per_second: float | None = None
    sleep_seconds: float = 0.0
    size: int = DEFAULT_BATCH
    _rows: int = 0
    _started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.fixed_size is not None:
            self.size = self.fixed_size

    def next_size(self) -> int:
        return self.size

    def after_page(self, rows: int, seconds: float) -> float:
        """Record a committed page; returns how long to pause before the next one."""
        self._rows += rows
        if self.fixed_size is None and rows >= self.size and seconds > 0:
            factor = max(0.5, min(2.0, self.target_seconds / seconds))
            self.size = int(max(MIN_BATCH, min(MAX_BATCH, self.size * factor)))
        pause = self.sleep_seconds
        if self.max_rows_per_second:
            ahead = self._rows / self.max_rows_per_second - (time.monotonic() - self._started)
            pause = max(pause, ahead)
        return pause
