"""Progress while a simulation trains: epochs done and time left for the baselines, rounds for
the federation, cells for a trade-off sweep.

On a terminal (`progress_for` with a TTY): live `rich` bars below the run's own lines, which
print above them. Elsewhere (CI, a log file, a caller that collects the lines): no bars, no
extra lines; the line each event prints anyway (a baseline's round, a cell's start and end)
carries the epochs done and the time left instead (`Task.status`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

from common.tracking.base import Tracker


def _now() -> float:
    return time.monotonic()


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class Task:
    """One piece of work counted in ``unit`` (epochs, rounds, cells): ``done`` of ``total``."""

    name: str
    total: int
    unit: str = "epochs"
    done: int = 0
    start: float = field(default_factory=lambda: _now())
    bar: object = None            # the rich task id, on a terminal
    progress: Progress | None = None     # the display that draws it

    def advance(self, units: int = 1) -> None:
        self.done = min(self.total, self.done + units)
        self._drawn()

    def update(self, done: int) -> None:
        self.done = max(0, min(self.total, int(done)))
        self._drawn()

    def drop(self, units: int) -> None:
        """``units`` will not be done after all (a baseline stopped early)."""
        self.total = max(self.done, 1, self.total - units)
        self._drawn()

    def finish(self) -> None:
        """The task ended (early stopping included): its bar shows it complete."""
        if self.progress is not None:
            self.progress.finished(self)

    def _drawn(self) -> None:
        if self.progress is not None:
            self.progress.draw(self)

    def seconds_left(self) -> float | None:
        """The time per unit so far times the units left; None before the first is done."""
        if self.done <= 0:
            return None
        return (_now() - self.start) / self.done * max(0, self.total - self.done)

    def status(self) -> str:
        """'epochs 4/10, 0:00:12 left' for the line an event prints."""
        left = self.seconds_left()
        when = "time left unknown yet" if left is None else f"{clock(left)} left"
        return f"{self.unit} {self.done}/{self.total}, {when}"


class Progress:
    """Counts tasks and draws nothing (not a terminal): the event lines carry the status."""

    bars = False

    def task(self, name: str, total: int, unit: str = "epochs") -> Task:
        return Task(name, max(1, int(total)), unit, progress=self)

    def draw(self, task: Task) -> None:
        """Show the task's count (nothing to draw here)."""

    def finished(self, task: Task) -> None:
        """Show the task as complete (nothing to draw here)."""

    def mark(self) -> int:
        """How many tasks there are now (for `forget`)."""
        return 0

    def forget(self, mark: int) -> None:
        """Take away the tasks added since ``mark`` (a sweep's finished cell)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class BarProgress(Progress):
    """Live rich bars on ``console``; re-entrant, so a sweep and the runs it calls share one
    display. print() while it is live goes above the bars."""

    bars = True

    def __init__(self, console=None) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        self.rich = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                                 TimeElapsedColumn(), TextColumn("elapsed,"),
                                 TimeRemainingColumn(), TextColumn("left"),
                                 console=console, transient=False)
        self.depth = 0

    def task(self, name: str, total: int, unit: str = "epochs") -> Task:
        task = super().task(name, total, unit)
        task.bar = self.rich.add_task(name, total=task.total, unit=unit)
        return task

    def draw(self, task: Task) -> None:
        self.rich.update(task.bar, completed=task.done, total=task.total)

    def finished(self, task: Task) -> None:
        self.rich.update(task.bar, total=task.done or 1, completed=task.done or 1)

    def mark(self) -> int:
        return len(self.rich.task_ids)

    def forget(self, mark: int) -> None:
        for bar in self.rich.task_ids[mark:]:
            self.rich.remove_task(bar)

    def __enter__(self) -> BarProgress:
        if self.depth == 0:
            self.rich.start()
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.rich.stop()


def progress_for(stream: IO[str] | None = None, tty: bool | None = None) -> Progress:
    """Bars when ``stream`` (default stdout) is a terminal (or ``tty`` says so), else none."""
    stream = sys.stdout if stream is None else stream
    is_tty = stream.isatty() if tty is None else tty
    if not is_tty:
        return Progress()
    from rich.console import Console

    return BarProgress(Console(file=stream, force_terminal=True))


class RoundBar(Tracker):
    """The federation's rounds as a task: the server's round log tells it each round, as it
    tells the experiment trackers."""

    name = "progress"

    def __init__(self, progress: Progress, rounds: int) -> None:
        self.rounds = progress.task("federation", rounds, "rounds")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.rounds.update(step)

    def close(self, ok: bool = True) -> None:
        self.rounds.finish()
