"""Classification output: logits, probabilities, and `evaluate` (which dispatches on the task)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.datasets.base import Split, TaskInfo
from common.metrics import classification_metrics
from common.training.batches import model_device
from common.training.checks import check_split
from common.training.seg_inference import evaluate_segmentation


def classification_logits(model: nn.Module, images: np.ndarray, task: TaskInfo,
                          batch_size: int) -> torch.Tensor:
    """(N, num_classes) model outputs in eval mode, float64 on the CPU; restores the mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    device, was_training = model_device(model), model.training
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
    return _to_proba(classification_logits(model, images, task, batch_size), task)


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
    check_split(split, task, "evaluate")
    logits = classification_logits(model, split.images, task, batch_size)
    if task.kind == "multilabel":
        target = torch.as_tensor(np.asarray(split.labels), dtype=torch.float64)
        loss = F.binary_cross_entropy_with_logits(logits, target)
    else:
        loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(split.labels), dtype=torch.int64))
    metrics = classification_metrics(task.kind, np.asarray(split.labels), _to_proba(logits, task))
    return {"loss": float(loss.item()), "num_examples": float(len(split)), **metrics}
