"""A run's trackers from its ``track`` setting, each at its default place unless the setting
names one: MLflow in a sqlite store beside the run directories (``OUTPUT_DIR/mlflow.db``,
artifacts in ``OUTPUT_DIR/mlartifacts``; a deployed run's OUTPUT_DIR is the server's runs
folder), so the runs of one output folder can be compared in one MLflow UI;
TensorBoard in ``RUN_DIR/tensorboard`` (``DIR/RUN_NAME`` for ``tensorboard:DIR``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.config import ConfigError, RunConfig
from common.tracking.base import Tracker
from common.tracking.extras import check_extras
from common.tracking.group import TrackerGroup
from common.tracking.spec import TrackTarget, parse_track

EXPERIMENT = "fedclinic"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
TENSORBOARD_DIR = "tensorboard"


def check_tracking(cfg: RunConfig) -> None:
    """Before any work: ConfigError naming the pip command when a tracker's extra is missing."""
    check_extras([t.kind for t in parse_track(cfg.track)])


def mlflow_location(where: str, store_dir: Path) -> tuple[str, str]:
    """(tracking URI, artifact location of a new experiment) for ``mlflow[:where]``."""
    if where:
        if where.startswith("sqlite:///"):
            db = Path(where[len("sqlite:///"):])
            return where, (db.resolve().parent / MLFLOW_ARTIFACTS).as_uri()
        return where, ""
    store_dir = store_dir.resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    return (f"sqlite:///{store_dir / MLFLOW_DB}", (store_dir / MLFLOW_ARTIFACTS).as_uri())


def _open_one(target: TrackTarget, run_dir: Path, store_dir: Path, run_name: str,
              experiment: str, tags: Mapping[str, str]) -> Tracker:
    if target.kind == "mlflow":
        from common.tracking.mlflow_tracker import MlflowTracker

        uri, artifacts = mlflow_location(target.where, store_dir)
        return MlflowTracker(uri, experiment, run_name, tags, artifacts)
    from common.tracking.tensorboard_tracker import TensorBoardTracker

    logdir = Path(target.where) / run_name if target.where else run_dir / TENSORBOARD_DIR
    return TensorBoardTracker(logdir)


def open_trackers(cfg: RunConfig, run_dir: Path, *, params: Mapping[str, Any] | None = None,
                  run_name: str | None = None, experiment: str = EXPERIMENT,
                  tags: Mapping[str, str] | None = None, store_dir: Path | None = None,
                  warn: Callable[[str], None] = print) -> TrackerGroup:
    """Every tracker ``cfg.track`` names, opened and given the run's parameters (``params``,
    default the config). Empty (and free) without ``track``. A tracker that cannot open is a
    ConfigError naming it: nothing has trained yet. ``store_dir``: the folder of the default
    MLflow store (default: the run directory's parent, the output folder)."""
    targets = parse_track(cfg.track)
    if not targets:
        return TrackerGroup([], warn)
    check_extras([t.kind for t in targets])
    name = run_name or Path(run_dir).name
    opened: list[Tracker] = []
    for target in targets:
        try:
            store = Path(store_dir) if store_dir is not None else Path(run_dir).parent
            opened.append(_open_one(target, Path(run_dir), store, name,
                                    experiment, {k: str(v) for k, v in (tags or {}).items()}))
        except Exception as exc:
            for tracker in opened:
                tracker.close(ok=False)
            raise ConfigError(f"--track {target.kind}{':' + target.where if target.where else ''}"
                              f": cannot start tracking ({type(exc).__name__}: {exc})") from exc
    group = TrackerGroup(opened, warn)
    group.log_params(cfg.to_dict() if params is None else params)
    where = ", ".join(_where(t) for t in opened)
    warn(f"fedclinic: tracking to {where}")
    return group


def _where(tracker: Tracker) -> str:
    if tracker.name == "mlflow":
        return f"MLflow {tracker.uri} (run {tracker.run_id})"
    return f"TensorBoard {tracker.logdir}"
