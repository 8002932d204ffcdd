"""--track mlflow / tensorboard: values read back with each library's own reader (MLflow's
client on the local store, TensorBoard's EventAccumulator), for the trackers alone, a deployed
ServerApp's own trackers, and a real tradeoff cell (simulate + sweep) under DP."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from common import rundir
from common.config import ConfigError, RunConfig
from common.tracking import extras
from common.tracking.base import Tracker
from common.tracking.files import log_report
from common.tracking.group import TrackerGroup
from common.tracking.open import MLFLOW_DB, open_trackers
from common.tracking.spec import TrackTarget, parse_track
from common.tracking.values import round_values, summary_values

LINE = {"round": 1, "seconds": 2.5, "global": {"accuracy": 0.75, "auc": float("nan")},
        "sites": {"0": {"train": {"train_loss": 0.3, "epsilon": 1.5, "delta": 1e-5,
                                  "policy_id": "abc"},
                        "test": {"accuracy": 0.5}},
                  "1": {"train": {"train_loss": 0.4}, "test": {}}},
        "failures": {"site 2 (node 9) (train)": "gone"},
        "central_dp": {"epsilon": 2.0, "delta": 1e-4, "releases": 1},
        "validation": {"criterion": "val_loss", "value": 0.6, "best_round": 1}}
SUMMARY = {"rounds": 1, "wall_seconds": 9.0,
           "federated": {"global": {"accuracy": 0.75}, "sites": {"0": {"accuracy": 0.5}}},
           "pooled": {"global": {"accuracy": 0.8}, "sites": {"0": {"accuracy": 0.7}}},
           "privacy": {"max_epsilon": 1.5, "sites": {"0": {"epsilon": 1.5, "delta": 1e-5}}}}


def _mlflow_client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store.resolve() / MLFLOW_DB}")


def _events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_track_setting_grammar_and_flag():
    assert parse_track("") == ()
    assert parse_track("mlflow, tensorboard:/tmp/tb") == (
        TrackTarget("mlflow"), TrackTarget("tensorboard", "/tmp/tb"))
    assert parse_track("mlflow:http://host:5000")[0].where == "http://host:5000"
    with pytest.raises(ConfigError, match="unknown tracker 'wandb'"):
        RunConfig(track="wandb")
    with pytest.raises(ConfigError, match="mlflow is given twice"):
        RunConfig(track="mlflow,mlflow:x")
    from fedclinic.cli import build_parser
    from fedclinic.cli.options import config_from_args

    args = build_parser().parse_args(["simulate", "--track", "mlflow", "--track",
                                      "tensorboard:/tmp/tb"])
    assert config_from_args(args).track == "mlflow,tensorboard:/tmp/tb"


def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path):
    real = extras.importlib.import_module

    def no_mlflow(name, *a):
        if name.startswith("mlflow"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a)

    monkeypatch.setattr(extras.importlib, "import_module", no_mlflow)
    cfg = RunConfig(track="mlflow", output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"pip install 'fedclinic\[mlflow\]'"):
        open_trackers(cfg, tmp_path / "run")
    from fedclinic.cli import main

    assert main(["simulate", "--track", "mlflow", "--output-dir", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())          # nothing ran, no run directory


def test_values_are_flat_and_numeric():
    values = round_values(LINE)
    assert values["global/accuracy"] == 0.75 and "global/auc" not in values      # NaN left out
    assert values["site-0/test/accuracy"] == 0.5 and values["site-1/train/train_loss"] == 0.4
    assert values["privacy/site-0/epsilon"] == 1.5 and values["privacy/central/epsilon"] == 2.0
    assert values["validation/val_loss"] == 0.6 and values["failures"] == 1.0
    assert not any("policy_id" in k for k in values)                        # text is no metric
    final = summary_values(SUMMARY)
    assert final["final/pooled/site-0/accuracy"] == 0.7
    assert final["final/privacy/site-0/epsilon"] == 1.5 and final["final/wall_seconds"] == 9.0
    central = summary_values({**SUMMARY, "privacy": {"sites": 3, "epsilon": 2.5}})  # dp=client
    assert central["final/privacy/epsilon"] == 2.5
    assert not any(k.startswith("final/privacy/site-") for k in central)


def test_a_failing_tracker_is_dropped_and_the_run_goes_on():
    class Broken(Tracker):
        name = "broken"

        def log_metrics(self, metrics, step):
            raise OSError("disk full")

    class Kept(Tracker):
        steps: list[int] = []

        def log_metrics(self, metrics, step):
            self.steps.append(step)

    said: list[str] = []
    kept = Kept()
    group = TrackerGroup([Broken(), kept], warn=said.append)
    group.log_metrics({"a": 1.0}, 1)
    group.log_metrics({"a": 2.0}, 2)
    assert kept.steps == [1, 2] and len(said) == 1
    assert "tracking with broken stopped" in said[0] and "disk full" in said[0]


def _report_dir(run: Path) -> None:
    run.mkdir(parents=True)
    (run / rundir.REPORT).write_text("# report\n\nfederated acc 0.75\n")
    rundir.write_json(run / rundir.SUMMARY, SUMMARY)
    rundir.append_jsonl(run / rundir.METRICS, LINE)


def test_mlflow_and_tensorboard_read_back(tmp_path):
    out = tmp_path / "runs"
    run = out / "run-a"
    _report_dir(run)
    cfg = RunConfig(track="mlflow,tensorboard", output_dir=str(out), rounds=3)
    said: list[str] = []
    group = open_trackers(cfg, run, tags={"kind": "test"}, warn=said.append)
    assert "MLflow sqlite:///" in said[0] and "TensorBoard" in said[0]
    for step, acc in ((0, 0.25), (1, 0.75)):
        group.log_metrics(round_values({**LINE, "round": step,
                                        "global": {"accuracy": acc}}), step)
    log_report(group, run, SUMMARY)
    group.close()

    client = _mlflow_client(out)
    found = client.search_runs([client.get_experiment_by_name("fedclinic").experiment_id])
    assert len(found) == 1
    info = found[0]
    assert info.info.status == "FINISHED" and info.info.run_name == "run-a"
    assert info.data.params["rounds"] == "3" and info.data.tags["kind"] == "test"
    history = client.get_metric_history(info.info.run_id, "global/accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.25), (1, 0.75)]
    eps = client.get_metric_history(info.info.run_id, "privacy/site-0/epsilon")
    assert [m.value for m in eps] == [1.5, 1.5]
    assert info.data.metrics["final/pooled/global/accuracy"] == 0.8
    files = {a.path for a in client.list_artifacts(info.info.run_id)}
    assert {rundir.REPORT, rundir.SUMMARY, rundir.METRICS} <= files

    events = _events(run / "tensorboard")
    assert [(s.step, s.value) for s in events.Scalars("global/accuracy")] == [(0, 0.25),
                                                                             (1, 0.75)]
    assert events.Scalars("site-0/test/accuracy")[0].value == 0.5
    assert events.Scalars("privacy/central/epsilon")[0].value == 2.0
    report = events.Tensors(f"files/{rundir.REPORT}/text_summary")[0].tensor_proto.string_val
    assert b"federated acc 0.75" in report[0]
    params = events.Tensors("parameters/text_summary")[0].tensor_proto.string_val[0]
    assert b"| rounds | 3 |" in params

    # the same run directory again (a resumed deployed run) logs into the same MLflow run
    again = open_trackers(cfg.replace(rounds=5), run, warn=said.append)
    again.log_metrics({"global/accuracy": 0.9}, 2)
    again.close()
    runs = client.search_runs([client.get_experiment_by_name("fedclinic").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["rounds"] == "3"
    history = client.get_metric_history(runs[0].info.run_id, "global/accuracy")
    assert [m.step for m in history] == [0, 1, 2]


def test_tensorboard_dir_and_a_failed_run(tmp_path):
    cfg = RunConfig(track="tensorboard:" + str(tmp_path / "tb"), output_dir=str(tmp_path))
    group = open_trackers(cfg, tmp_path / "runs" / "run-b", warn=lambda _: None)
    group.log_metrics({"global/accuracy": 0.5}, 1)
    group.close(ok=False)
    events = _events(tmp_path / "tb" / "run-b")
    assert events.Scalars("global/accuracy")[0].value == 0.5
    assert events.Tensors("status/text_summary")[0].tensor_proto.string_val == [b"failed"]


def test_a_deployed_server_app_tracks_its_run(tmp_path, monkeypatch):
    """Deployment: the ServerApp reads track from the run config, opens its own trackers in the
    server's runs folder, hands them the rounds and sends the report when the run is done."""
    from flwr.app import Context, RecordDict

    import server.app as server_app
    from common.report.record import RunRecord

    monkeypatch.setenv(server_app.RUNS_DIR_ENV, str(tmp_path / "runs"))
    seen = {}

    def fake_federation(grid, cfg, run_dir, echo, site_config, tracker):
        tracker.log_metrics(round_values(LINE), 1)
        rundir.append_jsonl(run_dir / rundir.METRICS, LINE)
        seen["run_dir"] = run_dir
        return None, SimpleNamespace(stopped="")

    def fake_record(cfg, log, wall):
        return RunRecord(config=cfg, history=[{**LINE, "round": 0}, LINE], wall_seconds=wall)

    def fake_report(record, run_dir):
        (run_dir / rundir.REPORT).write_text("# deployed\n")

    monkeypatch.setattr(server_app, "run_federation", fake_federation)
    monkeypatch.setattr(server_app, "run_record", fake_record)
    monkeypatch.setattr(server_app, "write_deployment_report", fake_report)
    monkeypatch.setattr(server_app, "deployed_record", lambda record, log: record, raising=False)
    app = server_app.make_server_app()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"track": "mlflow", "rounds": 1})
    app._main(None, context)

    client = _mlflow_client(tmp_path / "runs")
    run = client.search_runs([client.get_experiment_by_name("fedclinic").experiment_id])[0]
    assert run.info.run_name == seen["run_dir"].name and run.info.status == "FINISHED"
    assert run.data.tags["kind"] == "deployment"
    assert run.data.metrics["privacy/site-0/epsilon"] == 1.5
    assert rundir.REPORT in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow   # ~30 s on 2 cores; test_tradeoff runs a real DP cell untracked
def test_a_tracked_dp_tradeoff_cell_end_to_end(tmp_path, capsys):
    """A real sweep of one DP cell (federation + both baselines) tracked by both: the cell's
    rounds, each site's epsilon and report files, and the sweep's table, read back."""
    import torch

    from fedclinic.cli import main

    torch.set_num_threads(1)
    argv = ["tradeoff", "--epsilons", "4", "--seeds", "1", "--output-dir", str(tmp_path),
            "--track", "mlflow", "--track", "tensorboard", "--model", "cnn", "--width", "8",
            "--num-samples", "200", "--sites", "2", "--rounds", "2", "--local-epochs", "1",
            "--batch-size", "16", "--loss", "ce"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "tradeoff-synthetic-iid-fedavg-cnn"
    cell = sweep / "eps4-seed0"
    assert "fedclinic: tracking to MLflow" in out

    client = _mlflow_client(sweep)
    experiment = client.get_experiment_by_name(sweep.name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"eps4-seed0", sweep.name}
    run = runs["eps4-seed0"]
    assert run.data.tags["epsilon"] == "4" and run.data.params["dp"] == "sample"
    history = client.get_metric_history(run.info.run_id, "global/accuracy")
    assert [m.step for m in history] == [0, 1, 2]
    lines = rundir.read_jsonl(cell / rundir.METRICS)
    assert [m.value for m in history] == pytest.approx([ln["global"]["accuracy"]
                                                        for ln in lines])
    summary = json.loads((cell / rundir.SUMMARY).read_text())
    for site in ("0", "1"):
        spent = client.get_metric_history(run.info.run_id, f"privacy/site-{site}/epsilon")
        assert [m.step for m in spent] == [1, 2]
        assert spent[-1].value == pytest.approx(summary["privacy"]["sites"][site]["epsilon"])
        assert 0 < spent[-1].value <= 4.0
    assert "final/pooled/global/accuracy" in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {rundir.REPORT, rundir.SUMMARY, rundir.CURVE, "privacy_ledger.json"} <= files
    sweep_files = {a.path for a in client.list_artifacts(runs[sweep.name].info.run_id)}
    assert {"tradeoff.csv", "tradeoff.md", "tradeoff.png"} <= sweep_files

    events = _events(cell / "tensorboard")
    assert [s.step for s in events.Scalars("global/accuracy")] == [0, 1, 2]
    assert events.Scalars("privacy/site-1/epsilon")[-1].value == pytest.approx(
        summary["privacy"]["sites"]["1"]["epsilon"])
    assert f"files/{rundir.CURVE}" in events.Tags()["images"]
