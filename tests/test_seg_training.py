"""Segmentation paths of training, DP-SGD, evaluation, partition, report and tradeoff (no Ray)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.config import ConfigError, RunConfig
from common.datasets import synthetic
from common.datasets.base import DataError, Dataset, Split, TaskInfo
from common.training.dp_local import train_local_dp
from common.training.dp_wrapping import dp_wrapped
from common.models import build_model
from common.seg_data import (
    LESION_BINS,
    SegmentationTask,
    check_dp_volume_mode,
    check_task_model,
    for_task,
    lesion_size_bins,
    segmentation_view,
)
from common.segmentation import EMPTY_MASK_CONVENTION
from common.training.local import train_local
from common.training.losses import make_loss
from common.training.prediction import evaluate
from common.training.seg_inference import (
    per_sample_seg_loss,
    predict_masks,
    segmentation_logits,
)

torch.set_num_threads(1)

SEG = RunConfig(task="segmentation", model="unet", width=4, batch_size=8, optimizer="adam",
                lr=0.01, loss="dice_ce")


def _data(dims: int = 2, n: int = 48, size: int = 16, mode: str = "3d", roi: int = 0) -> Dataset:
    return segmentation_view(synthetic.load(size=size, spatial_dims=dims, num_samples=n, seed=0),
                             volume_mode=mode, roi_size=roi)


def _unet(task: TaskInfo, width: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", spatial_dims=task.spatial_dims, in_channels=task.channels,
                       num_classes=task.num_classes, width=width)


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- task view

def test_segmentation_view_counts_mask_classes_and_keeps_the_arrays():
    raw = synthetic.load(size=16, spatial_dims=3, num_samples=8, seed=0)
    seg = segmentation_view(raw, volume_mode="slices", roi_size=8)
    task = seg.task
    assert isinstance(task, SegmentationTask) and task.kind == "segmentation"
    assert (task.num_classes, task.class_names) == (2, ("background", "lesion"))
    assert (task.spatial_dims, task.data_dims, task.slices, task.roi_size) == (2, 3, True, 8)
    assert seg.train.masks is raw.train.masks and seg.train.images is raw.train.images
    assert segmentation_view(seg, volume_mode="3d").task.spatial_dims == 3   # idempotent view
    cfg = RunConfig(task="segmentation", model="unet", spatial_dims=3)
    assert for_task(for_task(raw, cfg), cfg).task == for_task(raw, cfg).task


def test_labels_that_are_mask_classes_keep_the_dataset_classes():
    """MSD's convention: label = largest mask class; its class names are the mask classes."""
    masks = np.zeros((4, 16, 16), dtype=np.uint8)
    masks[1, 2:4, 2:4] = 1
    split = Split(np.zeros((4, 1, 16, 16), np.float32), masks.reshape(4, -1).max(1).astype(
        np.int64), masks)
    task = TaskInfo("multiclass", 3, 2, 1, 16, ("background", "liver", "tumour"))
    seg = segmentation_view(Dataset("msd:x", task, split))
    assert seg.task.num_classes == 3 and seg.task.class_names == task.class_names


def test_segmentation_needs_masks_and_a_matching_model():
    no_masks = Dataset("plain", TaskInfo("binary", 2, 2, 1, 16),
                       Split(np.zeros((4, 1, 16, 16), np.float32), np.zeros(4, np.int64)))
    with pytest.raises(DataError, match="'plain': the train split has no masks"):
        segmentation_view(no_masks)
    with pytest.raises(ConfigError, match=r"model='resnet18' is a classifier.*unet"):
        check_task_model(RunConfig(task="segmentation", model="resnet18"))
    with pytest.raises(ConfigError, match=r"model='unet' is a segmentation network.*resnet18"):
        check_task_model(RunConfig(task="classification", model="unet"))
    check_task_model(RunConfig(task="segmentation", model="unet"))
    with pytest.raises(ValueError, match="segmentation task trains on masks"):
        make_loss(SEG, _data(n=8).task, np.zeros(8, np.int64))


# --------------------------------------------------------------------------- training

def test_training_lowers_the_loss_and_raises_dice():
    data = _data(n=64, size=28)
    model = _unet(data.task, width=8)
    before = evaluate(model, data.train, data.task)
    result = train_local(model, data.train, data.task, SEG.replace(batch_size=4), epochs=6,
                         seed=0)
    after = evaluate(model, data.train, data.task)
    assert result.num_samples == 64 and result.steps == 6 * 16
    assert after["loss"] < 0.5 * before["loss"]
    # beyond "predict background everywhere", which scores Dice 1 only on the lesion-free 25%
    assert before["dice"] < 0.1 and after["dice"] > 0.6, (before["dice"], after["dice"])
    assert after["hd95"] < before["hd95"]
    assert {"loss", "num_examples", "dice", "iou", "hd95", "asd", "dice_c1"} <= set(after)
    assert after["num_examples"] == 64.0


@pytest.mark.parametrize("loss", ["ce", "weighted_ce", "focal", "dice", "dice_ce"])
def test_every_loss_trains_deterministically_with_augmentation(loss):
    data = _data(n=16)
    cfg = SEG.replace(loss=loss, augment="flip,rotate,elastic,intensity")
    runs = []
    for seed in (3, 3, 4):
        model = _unet(data.task)
        result = train_local(model, data.train, data.task, cfg, epochs=1, seed=seed)
        assert math.isfinite(result.loss) and result.steps == 2
        runs.append(_weights(model))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_fedprox_pulls_segmentation_weights_towards_the_global_model():
    data = _data(n=16)
    start = _unet(data.task)
    anchor = _weights(start)

    def distance(mu: float) -> float:
        model = _unet(data.task)
        train_local(model, data.train, data.task, SEG.replace(lr=0.05), epochs=2, seed=0,
                    proximal_mu=mu, global_params=anchor)
        return sum(float(((p - a) ** 2).sum()) for p, a in zip(_weights(model), anchor))

    assert distance(10.0) < 0.5 * distance(0.0)


def test_slice_mode_trains_on_every_slice_and_predicts_volumes_slice_by_slice():
    data = _data(dims=3, n=8, mode="slices")
    task, train = data.task, data.train
    model = _unet(task)
    assert task.spatial_dims == 2 and train.images.shape[1:] == (1, 16, 16, 16)
    result = train_local(model, train, task, SEG.replace(batch_size=32), epochs=1, seed=0)
    assert result.num_samples == 8 and result.steps == math.ceil(8 * 16 / 32)
    pred = predict_masks(model, train.images[:2], task, batch_size=5)
    assert pred.shape == (2, 16, 16, 16) and pred.dtype == np.uint8
    with torch.no_grad():
        model.eval()
        z = 7
        manual = model(torch.from_numpy(train.images[:2, :, z])).argmax(1).numpy()
    assert np.array_equal(pred[:, z], manual)
    metrics = evaluate(model, data.test, task)
    assert metrics["num_examples"] == len(data.test) and 0.0 <= metrics["dice"] <= 1.0


def test_sliding_window_equals_whole_volume_when_the_roi_covers_it():
    data = _data(dims=3, n=8)
    model, images = _unet(data.task), data.test.images

    def logits(roi: int) -> torch.Tensor:
        return torch.cat([out for _, out in segmentation_logits(model, images, data.task,
                                                                roi_size=roi)])

    whole = logits(0)
    assert whole.shape == (len(images), 2, 16, 16, 16)
    torch.testing.assert_close(logits(16), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(40), whole, rtol=1e-5, atol=1e-5)   # clipped to 16
    windows = logits(8)
    assert windows.shape == whole.shape and torch.isfinite(windows).all()
    assert not torch.allclose(windows, whole)      # 8^3 windows see less context
    # the task's roi is the default
    roi_task = _data(dims=3, n=8, roi=8).task
    torch.testing.assert_close(torch.cat([o for _, o in segmentation_logits(
        model, images, roi_task)]), windows)


def test_evaluation_loss_is_voxel_cross_entropy_and_per_sample_loss_matches():
    data = _data(n=12)
    model = _unet(data.task)
    with torch.no_grad():
        model.eval()
        out = model(torch.from_numpy(data.test.images)).double()
    target = torch.from_numpy(data.test.masks.astype(np.int64))
    metrics = evaluate(model, data.test, data.task, batch_size=2)
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(out, target)), rel=1e-5)
    per_sample = per_sample_seg_loss(model, data.test, data.task, batch_size=2)
    expected = F.cross_entropy(out, target, reduction="none").flatten(1).mean(1).numpy()
    np.testing.assert_allclose(per_sample, expected, rtol=1e-5)


def test_bad_segmentation_splits_are_named():
    data = _data(n=8)
    model = _unet(data.task)
    no_mask = Split(data.test.images, data.test.labels)
    with pytest.raises(ValueError, match="evaluate: a segmentation task needs masks"):
        evaluate(model, no_mask, data.task)
    wrong = Split(data.test.images, data.test.labels, data.test.masks[:, :8])
    with pytest.raises(ValueError, match=r"train_local: masks have shape"):
        train_local(model, wrong, data.task, SEG, epochs=1, seed=0)


# --------------------------------------------------------------------------- DP-SGD

def test_two_dp_sgd_steps_on_a_tiny_unet_change_the_weights():
    data = _data(n=32)
    model = _unet(data.task)
    before = _weights(model)
    cfg = SEG.replace(dp="sample", lr=0.05, augment="flip")
    result = train_local_dp(model, data.train, data.task, cfg, epochs=1, seed=0,
                            noise_multiplier=1.0, sample_rate=0.25, steps=2)
    assert result.steps == 2 and math.isfinite(result.loss) and result.grad_sample_mode == "hooks"
    assert any(not torch.equal(a, b) for a, b in zip(_weights(model), before))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_unet_per_sample_gradients_match_a_loop():
    """Opacus' hook mode handles the U-Net's transposed convolutions exactly."""
    data = _data(n=8)
    model = _unet(data.task)
    x = torch.from_numpy(data.train.images[:3])
    y = torch.from_numpy(data.train.masks[:3].astype(np.int64))
    loop = []
    for i in range(3):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        loop.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with dp_wrapped(model, optimizer, mode="hooks", noise_multiplier=0.0, max_grad_norm=1.0,
                    expected_batch_size=3) as (net, _):
        # mean over samples of per-sample voxel means == the batch voxel mean (equal sizes)
        F.cross_entropy(net(x), y).backward()
        got = [p.grad_sample.clone() for p in model.parameters()]
    for j, g in enumerate(got):
        torch.testing.assert_close(g, torch.stack([row[j] for row in loop]), rtol=1e-4,
                                   atol=1e-6)


def test_dp_refuses_slice_mode():
    data = _data(dims=3, n=8, mode="slices")
    cfg = SEG.replace(dp="sample", spatial_dims=3, volume_mode="slices")
    with pytest.raises(ConfigError, match="volume_mode='slices'"):
        check_dp_volume_mode(cfg, data.task)
    with pytest.raises(ConfigError, match="slices"):
        train_local_dp(_unet(data.task), data.train, data.task, cfg, epochs=1, seed=0,
                       noise_multiplier=1.0, sample_rate=0.5, steps=1)


# --------------------------------------------------------------------------- partition

def test_lesion_size_bins_are_tertiles_of_non_empty_masks():
    masks = np.zeros((7, 10, 10), dtype=np.uint8)
    for i, area in enumerate([0, 1, 2, 3, 4, 5, 6]):
        masks[i].flat[:area] = 1
    assert lesion_size_bins(masks).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert len(LESION_BINS) == 4


def test_lesion_partition_skews_lesion_sizes_and_shift_leaves_masks_alone():
    from common.partitions.federation import build_federation
    from simulations.partition_report import label_histograms

    data = _data(n=240)
    cfg = RunConfig(task="segmentation", model="unet", sites=3, partition="lesion:0.1", seed=1)
    plain = build_federation(data, cfg)
    shifted = build_federation(data, cfg.replace(partition="lesion:0.1+shift"))
    hist = label_histograms(plain)
    assert hist.shape == (3, 4) and hist.sum() == 240
    shares = hist / hist.sum(axis=1, keepdims=True)
    assert (shares.max(axis=0) - shares.min(axis=0)).max() > 0.3     # skewed over the bins
    bins = lesion_size_bins(data.train.masks)
    for site in plain.sites:
        assert np.array_equal(np.bincount(bins[site.indices], minlength=4), hist[site.site])
    for a, b in zip(plain.sites, shifted.sites):     # the scanner changes intensities only
        assert np.array_equal(a.indices, b.indices) and b.profile is not None
        for part in ("train", "val", "test"):
            assert np.array_equal(getattr(a, part).masks, getattr(b, part).masks)
    assert not np.allclose(plain.sites[1].train.images, shifted.sites[1].train.images)
    no_masks = Dataset("plain", TaskInfo("binary", 2, 2, 1, 16),
                       Split(np.zeros((30, 1, 16, 16), np.float32), np.arange(30) % 2))
    with pytest.raises(DataError, match="'plain' has no masks"):
        build_federation(no_masks, RunConfig(sites=2, partition="lesion:1.0"))


# --------------------------------------------------------------------------- report, progress

def _seg_metrics(dice: float, hd95: float) -> dict:
    return {"loss": 0.1, "dice": dice, "iou": dice / 2, "hd95": hd95, "asd": hd95 / 2}


def test_report_compares_sites_on_dice_and_progress_shows_dice():
    from server.progress import progress_line
    from common.report.comparison import federation_helped
    from common.report.tables import sites_table

    summary = {
        "federated": {"sites": {"0": _seg_metrics(0.8, 2.0), "1": _seg_metrics(0.6, 5.0)},
                      "global": _seg_metrics(0.7, 3.0)},
        "local": {"sites": {"0": _seg_metrics(0.7, 1.0), "1": _seg_metrics(0.65, 4.0)},
                  "global": _seg_metrics(0.66, 2.5)},
        "site_counts": {"0": {"train": 10, "test": 5}, "1": {"train": 20, "test": 6}},
    }
    summary["federation_helped"] = federation_helped(summary["federated"]["sites"],
                                                     summary["local"]["sites"])
    assert summary["federation_helped"]["0"]["metric"] == "dice"
    rows = sites_table(summary).splitlines()
    assert rows[0] == ("| site | train | test | federated Dice | federated HD95 | local Dice | "
                       "local HD95 | did federation help this site? |")
    assert rows[2] == "| 0 | 10 | 5 | 0.800 | 2.00 | 0.700 | 1.00 | yes (+0.100 Dice) |"
    assert rows[3] == "| 1 | 20 | 6 | 0.600 | 5.00 | 0.650 | 4.00 | no (-0.050 Dice) |"
    line = {"round": 1, "seconds": 2.0, "global": _seg_metrics(0.7, 3.0), "failures": {},
            "sites": {"0": {"train": {"train_loss": 0.3}, "test": _seg_metrics(0.8, 2.0)},
                      "1": {"train": {"train_loss": 0.5}, "test": _seg_metrics(0.6, 5.0)}}}
    assert progress_line(line, 2) == ("[round 1/2] global dice 0.700 hd95 3.000 | sites dice "
                                      "mean 0.700 min 0.600 | train loss 0.400 | 2.0s")
    assert "Empty masks" in EMPTY_MASK_CONVENTION


def test_tradeoff_table_uses_dice(tmp_path):
    from simulations.tradeoff.outputs import markdown_table
    from simulations.tradeoff.rows import summary_rows
    from simulations.tradeoff.spec import SweepSpec

    base = RunConfig(task="segmentation", model="unet", width=4, sites=2, rounds=1,
                     baselines="", output_dir=str(tmp_path))
    spec = SweepSpec(base=base, epsilons=(math.inf,), seeds=(0, 1), name="seg")
    rows = []
    for seed, dice in ((0, 0.6), (1, 0.8)):
        summary = {"federated": {"global": _seg_metrics(dice, 3.0),
                                 "sites": {"0": _seg_metrics(dice - 0.1, 4.0),
                                           "1": _seg_metrics(dice + 0.1, 2.0)}}}
        rows += summary_rows(summary, math.inf, seed)
    assert rows[0]["dice"] == 0.6 and rows[0]["hd95"] == 3.0 and rows[0]["auc"] is None
    table = markdown_table(rows, spec)
    body = [line for line in table.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in body[0].strip("|").split("|")]
    col = dict(zip(head, [c.strip() for c in body[1].strip("|").split("|")]))
    assert col["federated Dice"] == "0.700 ± 0.141" and col["federated HD95"] == "3.000 ± 0.000"
    assert col["federated worst-site Dice"] == "0.600 ± 0.141"
    with pytest.raises(ConfigError, match="classifier"):
        SweepSpec(base=base.replace(model="cnn"), epsilons=(math.inf,), seeds=(0,), name="x")


def test_overlays_draw_lesion_cases_first(tmp_path):
    from simulations.overlays import foreground_dice, pick_cases, write_overlays

    data = _data(dims=3, n=16)
    test = data.test
    picked = pick_cases(test, 3)
    lesion = test.masks.reshape(len(test), -1).any(axis=1)
    assert lesion[picked[:min(3, lesion.sum())]].all()
    paths = write_overlays(_unet(data.task), data.task, {"0": test}, tmp_path)
    assert len(paths["0"]) == min(3, len(test))
    for rel in paths["0"]:
        assert rel.startswith("overlays/") and (tmp_path / rel).read_bytes()[:4] == b"\x89PNG"
    assert foreground_dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert foreground_dice(np.eye(2), np.ones((2, 2))) == pytest.approx(2 * 2 / 6)
