"""Class-balanced clipping for DP-SGD (``--dp-class-balance TAU``): each record's clipped
gradient weighted by its class.

Why: per-sample clipping caps every record's contribution at C, whatever its loss, so the
larger gradients of a minority class count no more than a majority record's, and the sum of a
batch points mostly where the majority pulls (the disparate impact of DP-SGD, Bagdasaryan et
al., NeurIPS 2019). The logit-adjusted loss raises the minority's loss, but clipping removes
most of that again: on AdrenalMNIST3D under DP every volume's P(label 1) ended at 0.02-0.06
against a training prior of 0.22.

What: record ``i`` of class ``y`` contributes ``w_y * clip_C(g_i)`` with
``w_y = (p_min / p_y) ** tau`` (``p`` the class shares, ``tau`` in [0, 1]: 0 = plain DP-SGD,
1 = each class's records together weigh the same in expectation). The weights are at most 1,
so each record's contribution still has norm at most C: the sensitivity, hence the noise and
the accounting, are those of plain DP-SGD. Opacus clips again after this (a no-op up to
rounding), so the bound holds even if the weighting were wrong.

Privacy: ``p`` comes from the site's noised class counts (`client.release.sample_count`, a DP
release charged to the ledger before training), never from the exact labels: a weight chosen
from an earlier DP release keeps DP-SGD's guarantee (adaptive composition), and the weight a
record gets depends only on its own label.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.config import ConfigError
from common.training.logit_adjusted import count_offsets


def class_balance_weights(counts: np.ndarray | None, tau: float) -> torch.Tensor:
    """``(p_min / p_c) ** tau`` per class, ``p`` the shares of ``counts`` (noised counts
    clamped at 0, plus one pseudo-count per class, as the logit-adjusted prior)."""
    if counts is None or len(counts) < 2:
        raise ConfigError("dp_class_balance needs the site's noised class counts (the "
                          "sample_count release, which this site's policy may withhold); "
                          "none were given: drop --dp-class-balance or release the counts")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"class_balance_weights: tau={tau}; expected 0 <= tau <= 1")
    log_p = count_offsets(counts)                    # the logit-adjusted loss's smoothed prior
    return torch.exp(tau * (log_p.min() - log_p))


def flat_grad_sample(p: nn.Parameter) -> torch.Tensor:
    """``p.grad_sample`` as one tensor (Opacus may hold a list, one entry per forward pass)."""
    g = p.grad_sample
    return torch.cat(g, dim=0) if isinstance(g, list) else g


def weight_clipped_grad_samples(params: list[nn.Parameter], record_weights: torch.Tensor,
                                max_grad_norm: float) -> None:
    """Replace each parameter's per-sample gradients (``p.grad_sample``, one row per record)
    by ``record_weights[i] * clip(g_i, max_grad_norm)``, ``g_i`` the record's gradient over all
    ``params``; out of place (Opacus may hold the original tensors)."""
    grads = [flat_grad_sample(p) for p in params]
    per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in grads]
    norms = torch.stack(per_param, dim=1).norm(2, dim=1)
    factor = record_weights.to(norms) * (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    for p, g in zip(params, grads):
        p.grad_sample = g * factor.to(g).view(-1, *([1] * (g.dim() - 1)))
