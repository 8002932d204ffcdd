"""The local training loop of one site for one round (plain SGD/Adam, optional FedProx term,
the run's learning-rate schedule, ``cfg.augment``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config import ConfigError, RunConfig
from common.datasets.base import Split, TaskInfo
from common.training.batches import BatchFn, batch_source, model_device
from common.training.checks import check_split
from common.training.losses import training_loss
from common.training.optimiser import make_optimizer
from common.training.schedule import EpochWindow, StepSchedule, step_schedule


@dataclass(frozen=True)
class TrainResult:
    loss: float          # mean per-item data loss of the last epoch (without the FedProx term;
                         # an item is a sample, or one slice in segmentation slice mode)
    num_samples: int     # training samples at the site (the FedAvg weight)
    steps: int           # optimiser steps taken over all epochs
    seconds: float       # wall-clock time of the training loop


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _proximal_term(params: list[torch.Tensor], global_params: list[torch.Tensor]) -> torch.Tensor:
    return sum(((w - g) ** 2).sum() for w, g in zip(params, global_params))


def prepare_global(model: nn.Module, global_params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of ``global_params`` on each parameter's device and dtype (the FedProx
    anchor); ValueError unless there is one tensor of the right shape per model parameter."""
    params = list(model.parameters())
    if len(global_params) != len(params):
        raise ValueError(f"train_local: global_params has {len(global_params)} tensors but the model "
                         f"has {len(params)} parameters; pass one tensor per model.parameters() entry")
    out = []
    for i, (w, g) in enumerate(zip(params, global_params)):
        g = torch.as_tensor(g)
        if g.shape != w.shape:
            raise ValueError(f"train_local: global_params[{i}] has shape {tuple(g.shape)}; the model's "
                             f"parameter {i} has shape {tuple(w.shape)}")
        out.append(g.detach().to(device=w.device, dtype=w.dtype).clone())
    return out


def fedprox_anchor(model: nn.Module, proximal_mu: float,
                   global_params: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """The FedProx anchor (`prepare_global`) when ``proximal_mu > 0`` and ``global_params`` are
    given, else None (no proximal term)."""
    use_prox = proximal_mu > 0 and global_params is not None
    return prepare_global(model, global_params) if use_prox else None


@dataclass(frozen=True)
class _Loop:
    """The fixed parts of one `train_local` call."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    fetch: BatchFn
    items: int                               # training items per epoch
    batch_size: int
    skip_single: bool                        # drop a final batch of one item (BatchNorm)
    proximal_mu: float
    anchor: list[torch.Tensor] | None        # FedProx global weights, None without FedProx
    lr: float                                # named in the error when the loss diverges
    schedule: StepSchedule                   # the learning rate of every step
    grad_clip: float = 0.0                   # > 0: clip each batch's gradient norm to this

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.items / self.batch_size)


def _check_args(split: Split, task: TaskInfo, epochs: int, proximal_mu: float) -> None:
    check_split(split, task, "train_local")
    if epochs < 1:
        raise ValueError(f"train_local: epochs={epochs}; expected >= 1")
    if proximal_mu < 0:
        raise ValueError(f"train_local: proximal_mu={proximal_mu}; expected >= 0")


def _setup(model: nn.Module, split: Split, task: TaskInfo, cfg: RunConfig, *, seed: int,
           proximal_mu: float, global_params: list[torch.Tensor] | None,
           schedule: StepSchedule) -> _Loop:
    """Batches, loss, optimiser and FedProx anchor of one call (ConfigError for a BatchNorm
    model on a single item)."""
    device = model_device(model)
    items, fetch = batch_source(split, task, cfg, device, seed)
    skip_single = _has_batchnorm(model) and items % cfg.batch_size == 1
    if skip_single and items == 1:
        raise ConfigError("train_local: the split has 1 sample and the model has BatchNorm, which "
                          "cannot train on a batch of one; use norm='group' or 'instance'")
    anchor = fedprox_anchor(model, proximal_mu, global_params)
    loss_fn = training_loss(cfg, task, split).to(device)
    optimizer = make_optimizer(cfg, model.parameters())
    return _Loop(model, optimizer, loss_fn, fetch, items, cfg.batch_size, skip_single,
                 proximal_mu, anchor, cfg.lr, schedule, cfg.grad_clip)


def _step(loop: _Loop, index: np.ndarray, epoch: int, steps: int) -> float:
    """One optimiser step on the items ``index``; returns the batch's mean data loss."""
    inputs, targets = loop.fetch(index)
    data_loss = loop.loss_fn(loop.model(inputs), targets)
    loss = data_loss
    if loop.anchor is not None:
        prox = _proximal_term(list(loop.model.parameters()), loop.anchor)
        loss = loss + 0.5 * loop.proximal_mu * prox
    if not torch.isfinite(loss):
        raise FloatingPointError(f"train_local: loss became {loss.item()} at epoch "
                                 f"{epoch + 1}, step {steps + 1}; lower lr={loop.lr}")
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if loop.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), loop.grad_clip)
    loop.optimizer.step()
    return data_loss.item()


def _epoch(loop: _Loop, order: np.ndarray, epoch: int, steps: int) -> tuple[int, float]:
    """One pass over the items in ``order``; ``(steps taken so far, mean item loss)``."""
    total, seen = 0.0, 0
    for i, lo in enumerate(range(0, loop.items, loop.batch_size)):
        index = order[lo:lo + loop.batch_size]
        if loop.skip_single and len(index) == 1:
            continue
        loop.schedule.apply(loop.optimizer, epoch, i, loop.steps_per_epoch)
        total += _step(loop, index, epoch, steps) * len(index)
        steps += 1
        seen += len(index)
    return steps, total / seen


def train_local(model: nn.Module, split: Split, task: TaskInfo, cfg: RunConfig, *, epochs: int,
                seed: int, proximal_mu: float = 0.0,
                global_params: list[torch.Tensor] | None = None,
                window: EpochWindow | None = None,
                on_epoch: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``model`` in place on ``split`` for ``epochs`` epochs with ``cfg``'s optimiser and loss.

    Segmentation tasks train on the masks with `make_seg_training_loss` and ``cfg.augment``
    (see `batch_source`); an epoch visits every item (image, volume, or slice) once. Batches are
    drawn by a permutation from a ``torch.Generator`` seeded with ``seed`` and the
    global torch RNG (dropout, etc.) is re-seeded with ``seed`` inside a forked RNG state, so the
    same seed and the same initial weights give bitwise-identical weights while the caller's RNG
    state is left untouched. The last partial batch is kept, except a final batch of one sample
    when the model has BatchNorm (whose batch statistics need two samples).

    FedProx: when ``proximal_mu > 0`` and ``global_params`` (one tensor per
    ``model.parameters()`` entry) are given, ``(mu / 2) * ||w - w_global||^2`` is added to every
    batch loss; otherwise no proximal term is used.

    The learning rate of every step follows ``cfg.lr_schedule`` / ``cfg.warmup_fraction``
    (`common.training.schedule`) over the run; ``window`` says where this call sits in it (a
    FedAvg site or a baseline's round: `round_window`), None means the call is the whole run.
    Classification batches get ``cfg.augment`` too (`batch_source`); ``cfg.grad_clip > 0``
    clips each batch's total gradient norm (FedProx term included) before the step.
    ``on_epoch(n)`` is called after each epoch with the epochs done (progress only).
    """
    _check_args(split, task, epochs, proximal_mu)
    loop = _setup(model, split, task, cfg, seed=seed, proximal_mu=proximal_mu,
                  global_params=global_params, schedule=step_schedule(cfg, epochs, window))
    generator, device = torch.Generator().manual_seed(seed), model_device(model)
    start, steps, epoch_loss = time.perf_counter(), 0, 0.0
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            order = torch.randperm(loop.items, generator=generator).numpy()
            steps, epoch_loss = _epoch(loop, order, epoch, steps)
            if on_epoch is not None:          # progress display: epochs done so far
                on_epoch(epoch + 1)
    return TrainResult(loss=float(epoch_loss), num_samples=len(split), steps=steps,
                       seconds=time.perf_counter() - start)
