"""Local training, prediction and evaluation shared by sites, baselines and simulations.

Data stay numpy arrays until a batch is cut: each batch is converted to a tensor on the model's
device, so no DataLoader workers (and no extra processes) are involved. Nothing is printed here;
callers report progress from the returned `TrainResult` and metric dicts.

Every entry point dispatches on the task: classification tasks use ``Split.labels``, a
segmentation task (``task.kind == 'segmentation'``, see `common.seg_data`) uses ``Split.masks``
as per-pixel targets. For segmentation a training *item* is an image or a volume, or, when a 2D
network meets 3D volumes (``volume_mode='slices'``, recognised from the shapes), one axial slice:
training shuffles all slices of all volumes, prediction runs slice by slice and stacks the slices
back into volumes, so metrics are always computed on whole volumes.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.augment import augment_batch, parse_augment
from common.config import RunConfig
from common.datasets.base import Split, TaskInfo
from common.metrics import classification_metrics
from common.segmentation import make_seg_loss, seg_class_weights, segmentation_metrics

VOXEL_BUDGET = 1 << 21   # pixels/voxels per forward pass at prediction time (bounds memory)
SW_BATCH = 4             # sliding-window inference: windows per forward pass
SW_OVERLAP = 0.25        # ... and their overlap (MONAI's default), blended with Gaussian weights


@dataclass(frozen=True)
class TrainResult:
    loss: float          # mean per-item data loss of the last epoch (without the FedProx term;
                         # an item is a sample, or one slice in segmentation slice mode)
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
    if task.kind == "segmentation":
        raise ValueError("make_loss: a segmentation task trains on masks; use make_seg_training_"
                         "loss(cfg, task, masks) or training_loss(cfg, task, split)")
    if cfg.loss in ("dice", "dice_ce"):
        raise ValueError(f"loss={cfg.loss!r} is a segmentation loss; a {task.kind} task accepts "
                         f"ce, weighted_ce or focal")
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


def make_seg_training_loss(cfg: RunConfig, task: TaskInfo, masks: np.ndarray) -> nn.Module:
    """The segmentation loss named by ``cfg.loss`` (`common.segmentation.make_seg_loss`) on
    logits (N, classes, *spatial) and long targets (N, *spatial); ``weighted_ce`` weighs the
    classes by `seg_class_weights` of the site's training ``masks``."""
    weights = seg_class_weights(masks, task.num_classes) if cfg.loss == "weighted_ce" else None
    return make_seg_loss(cfg.loss, task.num_classes, class_weights=weights,
                         focal_gamma=cfg.focal_gamma)


def training_loss(cfg: RunConfig, task: TaskInfo, split: Split) -> nn.Module:
    """`make_seg_training_loss` on the split's masks for segmentation, else `make_loss` on its
    labels."""
    if task.kind == "segmentation":
        return make_seg_training_loss(cfg, task, split.masks)
    return make_loss(cfg, task, split.labels)


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
    if task.kind == "segmentation":
        _check_seg_split(split, task, where)
        return
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


def _check_seg_split(split: Split, task: TaskInfo, where: str) -> None:
    data_dims = split.images.ndim - 2
    if data_dims != task.spatial_dims and not (data_dims == 3 and task.spatial_dims == 2):
        raise ValueError(f"{where}: images have shape {split.images.shape}; a segmentation task "
                         f"with a {task.spatial_dims}D network needs (N, C, "
                         f"{'D, ' * (task.spatial_dims == 3)}H, W) images"
                         + (" (or 3D volumes, trained slice by slice)" * (task.spatial_dims == 2)))
    if split.masks is None:
        raise ValueError(f"{where}: a segmentation task needs masks, but the split has none")
    expected = (len(split), *split.images.shape[2:])
    if split.masks.shape != expected:
        raise ValueError(f"{where}: masks have shape {split.masks.shape}; the images need "
                         f"{expected} (one class id per pixel/voxel)")
    if split.labels.shape[0] != len(split):
        raise ValueError(f"{where}: {len(split)} images but {split.labels.shape[0]} labels")


def slice_depth(split: Split, task: TaskInfo) -> int:
    """Training items per sample: the volumes' depth D when a 2D network meets 3D volumes
    (slice mode), else 1 (whole images / volumes)."""
    slices = task.kind == "segmentation" and split.images.ndim == 5 and task.spatial_dims == 2
    return int(split.images.shape[2]) if slices else 1


def _seg_batch(split: Split, index: np.ndarray, depth: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and long masks of training items ``index`` (slice k = volume k // D, depth k % D)."""
    if depth == 1:
        images, masks = split.images[index], split.masks[index]
    else:
        volume, z = np.divmod(index, depth)
        images, masks = split.images[volume, :, z], split.masks[volume, z]   # (B, C, H, W)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.int64))
    return x.to(device), y.to(device)


def _substream(seed: int, key: int) -> int:
    """An independent 32-bit seed derived from ``seed`` (e.g. for augmentation)."""
    return int(np.random.SeedSequence([seed, key]).generate_state(1)[0])


BatchFn = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def batch_source(split: Split, task: TaskInfo, cfg: RunConfig, device: torch.device,
                 seed: int) -> tuple[int, BatchFn]:
    """``(number of training items, index -> (inputs, targets) on device)`` for ``split``.

    Segmentation: items are images/volumes or slices (`slice_depth`), and ``cfg.augment``'s
    operations are applied to every batch with a torch generator seeded from ``seed`` (its own
    stream, so switching augmentation on does not change the batch order).
    """
    if task.kind != "segmentation":
        return len(split), lambda index: _batch(split, index, task, device)
    depth = slice_depth(split, task)
    ops = parse_augment(cfg.augment)
    generator = torch.Generator().manual_seed(_substream(seed, 1))

    def fetch(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = _seg_batch(split, index, depth, device)
        if ops:
            images, masks = augment_batch(images, masks, ops, generator)
        return images, masks

    return len(split) * depth, fetch


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
    _check_split(split, task, "train_local")
    if epochs < 1:
        raise ValueError(f"train_local: epochs={epochs}; expected >= 1")
    if proximal_mu < 0:
        raise ValueError(f"train_local: proximal_mu={proximal_mu}; expected >= 0")
    n, batch_size = len(split), cfg.batch_size
    device = _device(model)
    items, fetch = batch_source(split, task, cfg, device, seed)
    skip_single = _has_batchnorm(model) and items % batch_size == 1
    if skip_single and items == 1:
        raise ValueError("train_local: the split has 1 sample and the model has BatchNorm, which "
                         "cannot train on a batch of one; use norm='group' or 'instance'")
    use_prox = proximal_mu > 0 and global_params is not None
    anchor = _prepare_global(model, global_params) if use_prox else []
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


def evaluate(model: nn.Module, split: Split, task: TaskInfo, batch_size: int = 256,
             roi_size: int | None = None) -> dict[str, float]:
    """``loss`` (plain CE, or BCE for multilabel, mean per sample), ``num_examples`` and the
    metrics of `classification_metrics`, all python floats.

    Segmentation tasks: ``loss`` is the plain CE per pixel/voxel and the metrics are
    `common.segmentation.segmentation_metrics` of the argmax masks (dice, iou, hd95, asd and
    per-class dice), see `evaluate_segmentation`.

    The loss is unweighted whatever ``cfg.loss`` trained the model, so sites stay comparable.
    """
    if task.kind == "segmentation":
        return evaluate_segmentation(model, split, task, batch_size, roi_size)
    _check_split(split, task, "evaluate")
    logits = _logits(model, split.images, task, batch_size)
    if task.kind == "multilabel":
        target = torch.as_tensor(np.asarray(split.labels), dtype=torch.float64)
        loss = F.binary_cross_entropy_with_logits(logits, target)
    else:
        loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(split.labels), dtype=torch.int64))
    metrics = classification_metrics(task.kind, np.asarray(split.labels), _to_proba(logits, task))
    return {"loss": float(loss.item()), "num_examples": float(len(split)), **metrics}


# --------------------------------------------------------------------------- segmentation output

def _roi(task: TaskInfo, roi_size: int | None) -> int:
    value = getattr(task, "roi_size", 0) if roi_size is None else roi_size
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"roi_size={value!r}; expected an integer >= 0 (0 = whole volume)")
    return value


def _forward_volumes(model: nn.Module, x: torch.Tensor, task: TaskInfo, roi: int,
                     batch_size: int) -> torch.Tensor:
    """Logits (B, K, *spatial) of a chunk of images: slice by slice for a 2D network on volumes,
    by sliding windows for a 3D network when ``roi`` > 0, else in one pass."""
    if x.ndim == 5 and task.spatial_dims == 2:
        b, c, d, h, w = x.shape
        flat = x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
        out = torch.cat([model(flat[i:i + batch_size]) for i in range(0, b * d, batch_size)])
        return out.reshape(b, d, -1, h, w).permute(0, 2, 1, 3, 4)
    if x.ndim == 5 and roi > 0:
        from monai.inferers import sliding_window_inference

        window = tuple(min(roi, s) for s in x.shape[2:])   # a cube covering the volume: one pass
        return sliding_window_inference(x, window, SW_BATCH, model, overlap=SW_OVERLAP,
                                        mode="gaussian")
    return model(x)


def segmentation_logits(model: nn.Module, images: np.ndarray, task: TaskInfo,
                        batch_size: int = 64, roi_size: int | None = None
                        ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first index, float32 CPU logits (B, K, *spatial))`` for consecutive chunks of
    ``images``, in eval mode without gradients (the model's mode is restored).

    Chunks hold at most ``batch_size`` images and `VOXEL_BUDGET` pixels/voxels. In slice mode
    ``batch_size`` counts slices. ``roi_size`` (default: the task's) > 0 predicts 3D volumes by
    MONAI sliding-window inference with that cube, Gaussian-blended, clipped to the volume.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    roi = _roi(task, roi_size)
    per_item = int(np.prod(images.shape[2:])) if images.ndim > 2 else 1
    chunk = max(1, min(batch_size, VOXEL_BUDGET // max(per_item, 1)))
    device, was_training = _device(model), model.training
    model.eval()
    try:
        with torch.no_grad():
            for lo in range(0, images.shape[0], chunk):
                x = torch.from_numpy(np.ascontiguousarray(images[lo:lo + chunk], dtype=np.float32))
                out = _forward_volumes(model, x.to(device), task, roi, batch_size)
                if out.shape[1] != task.num_classes or out.shape[2:] != x.shape[2:]:
                    raise ValueError(f"model output has shape {tuple(out.shape)}; the segmentation "
                                     f"task needs ({x.shape[0]}, {task.num_classes}, "
                                     f"{', '.join(map(str, x.shape[2:]))}) logits")
                yield lo, out.float().cpu()
    finally:
        model.train(was_training)


def _mask_dtype(task: TaskInfo) -> type:
    return np.uint8 if task.num_classes <= 256 else np.int64


def predict_masks(model: nn.Module, images: np.ndarray, task: TaskInfo, batch_size: int = 64,
                  roi_size: int | None = None) -> np.ndarray:
    """(N, *spatial) argmax class per pixel/voxel (uint8), as `segmentation_logits` predicts."""
    out = np.empty((images.shape[0], *images.shape[2:]), dtype=_mask_dtype(task))
    for lo, logits in segmentation_logits(model, images, task, batch_size, roi_size):
        out[lo:lo + logits.shape[0]] = logits.argmax(dim=1).numpy()
    return out


def per_sample_seg_loss(model: nn.Module, split: Split, task: TaskInfo, batch_size: int = 64,
                        roi_size: int | None = None) -> np.ndarray:
    """(N,) float64 cross-entropy per image/volume (mean over its pixels/voxels), e.g. for
    membership inference."""
    _check_split(split, task, "per_sample_seg_loss")
    out = np.empty(len(split), dtype=np.float64)
    for lo, logits in segmentation_logits(model, split.images, task, batch_size, roi_size):
        target = torch.from_numpy(np.asarray(split.masks[lo:lo + logits.shape[0]], dtype=np.int64))
        ce = F.cross_entropy(logits.double(), target, reduction="none")
        out[lo:lo + logits.shape[0]] = ce.flatten(1).mean(dim=1).numpy()
    return out


def evaluate_segmentation(model: nn.Module, split: Split, task: TaskInfo, batch_size: int = 64,
                          roi_size: int | None = None) -> dict[str, float]:
    """``loss`` (plain CE per pixel/voxel), ``num_examples`` and `segmentation_metrics` (dice,
    iou, hd95, asd, per-class dice) of the argmax masks against ``split.masks``, python floats.

    Metrics of volumes trained slice by slice are computed on the re-stacked volumes.
    """
    _check_split(split, task, "evaluate")
    pred = np.empty((len(split), *split.images.shape[2:]), dtype=_mask_dtype(task))
    total = 0.0
    for lo, logits in segmentation_logits(model, split.images, task, batch_size, roi_size):
        hi = lo + logits.shape[0]
        target = torch.from_numpy(np.asarray(split.masks[lo:hi], dtype=np.int64))
        total += float(F.cross_entropy(logits.double(), target, reduction="sum"))
        pred[lo:hi] = logits.argmax(dim=1).numpy()
    metrics = segmentation_metrics(pred, np.asarray(split.masks), task.num_classes)
    return {"loss": total / split.masks.size, "num_examples": float(len(split)),
            **{k: float(v) for k, v in metrics.items()}}
