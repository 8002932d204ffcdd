"""Segmentation losses and metrics for integer label maps.

Losses take logits ``(N, C, *spatial)`` and a long target ``(N, *spatial)`` and return the mean
over samples of a per-sample loss, so Opacus' ``loss_reduction="mean"`` is exact: no term mixes
the records of a batch (PyTorch's class-weighted ``cross_entropy`` with ``reduction="mean"``
divides by the batch's summed weights, which would; `SegCrossEntropy` normalises per sample).

Metrics are computed per sample and per foreground class with MONAI on one-hot tensors, averaged
over samples per class (``dice_c1``...) and then over foreground classes (``dice``...). Masks
that are empty in the prediction, the target or both follow `EMPTY_MASK_CONVENTION`, so no
metric is ever NaN or infinite.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)
from torch import nn

from common.config import ConfigError

SEG_LOSSES = ("ce", "weighted_ce", "focal", "dice", "dice_ce")
SEG_METRIC_KEYS = ("dice", "iou", "hd95", "asd")
HIGHER_IS_BETTER = {"dice": True, "iou": True, "hd95": False, "asd": False}
HD_PERCENTILE = 95
EMPTY_MASK_CONVENTION = (
    "Empty masks: a class absent from both prediction and target scores Dice 1, IoU 1, HD95 0, "
    "ASD 0; a class present in exactly one of them scores Dice 0, IoU 0 and HD95 = ASD = the "
    "image diagonal sqrt(sum((size * spacing)^2)), a finite worst case (no surface distance "
    "inside the image can exceed it), so no metric is NaN or infinite."
)


# --------------------------------------------------------------------------- losses

def _check_logits_target(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    if logits.ndim < 3 or logits.shape[1] != num_classes:
        raise ValueError(f"segmentation loss: logits must have shape (N, {num_classes}, "
                         f"*spatial); got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"segmentation loss: target must have shape (N, *spatial) = "
                         f"{tuple(logits.shape[:1] + logits.shape[2:])} of class indices; got "
                         f"{tuple(target.shape)}")
    if target.dtype.is_floating_point:
        raise ValueError(f"segmentation loss: target must be an integer tensor of class "
                         f"indices; got dtype {target.dtype}")


def _per_sample_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension: (N, ...) -> (N,)."""
    return values.reshape(values.shape[0], -1).mean(dim=1)


class SegCrossEntropy(nn.Module):
    """Per-voxel cross-entropy; with ``weight``, each sample's loss is its weighted voxel mean
    ``sum_v w[y_v] ce_v / sum_v w[y_v]`` (PyTorch's weighted mean, but within one sample)."""

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("weight", None if weight is None else weight.float().clone())

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_logits_target(logits, target, self.num_classes)
        target = target.long()
        ce = F.cross_entropy(logits, target, reduction="none")
        if self.weight is None:
            return _per_sample_mean(ce)
        w = self.weight.to(logits.dtype)[target]
        return (ce * w).reshape(len(ce), -1).sum(1) / w.reshape(len(w), -1).sum(1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, target).mean()


class SegFocalLoss(nn.Module):
    """Softmax focal loss ``-w[y] (1 - p_y)^gamma log p_y`` averaged over voxels per sample."""

    def __init__(self, num_classes: int, gamma: float = 2.0,
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ConfigError(f"focal loss: focal_gamma={gamma!r}; expected a finite number "
                              f">= 0")
        self.num_classes = num_classes
        self.gamma = float(gamma)
        self.register_buffer("weight", None if weight is None else weight.float().clone())

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_logits_target(logits, target, self.num_classes)
        log_p = F.log_softmax(logits, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is not None:
            loss = loss * self.weight.to(logits.dtype)[target.long()]
        return _per_sample_mean(loss)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, target).mean()


class SegDiceLoss(nn.Module):
    """MONAI soft Dice (softmax, one-hot target, background included), per sample and class.

    ``batch=False`` keeps each sample's Dice separate; the mean over (N, C) is then the mean of
    the per-sample losses. ``weight`` weights the classes (MONAI's ``weight``).
    """

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True,
                             batch=False, reduction="none",
                             weight=None if weight is None else weight.float().clone())

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_logits_target(logits, target, self.num_classes)
        return _per_sample_mean(self.dice(logits, target.long().unsqueeze(1)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, target).mean()


class SegDiceCELoss(nn.Module):
    """Soft Dice plus cross-entropy (MONAI DiceCELoss' sum with unit weights), per sample."""

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dice = SegDiceLoss(num_classes, weight)
        self.ce = SegCrossEntropy(num_classes, weight)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice.per_sample(logits, target) + self.ce.per_sample(logits, target)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, target).mean()


def _check_weights(weights: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.shape != (num_classes,) or not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"class_weights: expected {num_classes} finite non-negative values; "
                         f"got shape {tuple(w.shape)}: {w.tolist()}")
    return w


def make_seg_loss(name: str, num_classes: int, *, class_weights: torch.Tensor | None = None,
                  focal_gamma: float = 2.0) -> nn.Module:
    """Segmentation loss ``name`` (one of `SEG_LOSSES`): ``loss(logits, target) -> scalar``.

    * ``ce``: cross-entropy, class-weighted if ``class_weights`` is given;
    * ``weighted_ce``: the same, and ``class_weights`` is required (see `seg_class_weights`);
    * ``focal``: softmax focal loss with ``focal_gamma`` (and optional class weights);
    * ``dice``: MONAI soft Dice over all classes (optional class weights);
    * ``dice_ce``: Dice + cross-entropy.

    Every loss is the mean over samples of a per-sample loss (each module's ``per_sample``).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"segmentation loss: num_classes={num_classes!r}; expected an integer "
                         f">= 2 (background and at least one foreground class)")
    weights = _check_weights(class_weights, num_classes)
    if name == "weighted_ce" and weights is None:
        raise ValueError("loss='weighted_ce' needs class_weights (e.g. seg_class_weights(masks, "
                         "num_classes)); use loss='ce' for unweighted cross-entropy")
    if name in ("ce", "weighted_ce"):
        return SegCrossEntropy(num_classes, weights)
    if name == "focal":
        return SegFocalLoss(num_classes, focal_gamma, weights)
    if name == "dice":
        return SegDiceLoss(num_classes, weights)
    if name == "dice_ce":
        return SegDiceCELoss(num_classes, weights)
    raise ConfigError(f"loss={name!r}: unknown segmentation loss; expected one of "
                      f"{', '.join(SEG_LOSSES)}")


def seg_class_weights(masks: np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-class weights ``1 / voxel count`` normalised to mean 1 (an absent class counts as 1).

    The same rule as `common.training.losses`' classification weights, with voxels in place of images.
    """
    masks = np.asarray(masks)
    if masks.size and (not np.issubdtype(masks.dtype, np.integer) or masks.min() < 0
                       or masks.max() >= num_classes):
        raise ValueError(f"seg_class_weights: masks must hold class indices 0..{num_classes - 1}; "
                         f"got dtype {masks.dtype}, values {masks.min()}..{masks.max()}")
    counts = np.bincount(masks.reshape(-1).astype(np.int64), minlength=num_classes)
    weights = 1.0 / np.maximum(counts.astype(np.float64), 1.0)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


# --------------------------------------------------------------------------- metrics

def dice_from_counts(intersection: float, pred_size: float, target_size: float) -> float:
    """Dice ``2|P n T| / (|P| + |T|)``; 1 when both are empty (`EMPTY_MASK_CONVENTION`)."""
    total = pred_size + target_size
    return 1.0 if total == 0 else 2.0 * intersection / total


def iou_from_counts(intersection: float, pred_size: float, target_size: float) -> float:
    """IoU ``|P n T| / |P u T|``; 1 when both are empty (`EMPTY_MASK_CONVENTION`)."""
    union = pred_size + target_size - intersection
    return 1.0 if union == 0 else intersection / union


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Length of the image diagonal in physical units (the worst-case surface distance)."""
    spacing = (1.0,) * len(shape) if spacing is None else spacing
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _check_label_maps(pred: np.ndarray, target: np.ndarray, num_classes: int,
                      spacing: tuple[float, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"segmentation_metrics: num_classes={num_classes!r}; expected an "
                         f"integer >= 2")
    if pred.shape != target.shape or pred.ndim not in (3, 4):
        raise ValueError(f"segmentation_metrics: pred and target must be label maps of the same "
                         f"shape (N, H, W) or (N, D, H, W); got {pred.shape} and {target.shape}")
    for label, arr in (("pred", pred), ("target", target)):
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            raise ValueError(f"segmentation_metrics: {label} must be integer class indices; "
                             f"got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"segmentation_metrics: {label} values {arr.min()}..{arr.max()} "
                             f"outside 0..{num_classes - 1}")
    dims = pred.ndim - 1
    if spacing is not None and (len(spacing) != dims or any(not s > 0 for s in spacing)):
        raise ValueError(f"segmentation_metrics: spacing={spacing!r}; expected {dims} positive "
                         f"values (one per spatial axis)")
    return pred.astype(np.int64), target.astype(np.int64)


def _one_hot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(N, *spatial) int -> (N, C, *spatial) float one-hot."""
    t = torch.from_numpy(labels)
    return F.one_hot(t, num_classes).movedim(-1, 1).float()


def _surface_distances(p: torch.Tensor, t: torch.Tensor,
                       spacing: tuple[float, ...] | None) -> tuple[float, float]:
    """(HD95, ASD) between two non-empty binary masks of shape (*spatial)."""
    p, t = p[None, None], t[None, None]
    sp = None if spacing is None else list(spacing)
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated argument to get_mask_edges internally.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy",
                                category=FutureWarning)
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=HD_PERCENTILE,
                                        spacing=sp)
        asd = compute_average_surface_distance(p, t, include_background=True, symmetric=True,
                                               spacing=sp)
    return float(hd.item()), float(asd.item())


def segmentation_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int,
                         spacing: tuple[float, ...] | None = None) -> dict[str, float]:
    """Dice, IoU, HD95 and ASD of integer label maps ``(N, *spatial)`` (class 0 = background).

    Per foreground class ``c``: ``dice_c{c}``, ``iou_c{c}``, ``hd95_c{c}``, ``asd_c{c}``, each
    the mean over the N samples; ``dice``, ``iou``, ``hd95``, ``asd`` are their means over the
    foreground classes. Distances are in units of ``spacing`` (voxels when None). Empty masks
    follow `EMPTY_MASK_CONVENTION`.
    """
    pred, target = _check_label_maps(pred, target, num_classes, spacing)
    if len(pred) == 0:
        raise ValueError("segmentation_metrics: no samples (N = 0)")
    p1, t1 = _one_hot(pred, num_classes), _one_hot(target, num_classes)
    dice = compute_dice(p1, t1, include_background=True, ignore_empty=False).numpy()
    iou = compute_iou(p1, t1, include_background=True, ignore_empty=False).numpy()
    p_any = p1.flatten(2).amax(2).numpy() > 0   # (N, C): class present in the prediction
    t_any = t1.flatten(2).amax(2).numpy() > 0
    worst = image_diagonal(pred.shape[1:], spacing)
    out: dict[str, float] = {}
    per_class: dict[str, list[float]] = {key: [] for key in SEG_METRIC_KEYS}
    for c in range(1, num_classes):
        rows = {key: [] for key in SEG_METRIC_KEYS}
        for n in range(len(pred)):
            if p_any[n, c] and t_any[n, c]:
                hd, asd = _surface_distances(p1[n, c], t1[n, c], spacing)
                d, j = float(dice[n, c]), float(iou[n, c])
            elif p_any[n, c] or t_any[n, c]:
                d, j, hd, asd = 0.0, 0.0, worst, worst
            else:
                d, j, hd, asd = 1.0, 1.0, 0.0, 0.0
            for key, value in zip(SEG_METRIC_KEYS, (d, j, hd, asd)):
                rows[key].append(value)
        for key in SEG_METRIC_KEYS:
            value = float(np.mean(rows[key]))
            out[f"{key}_c{c}"] = value
            per_class[key].append(value)
    for key in SEG_METRIC_KEYS:
        out[key] = float(np.mean(per_class[key]))
    return out
