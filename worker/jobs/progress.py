"""Rows done, rate and ETA; drawn as a bar on stderr only when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if rate <= 0 or self.total <= 0:
            return None
        return round(max(0, self.total - self.done) / rate, 1)

    def advance(self, rows: int) -> None:
        self.done += rows
        self.draw()

    def draw(self) -> None:
        if not self.enabled:
            return
        width = 30
        share = min(1.0, self.done / self.total) if self.total else 1.0
        bar = "#" * int(share * width)
        eta = self.eta()
        eta_text = f"{eta:.0f}s" if eta is not None else "?"
        self.stream.write(f"\r[{bar:<{width}}] {self.done}/{self.total} rows "
                          f"{self.rate():.0f}/s ETA {eta_text}\x1b[K")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.clear()
