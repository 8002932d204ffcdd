"""The training loss a run asks for (``cfg.loss``), for classification and segmentation.

Under sample-level DP (dp='sample') a loss may depend on the private data only through the
records it sums: ``weighted_ce`` computes its class weights from the site's labels (masks), an
un-noised statistic of the whole training set that DP-SGD does not cover, so it is refused
(`check_dp_loss`) both where a run is planned and where the weights would be computed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError, RunConfig
from common.datasets.base import Split, TaskInfo
from common.segmentation import make_seg_loss, seg_class_weights
from common.training.logit_adjusted import LogitAdjustedLoss, count_offsets, logit_adjusted_loss

DP_SAFE_LOSSES = {"classification": ("ce", "focal", "logit_adjusted"),
                  "segmentation": ("dice_ce", "dice", "focal", "ce")}


PRIOR_LOSSES = ("weighted_ce", "logit_adjusted")   # built from the site's label counts


def check_dp_loss(cfg: RunConfig) -> None:
    """Refuse ``loss='weighted_ce'`` under dp='sample' (see module doc); dp='off' and
    dp='client' (which protects a site's whole contribution) keep it. ``logit_adjusted`` is
    allowed: under DP its prior is the site's noised class counts (`make_loss`)."""
    if cfg.dp != "sample" or cfg.loss != "weighted_ce":
        return
    safe = "; ".join(f"{task}: {', '.join(losses)}" for task, losses in DP_SAFE_LOSSES.items())
    raise ConfigError(f"loss={cfg.loss!r} with dp='sample': its class weights come from the "
                      f"site's private label counts, which DP-SGD does not protect; choose a "
                      f"DP-safe loss ({safe}), or dp='off'/'client'")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017), mean over samples; with ``gamma=0`` it equals CE / BCE.

    Single-label: ``-(1 - p_t)^gamma * log p_t`` with ``p_t`` the softmax probability of the true
    class. Multilabel (sigmoid form): the same per (sample, label) cell with ``p_t = p`` for a
    positive and ``1 - p`` for a negative, averaged over all cells like ``BCEWithLogitsLoss``.
    """

    def __init__(self, gamma: float, multilabel: bool) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.multilabel = multilabel

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        else:
            nll = F.cross_entropy(logits, target, reduction="none")
        if self.gamma == 0.0:
            return nll.mean()
        # clamp: (1 - p_t)^gamma has an infinite/NaN gradient at p_t == 1 for gamma < 1
        modulating = (1.0 - torch.exp(-nll)).clamp_min(1e-12) ** self.gamma
        return (modulating * nll).mean()


def make_loss(cfg: RunConfig, task: TaskInfo, train_labels: np.ndarray,
              prior_counts: np.ndarray | None = None) -> nn.Module:
    """The training loss named by ``cfg.loss`` for ``task``.

    * ``ce``: cross-entropy (multilabel: ``BCEWithLogitsLoss``).
    * ``weighted_ce``: class weights ``1 / count`` normalised to average 1 over classes (a class
      absent from ``train_labels`` is weighted like a class seen once); multilabel uses
      ``pos_weight = negatives / positives`` per label (1 for a label with no positives).
      Refused under dp='sample' (`check_dp_loss`).
    * ``focal``: `FocalLoss` with ``cfg.focal_gamma`` (sigmoid form for multilabel).
    * ``logit_adjusted``: CE against the labels' prior (`common.training.logit_adjusted`);
      under dp='sample' against ``prior_counts``, the site's noised class counts (required
      there; never the labels' exact counts).
    """
    if task.kind == "segmentation":
        raise ValueError("make_loss: a segmentation task trains on masks; use make_seg_training_"
                         "loss(cfg, task, masks) or training_loss(cfg, task, split)")
    if cfg.loss in ("dice", "dice_ce"):
        raise ConfigError(f"loss={cfg.loss!r} is a segmentation loss; a {task.kind} task accepts "
                          f"ce, weighted_ce, focal or logit_adjusted")
    check_dp_loss(cfg)
    multilabel = task.kind == "multilabel"
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, multilabel)
    if cfg.loss == "ce":
        return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    if cfg.loss == "logit_adjusted":
        if cfg.dp != "sample":
            return logit_adjusted_loss(train_labels, task.num_classes, multilabel)
        return _dp_logit_adjusted(task, prior_counts)
    if cfg.loss != "weighted_ce":
        raise ConfigError(f"loss={cfg.loss!r} unknown; expected one of ce, weighted_ce, focal, "
                          f"logit_adjusted")
    labels = np.asarray(train_labels)
    if multilabel:
        return nn.BCEWithLogitsLoss(pos_weight=_pos_weight(labels, task.num_classes))
    return nn.CrossEntropyLoss(weight=_class_weights(labels, task.num_classes))


def _dp_logit_adjusted(task: TaskInfo, prior_counts: np.ndarray | None) -> nn.Module:
    if task.kind == "multilabel":
        raise ConfigError("loss='logit_adjusted' with dp='sample' on a multilabel task: its "
                          "prior would need per-label counts, which the site does not release "
                          "under DP; choose --loss ce or focal")
    if prior_counts is None or len(prior_counts) != task.num_classes:
        raise ConfigError("loss='logit_adjusted' with dp='sample' needs the site's noised class "
                          "counts as its prior (client.release.sample_count); none were given")
    return LogitAdjustedLoss(count_offsets(prior_counts), multilabel=False)


def make_seg_training_loss(cfg: RunConfig, task: TaskInfo, masks: np.ndarray) -> nn.Module:
    """The segmentation loss named by ``cfg.loss`` (`common.segmentation.make_seg_loss`) on
    logits (N, classes, *spatial) and long targets (N, *spatial); ``weighted_ce`` weighs the
    classes by `seg_class_weights` of the site's training ``masks`` (refused under dp='sample')."""
    check_dp_loss(cfg)
    weights = seg_class_weights(masks, task.num_classes) if cfg.loss == "weighted_ce" else None
    return make_seg_loss(cfg.loss, task.num_classes, class_weights=weights,
                         focal_gamma=cfg.focal_gamma)


def training_loss(cfg: RunConfig, task: TaskInfo, split: Split,
                  prior_counts: np.ndarray | None = None) -> nn.Module:
    """`make_seg_training_loss` on the split's masks for segmentation, else `make_loss` on its
    labels."""
    if task.kind == "segmentation":
        return make_seg_training_loss(cfg, task, split.masks)
    return make_loss(cfg, task, split.labels, prior_counts)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"weighted_ce: train labels must be class indices 0..{num_classes - 1} of "
                         f"shape (N,); got shape {labels.shape}")
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(np.float64)
    weights = 1.0 / np.maximum(counts, 1.0)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def _pos_weight(labels: np.ndarray, num_labels: int) -> torch.Tensor:
    if labels.ndim != 2 or labels.shape[1] != num_labels:
        raise ValueError(f"weighted_ce: multilabel train labels must have shape (N, {num_labels}); "
                         f"got {labels.shape}")
    positives = labels.sum(axis=0).astype(np.float64)
    negatives = labels.shape[0] - positives
    weight = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
    return torch.tensor(weight, dtype=torch.float32)
