"""The local training loop of one site for one round (plain SGD/Adam, optional FedProx term)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from common.config import ConfigError, RunConfig
from common.datasets.base import Split, TaskInfo
from common.training.batches import batch_source, model_device
from common.training.checks import check_split
from common.training.losses import training_loss
from common.training.optimiser import make_optimizer


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


def train_local(model: nn.Module, split: Split, task: TaskInfo, cfg: RunConfig, *, epochs: int,
                seed: int, proximal_mu: float = 0.0,
                global_params: list[torch.Tensor] | None = None) -> TrainResult:
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
    """
    check_split(split, task, "train_local")
    if epochs < 1:
        raise ValueError(f"train_local: epochs={epochs}; expected >= 1")
    if proximal_mu < 0:
        raise ValueError(f"train_local: proximal_mu={proximal_mu}; expected >= 0")
    n, batch_size = len(split), cfg.batch_size
    device = model_device(model)
    items, fetch = batch_source(split, task, cfg, device, seed)
    skip_single = _has_batchnorm(model) and items % batch_size == 1
    if skip_single and items == 1:
        raise ConfigError("train_local: the split has 1 sample and the model has BatchNorm, which "
                          "cannot train on a batch of one; use norm='group' or 'instance'")
    use_prox = proximal_mu > 0 and global_params is not None
    anchor = prepare_global(model, global_params) if use_prox else []
    loss_fn = training_loss(cfg, task, split).to(device)
    optimizer = make_optimizer(cfg, model.parameters())
    generator = torch.Generator().manual_seed(seed)
    fork_devices = [device] if device.type == "cuda" else []
    start, steps, epoch_loss = time.perf_counter(), 0, 0.0
    model.train()
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            order = torch.randperm(items, generator=generator).numpy()
            total, seen = 0.0, 0
            for lo in range(0, items, batch_size):
                index = order[lo:lo + batch_size]
                if skip_single and len(index) == 1:
                    continue
                inputs, targets = fetch(index)
                data_loss = loss_fn(model(inputs), targets)
                loss = data_loss
                if use_prox:
                    loss = loss + 0.5 * proximal_mu * _proximal_term(list(model.parameters()), anchor)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"train_local: loss became {loss.item()} at epoch "
                                             f"{epoch + 1}, step {steps + 1}; lower lr={cfg.lr}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                total += data_loss.item() * len(index)
                seen += len(index)
            epoch_loss = total / seen
    return TrainResult(loss=float(epoch_loss), num_samples=n, steps=steps,
                       seconds=time.perf_counter() - start)
