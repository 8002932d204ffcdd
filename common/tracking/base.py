"""What a run tells an experiment tracker. The base class does nothing, so a run without
``--track`` calls the same methods at no cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class Tracker:
    """One tracked run. Subclasses send each call to their library; every method here is a
    no-op. Values are already flat: `common.tracking.values` makes them."""

    name = "none"

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's settings (the RunConfig), once at the start."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Numeric values at ``step`` (the round; 0 = the initial model)."""

    def log_files(self, paths: Sequence[Path]) -> None:
        """Report files (report.md, summary.json, the learning curve, ...) as artifacts."""

    def close(self, ok: bool = True) -> None:
        """End the tracked run: finished, or failed when ``ok`` is False."""
