"""Logit-adjusted cross-entropy: training against the site's own label prior.

``loss='logit_adjusted'`` trains on ``CE(logits + log prior, y)`` (Menon et al., "Long-tail
learning via logit adjustment", ICLR 2021; for label-skewed federations FedLC, Zhang et al.,
ICML 2022, and balanced softmax), where ``prior`` is the class distribution of the training
split it is given (a site's, the pooled data's), smoothed by one count per class. The network's
raw logits then estimate the class evidence without that split's prior: a site holding only
pneumonia cases no longer drives the shared bias towards "pneumonia" (the loss of an
all-positive site is already small at the start), which under label skew is what pulls FedAvg's
average to one class and makes the next round's losses spike. Predictions use the raw logits
(a balanced prior); the binary operating point is then chosen on validation data.

Multilabel tasks use the sigmoid form: each label's logit gets ``log(p / (1 - p))`` with ``p``
its smoothed positive rate.

Under dp='sample' the exact prior of the private labels is a statistic of the whole training
set that DP-SGD does not cover, so the prior is the site's noised class counts instead: the
count release it makes once per run anyway (`client.release.sample_count`, charged, planned
into the target epsilon), passed as ``prior_counts``. DP-SGD's guarantee holds for a loss chosen
from an earlier DP release (adaptive composition). Multilabel has no such release (one case
is in several counts): refused there under DP.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def label_prior_offsets(labels: np.ndarray, num_classes: int, multilabel: bool) -> torch.Tensor:
    """The additive logit offsets: ``log p`` per class (single-label) or ``log(p / (1 - p))``
    per label (multilabel), with one pseudo-count per class (per label: per outcome)."""
    labels = np.asarray(labels)
    if multilabel:
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise ValueError(f"logit_adjusted: multilabel train labels must have shape "
                             f"(N, {num_classes}); got {labels.shape}")
        pos = labels.sum(axis=0).astype(np.float64) + 1.0
        p = pos / (len(labels) + 2.0)
        return torch.tensor(np.log(p / (1.0 - p)), dtype=torch.float32)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"logit_adjusted: train labels must be class indices "
                         f"0..{num_classes - 1} of shape (N,); got shape {labels.shape}")
    return count_offsets(np.bincount(labels.astype(np.int64), minlength=num_classes))


def count_offsets(counts: np.ndarray) -> torch.Tensor:
    """``log p`` per class of class counts (noised ones clamped at 0) plus one pseudo-count."""
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None) + 1.0
    return torch.tensor(np.log(c / c.sum()), dtype=torch.float32)


class LogitAdjustedLoss(nn.Module):
    """Mean over samples of CE (or BCE, multilabel) of ``logits + offsets`` (a buffer)."""

    def __init__(self, offsets: torch.Tensor, multilabel: bool) -> None:
        super().__init__()
        self.register_buffer("offsets", offsets.clone().float())
        self.multilabel = multilabel

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        adjusted = logits + self.offsets.to(logits.dtype)
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(adjusted, target)
        return F.cross_entropy(adjusted, target)


def logit_adjusted_loss(labels: np.ndarray, num_classes: int, multilabel: bool) -> nn.Module:
    """`LogitAdjustedLoss` with the prior of ``labels`` (the training split's)."""
    return LogitAdjustedLoss(label_prior_offsets(labels, num_classes, multilabel), multilabel)
