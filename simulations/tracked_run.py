"""One simulated run's companions: its experiment trackers (``--track``, opened once the run
directory exists, closed when the run ends: finished, or failed on an error) and its progress
display (bars on a terminal, shared with a sweep that runs it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from common.config import RunConfig
from common.tracking.group import TrackerGroup
from common.tracking.open import EXPERIMENT, open_trackers
from simulations.progress import Progress, RoundBar


class TrackedRun:
    """``with TrackedRun(progress) as run: tracker = run.open(cfg, run_dir, echo)``."""

    def __init__(self, progress: Progress, experiment: str = EXPERIMENT,
                 tags: Mapping[str, str] | None = None) -> None:
        self.progress = progress
        self.experiment = experiment
        self.tags = {"kind": "simulation", **(tags or {})}
        self.tracker = TrackerGroup()

    def open(self, cfg: RunConfig, run_dir: Path, echo: Callable[[str], None]) -> TrackerGroup:
        """The run's trackers, and on a terminal the federation's round bar among them (the
        server's round log tells both every round)."""
        self.tracker = open_trackers(cfg, run_dir, experiment=self.experiment, tags=self.tags,
                                     warn=echo)
        if self.progress.bars:
            self.tracker.trackers.append(RoundBar(self.progress, cfg.rounds))
        return self.tracker

    def __enter__(self) -> TrackedRun:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        try:
            self.tracker.close(ok=kind is None)
        finally:
            self.progress.__exit__(kind, *rest)
