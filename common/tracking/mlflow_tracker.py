"""MLflow: one MLflow run per fedclinic run, through `MlflowClient` (no global active run, so
a ServerApp thread and the simulator can share it). Needs the fedclinic[mlflow] extra.

The run is found again by its ``fedclinic.run`` tag: a resumed deployed run goes on logging
into the MLflow run it started (its parameters are not logged twice)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.tracking.base import Tracker

RUN_TAG = "fedclinic.run"      # the run directory's name
MAX_BATCH = 100                # MLflow takes at most 100 params / 1000 metrics per batch
MAX_PARAM = 6000               # characters of one param value


def is_file_store(uri: str) -> bool:
    """A plain path or a file: URI (MLflow's file store, which it refuses unless allowed)."""
    return "://" not in uri or uri.startswith("file:")


class MlflowTracker(Tracker):
    """Logs into ``experiment`` of the store at ``uri``; ``artifact_location`` is where a new
    experiment keeps its artifacts ('' = the store's default)."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, run_name: str,
                 tags: Mapping[str, str] | None = None, artifact_location: str = "") -> None:
        if is_file_store(uri):
            # asked for by name: MLflow's file store is in maintenance mode and refuses to open
            # unless allowed (the default store here is sqlite)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):   # the store's set-up lines
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        experiment_id = self._experiment(experiment, artifact_location)
        self.resumed = False
        found = self.client.search_runs([experiment_id],
                                        filter_string=f"tags.`{RUN_TAG}` = '{run_name}'",
                                        max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.resumed = True
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            all_tags = {RUN_TAG: run_name, **(tags or {})}
            self.run_id = self.client.create_run(experiment_id, run_name=run_name,
                                                 tags=all_tags).info.run_id

    def _experiment(self, name: str, artifact_location: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location or None)
        except Exception:  # noqa: BLE001 - another run created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.resumed:
            return
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_BATCH * 10):
            self.client.log_batch(self.run_id, metrics=items[i:i + MAX_BATCH * 10])

    def log_files(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")
