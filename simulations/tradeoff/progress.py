"""The sweep's clock: time elapsed since it started and the ETA of the cells still to run (the
mean duration of the cells run so far times the cells left)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class SweepClock:
    """Counts the cells this call runs (``todo`` of them) and how long each took."""

    todo: int
    start: float = field(default_factory=time.monotonic)
    durations: list[float] = field(default_factory=list)

    @property
    def left(self) -> int:
        return self.todo - len(self.durations)

    def elapsed(self) -> str:
        return clock(time.monotonic() - self.start)

    def eta(self) -> str:
        if self.left <= 0:
            return clock(0)
        if not self.durations:
            return "unknown until a cell finishes"
        return clock(statistics.fmean(self.durations) * self.left)
