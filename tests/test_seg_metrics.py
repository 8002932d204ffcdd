"""Segmentation metrics (Dice, IoU, HD95, ASD with the empty-mask convention) and losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.segmentation import (
    EMPTY_MASK_CONVENTION, HIGHER_IS_BETTER, SEG_METRIC_KEYS, dice_from_counts, image_diagonal,
    iou_from_counts, make_seg_loss, seg_class_weights, segmentation_metrics,
)

torch.set_num_threads(1)


def _square(size: int = 32, lo: int = 8, side: int = 12, shift: int = 0, dims: int = 2
            ) -> np.ndarray:
    mask = np.zeros((1,) + (size,) * dims, dtype=np.int64)
    region = (slice(lo + shift, lo + shift + side),) + (slice(lo, lo + side),) * (dims - 1)
    mask[(0,) + region] = 1
    return mask


def test_keys_and_directions() -> None:
    assert SEG_METRIC_KEYS == ("dice", "iou", "hd95", "asd")
    assert HIGHER_IS_BETTER == {"dice": True, "iou": True, "hd95": False, "asd": False}
    m = segmentation_metrics(_square(), _square(), 3)
    assert set(m) == {f"{k}_c{c}" for k in SEG_METRIC_KEYS for c in (1, 2)} | set(SEG_METRIC_KEYS)


def test_identical_masks_are_perfect() -> None:
    m = segmentation_metrics(_square(), _square(), 2)
    assert m == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0,
                 "dice_c1": 1.0, "iou_c1": 1.0, "hd95_c1": 0.0, "asd_c1": 0.0}


def test_disjoint_masks_score_zero_overlap() -> None:
    m = segmentation_metrics(_square(lo=2, side=6), _square(lo=20, side=6), 2)
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["hd95"] > 10 and m["asd"] > 10


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shifted_square_hd95_equals_shift(k: int) -> None:
    m = segmentation_metrics(_square(shift=k), _square(), 2)
    assert m["hd95"] == pytest.approx(k)
    assert 0 < m["asd"] < k
    assert m["dice"] == pytest.approx((12 - k) / 12)   # overlap 12 x (12 - k) of 12 x 12 each


def test_shifted_cube_hd95_and_spacing() -> None:
    pred, target = _square(16, 3, 8, shift=2, dims=3), _square(16, 3, 8, dims=3)
    assert segmentation_metrics(pred, target, 2)["hd95"] == pytest.approx(2)
    # the shift is along the first spatial axis: its spacing scales the distance
    spaced = segmentation_metrics(pred, target, 2, spacing=(2.5, 1.0, 1.0))
    assert spaced["hd95"] == pytest.approx(5.0)
    assert spaced["dice"] == pytest.approx(6 / 8)


def test_empty_mask_convention() -> None:
    empty = np.zeros((1, 20, 30), dtype=np.int64)
    full = empty.copy()
    full[0, 5:10, 5:10] = 1
    diagonal = math.sqrt(20 ** 2 + 30 ** 2)
    assert segmentation_metrics(empty, empty, 2) == {
        "dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0,
        "dice_c1": 1.0, "iou_c1": 1.0, "hd95_c1": 0.0, "asd_c1": 0.0}
    for pred, target in ((empty, full), (full, empty)):
        m = segmentation_metrics(pred, target, 2)
        assert m["dice"] == 0.0 and m["iou"] == 0.0
        assert m["hd95"] == pytest.approx(diagonal) and m["asd"] == pytest.approx(diagonal)
    spaced = segmentation_metrics(empty, full, 2, spacing=(2.0, 0.5))
    assert spaced["hd95"] == pytest.approx(image_diagonal((20, 30), (2.0, 0.5)))
    for stated in ("Dice 1, IoU 1, HD95 0, ASD 0", "Dice 0, IoU 0", "image diagonal", "finite"):
        assert stated in EMPTY_MASK_CONVENTION


def test_multiclass_per_class_keys_and_means() -> None:
    target = np.zeros((2, 24, 24), dtype=np.int64)
    target[:, 2:8, 2:8] = 1
    target[:, 12:20, 12:20] = 2
    pred = target.copy()
    pred[0, 12:20, 12:20] = 0            # class 2 missed in sample 0
    m = segmentation_metrics(pred, target, 3)
    assert m["dice_c1"] == 1.0 and m["hd95_c1"] == 0.0
    assert m["dice_c2"] == pytest.approx(0.5)          # sample 0: 0, sample 1: 1
    assert m["hd95_c2"] == pytest.approx(image_diagonal((24, 24)) / 2)
    for key in SEG_METRIC_KEYS:
        assert m[key] == pytest.approx((m[f"{key}_c1"] + m[f"{key}_c2"]) / 2)
    assert all(math.isfinite(v) for v in m.values())


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.floats(0.05, 0.95))
def test_dice_iou_relation(seed: int, density: float) -> None:
    """Per sample (averaging over samples does not preserve the relation)."""
    rng = np.random.default_rng(seed)
    pred = (rng.random((1, 9, 11)) < density).astype(np.int64)
    target = (rng.random((1, 9, 11)) < density).astype(np.int64)
    m = segmentation_metrics(pred, target, 2)
    assert m["dice"] == pytest.approx(2 * m["iou"] / (1 + m["iou"]), abs=1e-6)
    inter = float((pred & target).sum())
    assert m["dice"] == pytest.approx(dice_from_counts(inter, pred.sum(), target.sum()), abs=1e-6)
    assert m["iou"] == pytest.approx(iou_from_counts(inter, pred.sum(), target.sum()), abs=1e-6)
    assert m["hd95"] >= 0 and m["asd"] >= 0


def test_count_helpers_on_empty() -> None:
    assert dice_from_counts(0, 0, 0) == 1.0 and iou_from_counts(0, 0, 0) == 1.0
    assert dice_from_counts(0, 3, 0) == 0.0 and iou_from_counts(2, 4, 2) == 0.5


@pytest.mark.parametrize("pred,target,num_classes,spacing,match", [
    (np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int), 2, None, "same shape"),
    (np.zeros((4, 4), int), np.zeros((4, 4), int), 2, None, "same shape"),
    (np.full((1, 4, 4), 2), np.zeros((1, 4, 4), int), 2, None, "pred values 2..2"),
    (np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), 2, None, "integer class indices"),
    (np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), 2, (1.0,), "spacing"),
    (np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), 1, None, "num_classes=1"),
])
def test_bad_metric_inputs_raise(pred, target, num_classes, spacing, match) -> None:
    with pytest.raises(ValueError, match=match):
        segmentation_metrics(pred, target, num_classes, spacing)


# --------------------------------------------------------------------------- losses

def _perfect_logits(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, num_classes).movedim(-1, 1).double() * 40 - 20


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "focal", "dice", "dice_ce"])
@pytest.mark.parametrize("dims", [2, 3])
def test_losses_perfect_vs_uninformative(name: str, dims: int) -> None:
    y = torch.randint(0, 3, (2,) + (6,) * dims, generator=torch.Generator().manual_seed(0))
    loss = make_seg_loss(name, 3, class_weights=torch.tensor([0.5, 1.0, 1.5])).double()
    perfect = loss(_perfect_logits(y, 3), y)
    assert perfect.ndim == 0 and float(perfect) < 1e-4
    logits = torch.zeros((2, 3) + (6,) * dims, dtype=torch.float64, requires_grad=True)
    value = loss(logits, y)
    value.backward()
    assert value.item() > 0.1
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_ce_matches_torch_and_weights_change_it() -> None:
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(2, 3, 5, 5, generator=g), torch.randint(0, 3, (2, 5, 5), generator=g)
    plain = make_seg_loss("ce", 3)(logits, y)
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(logits, y))
    w = torch.tensor([0.1, 1.0, 3.0])
    weighted = make_seg_loss("weighted_ce", 3, class_weights=w)(logits, y)
    assert not torch.allclose(weighted, plain)
    # per sample it is torch's weighted mean; the batch loss is the mean of those
    per_sample = [torch.nn.functional.cross_entropy(logits[i:i + 1], y[i:i + 1], weight=w)
                  for i in range(2)]
    assert torch.allclose(weighted, torch.stack(per_sample).mean())


def test_focal_gamma_zero_is_ce_and_dice_ce_is_sum() -> None:
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(2, 3, 5, 5, generator=g), torch.randint(0, 3, (2, 5, 5), generator=g)
    assert torch.allclose(make_seg_loss("focal", 3, focal_gamma=0.0)(logits, y),
                          make_seg_loss("ce", 3)(logits, y))
    assert make_seg_loss("focal", 3)(logits, y) < make_seg_loss("ce", 3)(logits, y)
    assert torch.allclose(make_seg_loss("dice_ce", 3)(logits, y),
                          make_seg_loss("dice", 3)(logits, y) + make_seg_loss("ce", 3)(logits, y))


def test_loss_batch_value_is_mean_of_per_sample_values() -> None:
    g = torch.Generator().manual_seed(3)
    logits, y = torch.randn(3, 2, 6, 6, generator=g), torch.randint(0, 2, (3, 6, 6), generator=g)
    for name in ("dice", "focal", "dice_ce"):
        loss = make_seg_loss(name, 2, class_weights=torch.tensor([0.4, 1.6]))
        singles = torch.stack([loss(logits[i:i + 1], y[i:i + 1]) for i in range(3)])
        assert torch.allclose(loss(logits, y), singles.mean(), atol=1e-6)


def test_bad_loss_arguments_raise() -> None:
    with pytest.raises(ValueError, match="loss='tversky'.*ce, weighted_ce, focal, dice, dice_ce"):
        make_seg_loss("tversky", 2)
    with pytest.raises(ValueError, match="weighted_ce.*class_weights"):
        make_seg_loss("weighted_ce", 2)
    with pytest.raises(ValueError, match="class_weights.*3"):
        make_seg_loss("ce", 3, class_weights=torch.ones(2))
    with pytest.raises(ValueError, match="target must have shape"):
        make_seg_loss("dice", 2)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must have shape"):
        make_seg_loss("ce", 3)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_seg_class_weights() -> None:
    masks = np.zeros((2, 10, 10), dtype=np.uint8)
    masks[:, :2, :5] = 1          # 20 voxels of class 1, class 2 absent, 180 background
    w = seg_class_weights(masks, 3)
    expected = np.array([1 / 180, 1 / 20, 1.0])
    assert np.allclose(w.numpy(), expected / expected.mean())
    assert w.mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="class indices 0..1"):
        seg_class_weights(masks + 1, 2)
