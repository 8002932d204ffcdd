"""The learning-rate schedule over a whole run: linear warm-up, then cosine (or step) decay.

A run trains for ``total`` epochs: rounds x local_epochs, local_epochs of it per round at a site
(and round by round in the local/pooled baselines), or all in one call (``window=None``). Each
optimiser step is placed on the run's progress axis ``p`` in [0, 1] by the middle of the
step: step ``i`` of ``n`` in epoch
``e`` of a call that starts ``start`` epochs into the run has ``p = (start + e + (i + 1/2) / n)
/ total``. A site in round ``r`` starts at ``(r - 1) * local_epochs`` (`round_window`), so the
rounds of a federation walk along one schedule, the same one the pooled baseline follows.

The factor applied to ``cfg.lr`` at ``p`` with warm-up fraction ``w`` (`lr_factor`):

* ``p < w``: ``p / w`` (linear warm-up from ~0);
* ``constant``: 1;
* ``cosine``: ``(1 + cos(pi * (p - w) / (1 - w))) / 2`` (from 1 down to ~0 at the end);
* ``step``: 1, then 0.1 from ``p >= 1/2`` and 0.01 from ``p >= 3/4`` (MedMNIST's recipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from common.config import LR_SCHEDULES, ConfigError, RunConfig

STEP_DECAYS = ((0.5, 0.1), (0.75, 0.01))   # (progress, factor from there on)


@dataclass(frozen=True)
class EpochWindow:
    """Where one training call sits in the run: ``start`` epochs done before it, ``total`` in
    the whole run (``start + epochs`` of the call must not exceed it)."""

    start: float
    total: float

    def __post_init__(self) -> None:
        if not (self.total > 0 and 0 <= self.start < self.total):
            raise ValueError(f"EpochWindow(start={self.start}, total={self.total}): expected "
                             f"0 <= start < total")


def lr_factor(schedule: str, warmup_fraction: float, progress: float) -> float:
    """The factor on the base learning rate at ``progress`` in [0, 1] (module docstring)."""
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule={schedule!r}: unknown; expected one of "
                          f"{', '.join(LR_SCHEDULES)}")
    p = min(max(float(progress), 0.0), 1.0)
    w = float(warmup_fraction)
    if p < w:
        return p / w
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (p - w) / (1.0 - w))) if w < 1 else 1.0
    if schedule == "step":
        factor = 1.0
        for at, value in STEP_DECAYS:
            factor = value if p >= at else factor
        return factor
    return 1.0


def round_window(cfg: RunConfig, server_round: int) -> EpochWindow:
    """The window of a FedAvg site's call in round ``server_round`` (1-based; a round outside
    1..rounds, e.g. a resumed run given fewer rounds, is clamped into it)."""
    r = min(max(int(server_round), 1), cfg.rounds)
    return EpochWindow(start=(r - 1) * cfg.local_epochs, total=cfg.rounds * cfg.local_epochs)


@dataclass(frozen=True)
class StepSchedule:
    """Sets the optimiser's learning rate before each step of one training call."""

    base_lr: float
    schedule: str
    warmup_fraction: float
    window: EpochWindow
    epochs: float               # epochs of this call (may be fractional under DP-SGD)

    def progress(self, epoch_progress: float) -> float:
        """The run's progress at ``epoch_progress`` epochs into this call."""
        return (self.window.start + epoch_progress) / self.window.total

    def lr(self, epoch_progress: float) -> float:
        return self.base_lr * lr_factor(self.schedule, self.warmup_fraction,
                                        self.progress(epoch_progress))

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int,
              steps_per_epoch: int) -> float:
        """Set every parameter group's lr for step ``step`` (0-based) of epoch ``epoch`` (of
        this call) with ``steps_per_epoch`` steps; returns that lr."""
        return self.apply_at(optimizer, epoch + (step + 0.5) / max(1, steps_per_epoch))

    def apply_at(self, optimizer: torch.optim.Optimizer, epoch_progress: float) -> float:
        """Set every parameter group's lr for the step at ``epoch_progress`` epochs into this
        call (the step's middle); returns that lr."""
        lr = self.lr(epoch_progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def step_schedule(cfg: RunConfig, epochs: float, window: EpochWindow | None) -> StepSchedule:
    """``cfg``'s schedule for a call of ``epochs`` epochs at ``window`` (None: the call is the
    whole run); ValueError if the call runs past the window's total."""
    window = window or EpochWindow(0, epochs)
    if window.start + epochs > window.total + 1e-9:
        raise ValueError(f"step_schedule: a call of {epochs} epochs starting at epoch "
                         f"{window.start} runs past the run's {window.total} epochs")
    return StepSchedule(cfg.lr, cfg.lr_schedule, cfg.warmup_fraction, window, epochs)
