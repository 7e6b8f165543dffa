"""Steady progress lines for long loops: done / total, rate, ETA."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("authmigrate")


class Progress:
    def __init__(self, what: str, total: int | None, every_seconds: float = 10.0):
        self.what, self.total, self.every = what, total, every_seconds
        self.start = self.last = time.monotonic()
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log()

    def log(self, final: bool = False) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        if final:
            log.info("%s: %d done in %.1fs (%.0f/s)", self.what, self.done, elapsed, rate)
        elif self.total:
            eta = (self.total - self.done) / rate if rate else float("inf")
            log.info("%s: %d / %d (%.0f%%), %.0f/s, ETA %.0fs", self.what, self.done, self.total,
                     100 * self.done / self.total, rate, eta)
        else:
            log.info("%s: %d done, %.0f/s", self.what, self.done, rate)
