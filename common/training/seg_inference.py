"""Segmentation output: logits chunk by chunk (slices, sliding windows), masks, losses, metrics.

Volumes trained slice by slice are predicted slice by slice and re-stacked, so masks, losses and
metrics are always those of whole volumes.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError
from common.datasets.base import Split, TaskInfo
from common.segmentation import segmentation_metrics
from common.training.batches import model_device
from common.training.checks import check_split

VOXEL_BUDGET = 1 << 21   # pixels/voxels per forward pass at prediction time (bounds memory)
SW_BATCH = 4             # sliding-window inference: windows per forward pass
SW_OVERLAP = 0.25        # ... and their overlap (MONAI's default), blended with Gaussian weights


def _roi(task: TaskInfo, roi_size: int | None) -> int:
    value = getattr(task, "roi_size", 0) if roi_size is None else roi_size
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"roi_size={value!r}; expected an integer >= 0 (0 = whole volume)")
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
    device, was_training = model_device(model), model.training
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
    check_split(split, task, "per_sample_seg_loss")
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
    check_split(split, task, "evaluate")
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
