"""The sweep: run the missing cells, read back the finished ones, and rewrite tradeoff.csv, .md and
.png after each cell run, so a stopped sweep leaves its tables up to date."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.tracking.open import check_tracking
from simulations.progress import Progress, progress_for
from simulations.ray_session import kept_ray
from simulations.tradeoff.cells import completed_summary, run_cell
from simulations.tradeoff.outputs import CSV_FILE, PLOT_FILE, TABLE_FILE, write_outputs
from simulations.tradeoff.progress import SweepClock, clock
from simulations.tradeoff.rows import summary_rows
from simulations.tradeoff.spec import SweepSpec, epsilon_label
from simulations.tradeoff.sweep_record import check_sweep_record
from simulations.tradeoff.tracking import track_sweep

Cell = tuple[float, int]     # (epsilon, seed)


@dataclass(frozen=True)
class TradeoffOutcome:
    sweep_dir: Path
    rows: list[dict]
    ran: int           # cells simulated by this call
    skipped: int       # cells read back from an earlier call


def run_tradeoff(spec: SweepSpec, echo: Callable[[str], None] = print,
                 verbose: bool = False, bars: Progress | None = None) -> TradeoffOutcome:
    """Run the missing cells, read back the finished ones, write csv/md/png after each cell.
    ``bars``: the progress display (default: bars when printing to a terminal, else none, the
    cells' start and end lines saying the elapsed time and the ETA)."""
    check_tracking(spec.base)     # a missing extra is one line before any work
    spec.directory.mkdir(parents=True, exist_ok=True)
    check_sweep_record(spec)
    cells = spec.cells()
    done = {cell: completed_summary(spec, *cell) for cell in cells}
    progress = SweepClock(todo=sum(summary is None for summary in done.values()))
    rows_by_cell: dict[Cell, list[dict]] = {}
    bars = bars or (progress_for() if echo is print else Progress())
    cells_bar = bars.task("tradeoff cells", progress.todo, "cells")
    with kept_ray(), bars:        # one Ray instance for every cell, not one per cell
        for index, (eps, seed) in enumerate(cells, 1):
            tag = f"[tradeoff] cell {index}/{len(cells)} eps={epsilon_label(eps)} seed={seed}"
            summary = done[(eps, seed)]
            if summary is not None:
                echo(f"{tag}: skipped, finished earlier ({spec.cell_dir(eps, seed)})")
            else:
                summary = _run_timed(spec, (eps, seed), tag, progress, echo, verbose, bars)
                cells_bar.advance()
            rows_by_cell[(eps, seed)] = summary_rows(summary, eps, seed)
            if summary is not done[(eps, seed)]:
                write_outputs(_rows(cells, rows_by_cell), spec)
    rows = _rows(cells, rows_by_cell)
    write_outputs(rows, spec)
    track_sweep(spec, echo)
    ran = len(progress.durations)
    echo(f"[tradeoff] {len(cells)} cells ({ran} run, {len(cells) - ran} reused) in "
         f"{progress.elapsed()}: {spec.directory / TABLE_FILE}, {spec.directory / CSV_FILE}, "
         f"{spec.directory / PLOT_FILE}")
    return TradeoffOutcome(spec.directory, rows, ran, len(cells) - ran)


def _run_timed(spec: SweepSpec, cell: Cell, tag: str, progress: SweepClock,
               echo: Callable[[str], None], verbose: bool, bars: Progress) -> dict:
    """Run one cell, saying when it starts and ends with the elapsed time and the ETA."""
    echo(f"{tag}: start (elapsed {progress.elapsed()}, ETA {progress.eta()})")
    began = time.monotonic()
    summary = run_cell(spec, *cell, echo, verbose, bars)
    progress.durations.append(time.monotonic() - began)
    echo(f"{tag}: done in {clock(progress.durations[-1])} (elapsed {progress.elapsed()}, ETA "
         f"{progress.eta()} for {progress.left} more cell(s))")
    return summary


def _rows(cells: list[Cell], rows_by_cell: dict[Cell, list[dict]]) -> list[dict]:
    """The rows of the cells done so far, in the sweep's cell order."""
    return [r for c in cells if c in rows_by_cell for r in rows_by_cell[c]]
