"""Local training, prediction and evaluation shared by sites, baselines and simulations.

Data stay numpy arrays until a batch is cut: each batch is converted to a tensor on the model's
device, so no DataLoader workers (and no extra processes) are involved. Nothing is printed here;
callers report progress from the returned `TrainResult` and metric dicts.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import RunConfig
from common.datasets.base import Split, TaskInfo
from common.metrics import classification_metrics


@dataclass(frozen=True)
class TrainResult:
    loss: float          # mean per-sample data loss of the last epoch (without the FedProx term)
    num_samples: int     # training samples at the site (the FedAvg weight)
    steps: int           # optimiser steps taken over all epochs
    seconds: float       # wall-clock time of the training loop


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels (warn, don't fail)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


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


def make_loss(cfg: RunConfig, task: TaskInfo, train_labels: np.ndarray) -> nn.Module:
    """The training loss named by ``cfg.loss`` for ``task``.

    * ``ce``: cross-entropy (multilabel: ``BCEWithLogitsLoss``).
    * ``weighted_ce``: class weights ``1 / count`` normalised to average 1 over classes (a class
      absent from ``train_labels`` is weighted like a class seen once); multilabel uses
      ``pos_weight = negatives / positives`` per label (1 for a label with no positives).
    * ``focal``: `FocalLoss` with ``cfg.focal_gamma`` (sigmoid form for multilabel).
    """
    multilabel = task.kind == "multilabel"
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, multilabel)
    if cfg.loss == "ce":
        return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    if cfg.loss != "weighted_ce":
        raise ValueError(f"loss={cfg.loss!r} unknown; expected one of ce, weighted_ce, focal")
    labels = np.asarray(train_labels)
    if multilabel:
        return nn.BCEWithLogitsLoss(pos_weight=_pos_weight(labels, task.num_classes))
    return nn.CrossEntropyLoss(weight=_class_weights(labels, task.num_classes))


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


def make_optimizer(cfg: RunConfig, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """SGD with ``cfg.momentum`` or Adam, both with ``cfg.lr`` and ``cfg.weight_decay``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer={cfg.optimizer!r} unknown; expected one of sgd, adam")


def _check_split(split: Split, task: TaskInfo, where: str) -> None:
    if len(split) == 0:
        raise ValueError(f"{where}: the split is empty (0 samples); at least one sample is needed")
    expected = task.spatial_dims + 2
    if split.images.ndim != expected:
        raise ValueError(f"{where}: images have shape {split.images.shape}; a {task.spatial_dims}D "
                         f"task needs {expected} dims (N, C, {'D, ' * (task.spatial_dims == 3)}H, W)")
    if split.labels.shape[0] != len(split):
        raise ValueError(f"{where}: {len(split)} images but {split.labels.shape[0]} labels")
    if task.kind == "multilabel" and split.labels.shape[1:] != (task.num_classes,):
        raise ValueError(f"{where}: multilabel labels have shape {split.labels.shape}; expected "
                         f"(N, {task.num_classes})")
    if task.kind != "multilabel" and split.labels.ndim != 1:
        raise ValueError(f"{where}: {task.kind} labels have shape {split.labels.shape}; expected (N,)")


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _batch(split: Split, index: np.ndarray, task: TaskInfo,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(split.images[index], dtype=np.float32))
    dtype = torch.float32 if task.kind == "multilabel" else torch.int64
    labels = torch.as_tensor(np.asarray(split.labels[index]), dtype=dtype)
    return images.to(device), labels.to(device)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _proximal_term(params: list[torch.Tensor], global_params: list[torch.Tensor]) -> torch.Tensor:
    return sum(((w - g) ** 2).sum() for w, g in zip(params, global_params))


def _prepare_global(model: nn.Module, global_params: list[torch.Tensor]) -> list[torch.Tensor]:
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

    Batches are drawn by a permutation from a ``torch.Generator`` seeded with ``seed`` and the
    global torch RNG (dropout, etc.) is re-seeded with ``seed`` inside a forked RNG state, so the
    same seed and the same initial weights give bitwise-identical weights while the caller's RNG
    state is left untouched. The last partial batch is kept, except a final batch of one sample
    when the model has BatchNorm (whose batch statistics need two samples).

    FedProx: when ``proximal_mu > 0`` and ``global_params`` (one tensor per
    ``model.parameters()`` entry) are given, ``(mu / 2) * ||w - w_global||^2`` is added to every
    batch loss; otherwise no proximal term is used.
    """
    _check_split(split, task, "train_local")
    if epochs < 1:
        raise ValueError(f"train_local: epochs={epochs}; expected >= 1")
    if proximal_mu < 0:
        raise ValueError(f"train_local: proximal_mu={proximal_mu}; expected >= 0")
    n, batch_size = len(split), cfg.batch_size
    skip_single = _has_batchnorm(model) and n % batch_size == 1
    if skip_single and n == 1:
        raise ValueError("train_local: the split has 1 sample and the model has BatchNorm, which "
                         "cannot train on a batch of one; use norm='group' or 'instance'")
    device = _device(model)
    use_prox = proximal_mu > 0 and global_params is not None
    anchor = _prepare_global(model, global_params) if use_prox else []
    loss_fn = make_loss(cfg, task, split.labels).to(device)
    optimizer = make_optimizer(cfg, model.parameters())
    generator = torch.Generator().manual_seed(seed)
    fork_devices = [device] if device.type == "cuda" else []
    start, steps, epoch_loss = time.perf_counter(), 0, 0.0
    model.train()
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).numpy()
            total, seen = 0.0, 0
            for lo in range(0, n, batch_size):
                index = order[lo:lo + batch_size]
                if skip_single and len(index) == 1:
                    continue
                images, labels = _batch(split, index, task, device)
                data_loss = loss_fn(model(images), labels)
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


def _logits(model: nn.Module, images: np.ndarray, task: TaskInfo, batch_size: int) -> torch.Tensor:
    """Model outputs for all images in eval mode as float64 on the CPU; restores the model's mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    device, was_training = _device(model), model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for lo in range(0, images.shape[0], batch_size):
                batch = np.ascontiguousarray(images[lo:lo + batch_size], dtype=np.float32)
                chunks.append(model(torch.from_numpy(batch).to(device)).double().cpu())
    finally:
        model.train(was_training)
    out = torch.cat(chunks) if chunks else torch.zeros((0, task.num_classes), dtype=torch.float64)
    if out.ndim != 2 or out.shape[1] != task.num_classes:
        raise ValueError(f"model output has shape {tuple(out.shape)}; the {task.kind} task needs "
                         f"(N, {task.num_classes}) logits (num_classes={task.num_classes})")
    return out


def _to_proba(logits: torch.Tensor, task: TaskInfo) -> np.ndarray:
    if task.kind == "multilabel":
        return torch.sigmoid(logits).numpy()
    return torch.softmax(logits, dim=1).numpy()


def predict_proba(model: nn.Module, images: np.ndarray, task: TaskInfo,
                  batch_size: int = 256) -> np.ndarray:
    """(N, num_classes) float64 probabilities: softmax, or per-label sigmoid for multilabel."""
    return _to_proba(_logits(model, images, task, batch_size), task)


def evaluate(model: nn.Module, split: Split, task: TaskInfo, batch_size: int = 256) -> dict[str, float]:
    """``loss`` (plain CE, or BCE for multilabel, mean per sample), ``num_examples`` and the
    metrics of `classification_metrics`, all python floats.

    The loss is unweighted whatever ``cfg.loss`` trained the model, so sites stay comparable.
    """
    _check_split(split, task, "evaluate")
    logits = _logits(model, split.images, task, batch_size)
    if task.kind == "multilabel":
        target = torch.as_tensor(np.asarray(split.labels), dtype=torch.float64)
        loss = F.binary_cross_entropy_with_logits(logits, target)
    else:
        loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(split.labels), dtype=torch.int64))
    metrics = classification_metrics(task.kind, np.asarray(split.labels), _to_proba(logits, task))
    return {"loss": float(loss.item()), "num_examples": float(len(split)), **metrics}
