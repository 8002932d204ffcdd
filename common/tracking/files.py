"""Which files of a run directory are its report, sent to a tracker as artifacts (the models
and checkpoints stay in the run directory)."""

from __future__ import annotations

from pathlib import Path

from common import rundir

REPORT_FILES = (rundir.CONFIG, rundir.METRICS, rundir.SUMMARY, rundir.SITES_TABLE,
                rundir.REPORT, rundir.CURVE, "privacy_ledger.json", "partition.md",
                "partition.png", "partition.json")
SWEEP_FILES = ("sweep.json", "tradeoff.csv", "tradeoff.md", "tradeoff.png")


def report_files(directory: Path, names: tuple[str, ...] = REPORT_FILES) -> list[Path]:
    """The files of ``names`` that ``directory`` holds, in that order."""
    return [directory / name for name in names if (directory / name).is_file()]


def log_report(tracker, directory: Path, summary: dict | None = None) -> None:
    """The run's end: its final scores (summary.json, at the last round's step) and its report
    files as artifacts."""
    from common.tracking.values import summary_values

    if summary is not None:
        tracker.log_metrics(summary_values(summary), step=int(summary.get("rounds") or 0))
    tracker.log_files(report_files(directory))
