"""Human progress lines on stderr: one per epoch or trial, with an ETA."""

from __future__ import annotations

import sys
import time


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts finished units of work and prints a line per unit with the time left."""

    def __init__(self, total: int, unit: str, stream=None):
        self.total, self.unit, self.done = total, unit, 0
        self.stream = stream  # None: sys.stderr looked up at print time (the callback is pickled by Ray)
        self.start = time.perf_counter()

    def eta(self) -> str:
        if not self.done:
            return "?"
        per = (time.perf_counter() - self.start) / self.done
        return fmt_duration(per * (self.total - self.done))

    def step(self, text: str) -> None:
        self.done += 1
        width = len(str(self.total))
        print(
            f"{self.unit} {self.done:>{width}}/{self.total}  {text}  ETA {self.eta()}",
            file=self.stream or sys.stderr,
            flush=True,
        )
