"""Training items of a split as batches of tensors on the model's device.

A classification item is a sample; a segmentation item is an image/volume, or one axial slice
when a 2D network meets 3D volumes (`slice_depth` > 1). ``cfg.augment`` is applied per batch,
each sample transformed on its own (to its mask too, for segmentation).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from common.augment import augment_batch, parse_augment
from common.config import RunConfig
from common.datasets.base import Split, TaskInfo
from common.training.seeding import substream

BatchFn = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def slice_depth(split: Split, task: TaskInfo) -> int:
    """Training items per sample: the volumes' depth D when a 2D network meets 3D volumes
    (slice mode), else 1 (whole images / volumes)."""
    slices = task.kind == "segmentation" and split.images.ndim == 5 and task.spatial_dims == 2
    return int(split.images.shape[2]) if slices else 1


def batch_source(split: Split, task: TaskInfo, cfg: RunConfig, device: torch.device,
                 seed: int) -> tuple[int, BatchFn]:
    """``(number of training items, index -> (inputs, targets) on device)`` for ``split``.

    Segmentation items are images/volumes or slices (`slice_depth`). ``cfg.augment``'s
    operations are applied to every batch (classification: to the images) with a torch
    generator seeded from ``seed`` (its own stream, so switching augmentation on does not change
    the batch order); every sample draws its own parameters, so no record affects another's.
    """
    ops = parse_augment(cfg.augment)
    generator = torch.Generator().manual_seed(substream(seed, 1))
    if task.kind != "segmentation":
        if not ops:
            return len(split), lambda index: _batch(split, index, task, device)

        def fetch_augmented(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            images, labels = _batch(split, index, task, device)
            return augment_batch(images, None, ops, generator)[0], labels

        return len(split), fetch_augmented
    depth = slice_depth(split, task)

    def fetch(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = _seg_batch(split, index, depth, device)
        if ops:
            images, masks = augment_batch(images, masks, ops, generator)
        return images, masks

    return len(split) * depth, fetch


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


def _batch(split: Split, index: np.ndarray, task: TaskInfo,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(split.images[index], dtype=np.float32))
    dtype = torch.float32 if task.kind == "multilabel" else torch.int64
    labels = torch.as_tensor(np.asarray(split.labels[index]), dtype=dtype)
    return images.to(device), labels.to(device)
