"""One (epsilon, seed) cell: a full `simulate()` run in its own folder, or its summary read back
when an earlier call finished it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from common import rundir
from common.config import ConfigError
from simulations.progress import Progress
from simulations.simulate import simulate
from simulations.tradeoff.spec import SweepSpec, cell_name, epsilon_label
from simulations.tradeoff.tracking import cell_tags

# Settings that do not change a cell's numbers: a finished cell is reused whatever they are
NOT_COMPARED = ("output_dir", "track")


def completed_summary(spec: SweepSpec, epsilon: float, seed: int) -> dict | None:
    """The cell's summary.json when its run finished (every model it should have), else None.

    A finished run made with another configuration is an error: its numbers belong to a
    different experiment."""
    path = spec.cell_dir(epsilon, seed) / rundir.SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    expected = spec.config(epsilon, seed)
    needed = ("federated", *expected.baseline_list) + (("privacy",) if expected.dp != "off" else ())
    if not isinstance(summary, dict) or any(key not in summary for key in needed):
        return None
    ran = {k: v for k, v in summary.get("config", {}).items() if k not in NOT_COMPARED}
    want = {k: v for k, v in expected.to_dict().items() if k not in NOT_COMPARED}
    if ran != want:
        diff = sorted(k for k in set(ran) | set(want) if ran.get(k) != want.get(k))
        raise ConfigError(f"{path}: a finished run with other settings ({', '.join(diff)}) is in "
                          f"this sweep's cell folder; move it away or use another --sweep-name")
    return summary


def run_cell(spec: SweepSpec, epsilon: float, seed: int, echo: Callable[[str], None],
             verbose: bool = False, progress: Progress | None = None) -> dict:
    """Run one cell with simulate(); an unfinished earlier attempt's folder is replaced.
    ``progress``: the sweep's display (the cell's bars join it); tracked (``--track``) in the
    sweep's experiment, tagged with the cell's epsilon and seed."""
    where = spec.cell_dir(epsilon, seed)
    if where.exists():
        echo(f"[tradeoff] removing the unfinished run in {where}")
        shutil.rmtree(where)
    progress = progress or Progress()
    mark = progress.mark()
    try:
        outcome = simulate(spec.config(epsilon, seed), echo=echo, verbose=verbose,
                           run_name=cell_name(epsilon, seed), progress=progress,
                           experiment=spec.name,
                           track_tags=cell_tags(spec, epsilon_label(epsilon), seed))
    finally:
        progress.forget(mark)           # the next cell's bars replace this one's
    if Path(outcome.run_dir).resolve() != where.resolve():
        raise RuntimeError(f"simulate wrote cell eps={epsilon_label(epsilon)} seed={seed} to "
                           f"{outcome.run_dir}, expected {where}")
    return outcome.summary
