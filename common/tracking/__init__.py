"""Experiment tracking: a run's parameters, per-round metrics, privacy spent and report files
sent to MLflow and/or TensorBoard (``--track``), beside metrics.jsonl, which stays the record.

One concept per module: `spec` (the ``track`` setting's grammar), `base` (the `Tracker` a run
talks to: every method a no-op), `values` (metrics.jsonl lines and summary.json as flat
numeric keys), `group` (several trackers as one; a failing one is dropped with a warning, the
run goes on), `mlflow_tracker`, `tensorboard_tracker`, `extras` (the optional packages and the
pip command when one is missing), `files` (which run files are the report) and `open` (a run's
trackers from its config, default locations included). No Flower here.
"""
