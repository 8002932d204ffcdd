"""The sweep as one tracked run of its own (``--track``): its arguments as parameters and
tradeoff.csv, .md, .png and sweep.json as artifacts, in the same MLflow experiment as its cells
(each cell is a run tagged with its epsilon and seed) and the same default store
(``SWEEP_DIR/mlflow.db``); TensorBoard in ``SWEEP_DIR/tensorboard``."""

from __future__ import annotations

from collections.abc import Callable

from common.tracking.files import SWEEP_FILES, report_files
from common.tracking.open import open_trackers
from simulations.tradeoff.spec import SweepSpec


def cell_tags(spec: SweepSpec, epsilon_label: str, seed: int) -> dict[str, str]:
    """What a cell's tracked run is tagged with."""
    return {"kind": "tradeoff-cell", "sweep": spec.name, "epsilon": epsilon_label,
            "seed": str(seed)}


def track_sweep(spec: SweepSpec, echo: Callable[[str], None]) -> None:
    """Log the finished sweep's tables and plot (nothing without ``track``)."""
    if not spec.base.track:
        return
    record = spec.record()
    params = {"epsilons": ",".join(record["epsilons"]),
              "seeds": ",".join(map(str, record["seeds"])), **record["options"]}
    tracker = open_trackers(spec.base, spec.directory, params=params, run_name=spec.name,
                            experiment=spec.name, tags={"kind": "tradeoff"},
                            store_dir=spec.directory, warn=echo)
    try:
        tracker.log_files(report_files(spec.directory, SWEEP_FILES))
    except BaseException:
        tracker.close(ok=False)
        raise
    tracker.close()
