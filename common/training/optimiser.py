"""The local optimiser a run asks for (``cfg.optimizer``)."""

from __future__ import annotations

from typing import Iterable

import torch

from common.config import ConfigError, RunConfig


def make_optimizer(cfg: RunConfig, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """SGD with ``cfg.momentum`` or Adam, both with ``cfg.lr`` and ``cfg.weight_decay``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer={cfg.optimizer!r} unknown; expected one of sgd, adam")
