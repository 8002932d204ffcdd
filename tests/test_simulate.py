"""End to end: `fedclinic simulate` on Flower's simulation engine (real ServerApp + ClientApp)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common import rundir
from common.config import RunConfig
from fedclinic.cli import main

SMALL = dict(dataset="synthetic", num_samples=600, sites=3, rounds=2, local_epochs=2, model="cnn",
             width=16, optimizer="adam", lr=0.003, batch_size=16, seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    argv = ["simulate", "--output-dir", str(out), "--run-name", "demo"]
    for key, value in SMALL.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    assert main(argv) == 0
    return out / "demo"


def test_run_directory_has_every_artefact(run):
    for name in (rundir.CONFIG, "partition.md", "partition.png", "partition.json", rundir.METRICS,
                 rundir.CURVE, rundir.SITES_TABLE, rundir.FINAL_MODEL, rundir.SUMMARY,
                 rundir.REPORT, rundir.CHECKPOINT):
        assert (run / name).is_file(), name
    from common.task_defaults import with_task_defaults

    given, _ = with_task_defaults(SMALL)          # the CLI fills the recipe's defaults in
    assert RunConfig.load(run / rundir.CONFIG) == RunConfig.from_dict(
        {**given, "output_dir": str(run.parent)})
    for png in ("partition.png", rundir.CURVE):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_have_a_line_per_round_with_every_site(run):
    lines = rundir.read_jsonl(run / rundir.METRICS)
    assert [line["round"] for line in lines] == [0, 1, 2]
    for line in lines[1:]:
        assert sorted(line["sites"]) == ["0", "1", "2"]
        for site in line["sites"].values():
            assert site["train"]["num-examples"] > 0 and site["test"]["num-examples"] > 0
            assert 0.0 <= site["test"]["accuracy"] <= 1.0
        assert {"accuracy", "auc", "balanced_accuracy", "loss"} <= set(line["global"])


def test_federation_beats_the_initial_model(run):
    # on AUC: after 2 short rounds the 4-class outputs are still near uniform, where accuracy
    # flips with tiny logit differences (0.25 or 0.49 for the same losses); the ranking moves
    summary = json.loads((run / rundir.SUMMARY).read_text())
    initial = summary["initial"]["global"]["auc"]
    final = summary["federated"]["global"]["auc"]
    assert final > initial + 0.15, (initial, final)


def test_summary_compares_baselines_per_site(run):
    summary = json.loads((run / rundir.SUMMARY).read_text())
    for model in ("federated", "local", "pooled"):
        assert sorted(summary[model]["sites"]) == ["0", "1", "2"]
        assert 0.0 <= summary[model]["global"]["accuracy"] <= 1.0
    helped = summary["federation_helped"]
    assert sorted(helped) == ["0", "1", "2"]
    for site, verdict in helped.items():
        metric = verdict["metric"]
        assert metric in ("auc", "accuracy")
        delta = summary["federated"]["sites"][site][metric] - summary["local"]["sites"][site][metric]
        assert verdict["helped"] == (delta > 0)
    table = (run / rundir.SITES_TABLE).read_text()
    assert "did federation help this site?" in table
    assert len([row for row in table.splitlines() if row.startswith("| ")]) == 1 + 3 + 1


def test_final_model_matches_last_checkpoint_and_loads(run):
    final = torch.load(run / rundir.FINAL_MODEL, weights_only=False)
    latest = torch.load(run / rundir.CHECKPOINT, weights_only=False)
    assert latest["round"] == 2 and final["config"]["model"] == "cnn"
    for key, tensor in final["state_dict"].items():
        assert np.allclose(tensor.numpy(), latest["state_dict"][key].numpy())


def test_3d_shifted_fedprox_federation_without_baselines(tmp_path):
    """3D volumes, label skew + scanner shift, FedProx: sites get mu, profiles are recorded."""
    from simulations.simulate import simulate

    cfg = RunConfig(num_samples=120, spatial_dims=3, sites=2, rounds=1, model="cnn", width=8,
                    partition="dirichlet:1.0+shift", strategy="fedprox", proximal_mu=0.1,
                    baselines="", output_dir=str(tmp_path))
    outcome = simulate(cfg, echo=lambda line: None, run_name="fedprox3d")
    assert "local" not in outcome.summary and "pooled" not in outcome.summary
    sites = outcome.history[-1]["sites"]
    assert sorted(sites) == ["0", "1"]
    assert all(s["train"]["proximal_mu"] == pytest.approx(0.1) for s in sites.values())
    partition = json.loads((outcome.run_dir / "partition.json").read_text())
    text = json.dumps(partition)
    assert "reference" in text            # site 0 keeps the reference acquisition profile
    final = torch.load(outcome.run_dir / rundir.FINAL_MODEL, weights_only=False)
    assert final["task"]["spatial_dims"] == 3


def test_membership_inference_audit_of_the_final_model(run):
    summary = json.loads((run / rundir.SUMMARY).read_text())
    audit = summary["audit"]["federated"]
    assert sorted(audit["sites"]) == ["0", "1", "2"]
    for attack in ("loss-threshold", "calibrated"):
        result = audit["pooled"][attack]
        assert 0.0 <= result["auc"] <= 1.0 and 0.0 <= result["tpr_at_1pct_fpr"] <= 1.0
        assert result["n_members"] == result["n_nonmembers"] > 0
    assert "Empirical privacy audit" in (run / rundir.REPORT).read_text()
