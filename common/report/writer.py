"""Write a run's report into its run directory: summary.json, sites.md, the curve, report.md."""

from __future__ import annotations

from pathlib import Path

from common import rundir
from common.report.markdown import report_markdown
from common.report.plots import plot_learning_curve
from common.report.record import RunRecord
from common.report.tables import sites_table

PARTITION_REPORT = "partition.md"   # written by the simulator beside the run's report


def write_report(run_dir: Path, record: RunRecord) -> None:
    """summary.json (`RunRecord.to_json`) for scripts; sites.md, the learning curve and report.md
    for people."""
    summary = record.to_json()
    rundir.write_json(run_dir / rundir.SUMMARY, summary)
    table = sites_table(summary)
    (run_dir / rundir.SITES_TABLE).write_text(table)
    plot_learning_curve(record, run_dir / rundir.CURVE)
    partition = (run_dir / PARTITION_REPORT).exists()
    (run_dir / rundir.REPORT).write_text(report_markdown(record, table, partition))
