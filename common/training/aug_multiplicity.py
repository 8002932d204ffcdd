"""Augmentation multiplicity for DP-SGD (``--aug-multiplicity K`` with ``--augment``).

De et al. (2022, "Unlocking high-accuracy differentially private image classification through
scale") found that plain augmentation hurts DP-SGD, whose noise is fixed per step while an
augmented copy is a noisier gradient of its record, and that averaging the gradients of K
augmented copies of each record *before* clipping turns it into a gain. The average is still one
function of one record, clipped to C as a whole, so the sensitivity, the noise and the accounting
are plain DP-SGD's; only the compute of a step grows K times.

Here a physical batch of B records is fetched as ``np.repeat(index, K)`` (the augmentation draws
each row on its own), the per-sample gradients of its B * K rows are computed as usual, and
`average_copies` folds them back to B rows, one per record, before Opacus clips them.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from common.training.balanced_clipping import flat_grad_sample


def repeat_index(index: np.ndarray, k: int) -> np.ndarray:
    """Each record's index ``k`` times in a row: rows ``i * k .. i * k + k - 1`` are record i."""
    return np.repeat(np.asarray(index), k)


def average_copies(params: list[nn.Parameter], k: int) -> None:
    """Replace each parameter's per-sample gradients of ``B * k`` rows (`repeat_index` order) by
    their mean over each record's ``k`` copies: ``B`` rows (out of place)."""
    for p in params:
        g = flat_grad_sample(p)
        if len(g) % k:
            raise ValueError(f"average_copies: {len(g)} per-sample gradients are not a whole "
                             f"number of records of {k} copies each")
        p.grad_sample = g.reshape(len(g) // k, k, *g.shape[1:]).mean(dim=1)
