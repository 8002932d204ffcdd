"""Several trackers as one. A tracker that fails while the run goes on (an MLflow server gone
away, a full disk) is named once and dropped: the run and its metrics.jsonl go on without it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.tracking.base import Tracker


class TrackerGroup(Tracker):
    """Fans every call out to ``trackers``; ``warn`` gets one line per tracker that fails."""

    name = "group"

    def __init__(self, trackers: Sequence[Tracker] = (),
                 warn: Callable[[str], None] = print) -> None:
        self.trackers = list(trackers)
        self.warn = warn

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker must not end the run
                self.trackers.remove(tracker)
                self.warn(f"fedclinic: tracking with {tracker.name} stopped ({what}: "
                          f"{type(exc).__name__}: {exc}); the run goes on, metrics.jsonl "
                          f"keeps every round")
                try:
                    tracker.close(ok=False)
                except Exception:  # noqa: BLE001
                    pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._each("parameters", lambda t: t.log_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._each(f"metrics of step {step}", lambda t: t.log_metrics(metrics, step))

    def log_files(self, paths: Sequence[Path]) -> None:
        self._each("report files", lambda t: t.log_files(paths))

    def close(self, ok: bool = True) -> None:
        self._each("closing the run", lambda t: t.close(ok))
        self.trackers = []
