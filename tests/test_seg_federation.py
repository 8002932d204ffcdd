"""End to end: `simulate --task segmentation` on Flower's Ray engine, 2D and 3D."""

import json

import pytest
import torch

from common import rundir
from common.config import ConfigError, RunConfig
from common.segmentation import EMPTY_MASK_CONVENTION
from simulations.simulate import simulate

torch.set_num_threads(1)

SEG_2D = dict(task="segmentation", model="unet", width=8, image_size=28, num_samples=200,
              sites=2, rounds=2, local_epochs=3, batch_size=4, optimizer="adam", lr=0.01,
              loss="dice_ce", augment="flip", partition="lesion:1.0", baselines="local,pooled",
              seed=0)


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    lines: list[str] = []
    cfg = RunConfig(**SEG_2D, output_dir=str(tmp_path_factory.mktemp("runs")))
    outcome = simulate(cfg, echo=lines.append, run_name="seg2d")
    return outcome, lines


def test_2d_federation_learns_to_segment(run_2d):
    outcome, lines = run_2d
    history = rundir.read_jsonl(outcome.run_dir / rundir.METRICS)
    assert [h["round"] for h in history] == [0, 1, 2]
    for line in history:
        assert {"loss", "dice", "iou", "hd95", "asd", "dice_c1"} <= set(line["global"])
    for line in history[1:]:
        assert sorted(line["sites"]) == ["0", "1"]
        for site in line["sites"].values():
            assert 0.0 <= site["test"]["dice"] <= 1.0 and site["test"]["hd95"] >= 0.0
    initial, final = history[0]["global"], history[-1]["global"]
    assert final["dice"] > initial["dice"] + 0.3, (initial["dice"], final["dice"])
    assert final["hd95"] < initial["hd95"]
    assert any(line.startswith("[round 2/2] global dice") for line in lines)
    final_model = torch.load(outcome.run_dir / rundir.FINAL_MODEL, weights_only=False)
    assert final_model["task"]["kind"] == "segmentation"
    assert final_model["task"]["num_classes"] == 2


def test_2d_report_compares_dice_per_site_and_shows_overlays(run_2d):
    outcome, _ = run_2d
    summary = json.loads((outcome.run_dir / rundir.SUMMARY).read_text())
    for model in ("federated", "local", "pooled"):
        assert sorted(summary[model]["sites"]) == ["0", "1"]
        assert 0.0 <= summary[model]["global"]["dice"] <= 1.0
    for site, verdict in summary["federation_helped"].items():
        delta = summary["federated"]["sites"][site]["dice"] - summary["local"]["sites"][site]["dice"]
        assert verdict["metric"] == "dice" and verdict["helped"] == (delta > 0)
    report = (outcome.run_dir / rundir.REPORT).read_text()
    for text in ("federated Dice | federated HD95 | local Dice", "did federation help this site?",
                 EMPTY_MASK_CONVENTION, rundir.CURVE, "## Predictions on test cases",
                 "mean per-pixel (per-voxel) cross-entropy"):
        assert text in report, text
    overlays = summary["overlays"]
    assert sorted(overlays) == ["0", "1"] and all(len(paths) == 3 for paths in overlays.values())
    for paths in overlays.values():
        for rel in paths:
            assert f"]({rel})" in report
            assert (outcome.run_dir / rel).read_bytes()[:4] == b"\x89PNG"
    audit = summary["audit"]["federated"]["pooled"]["loss-threshold"]
    assert 0.0 <= audit["auc"] <= 1.0 and audit["n_members"] == audit["n_nonmembers"] > 0
    partition = json.loads((outcome.run_dir / "partition.json").read_text())
    assert partition["classes"] == ["lesion none", "lesion small", "lesion medium",
                                    "lesion large"]


def test_3d_whole_volume_federation_with_sliding_window_inference(tmp_path):
    """Lesions fill ~1% of a volume: class-weighted CE keeps one round from collapsing to
    "all background" (which would score Dice 1 on the lesion-free quarter and nothing else)."""
    cfg = RunConfig(task="segmentation", model="unet", spatial_dims=3, width=4, num_samples=80,
                    sites=2, rounds=1, local_epochs=3, batch_size=4, optimizer="adam", lr=0.01,
                    loss="weighted_ce", roi_size=16, baselines="", output_dir=str(tmp_path))
    outcome = simulate(cfg, echo=lambda line: None, run_name="seg3d")
    initial, final = outcome.history[0]["global"], outcome.history[-1]["global"]
    assert final["dice"] > initial["dice"], (initial["dice"], final["dice"])
    assert final["hd95"] < initial["hd95"], (initial["hd95"], final["hd95"])
    saved = torch.load(outcome.run_dir / rundir.FINAL_MODEL, weights_only=False)
    assert saved["task"]["spatial_dims"] == 3 and saved["task"]["roi_size"] == 16
    report = (outcome.run_dir / rundir.REPORT).read_text()
    assert "sliding windows of 16 voxels" in report and "local Dice" not in report
    for paths in outcome.summary["overlays"].values():
        assert all((outcome.run_dir / rel).is_file() for rel in paths)


def test_simulate_refuses_mismatched_task_and_model(tmp_path):
    with pytest.raises(ConfigError, match="task='segmentation' needs a segmentation network"):
        simulate(RunConfig(task="segmentation", model="cnn", output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="needs a classifier"):
        simulate(RunConfig(model="unet", output_dir=str(tmp_path)))
    assert not list(tmp_path.iterdir())          # refused before creating a run directory
