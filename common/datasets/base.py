"""The one API every dataset module exposes (FLamby-style): a `Dataset` of `Split`s plus `TaskInfo`.

Images are float32 in [0, 1], channel-first: (N, C, H, W) for 2D, (N, C, D, H, W) for 3D.
Labels are int64 (N,) for binary / multiclass / ordinal tasks and float32 (N, K) 0/1 for multilabel.
Masks, when present, are uint8 lesion masks with the image's spatial shape, (N, H, W) or (N, D, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TASK_KINDS = ("binary", "multiclass", "ordinal", "multilabel", "segmentation")


class DataError(ValueError):
    """Input data is missing, corrupt or has the wrong layout (message names file and field)."""


@dataclass(frozen=True)
class TaskInfo:
    kind: str                      # one of TASK_KINDS
    num_classes: int               # output units: 2 for binary, K for multiclass/ordinal/multilabel
    spatial_dims: int              # 2 or 3
    channels: int                  # image channels (1 grey, 3 RGB)
    size: int                      # image side in pixels
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise DataError(f"task kind {self.kind!r} unknown; expected one of {TASK_KINDS}")


@dataclass(frozen=True)
class Split:
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    # Per-sample header values (e.g. DICOM Manufacturer), one (N,) str array per keyword; used
    # by the by-tag partition. None for datasets without them.
    tags: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> "Split":
        masks = None if self.masks is None else self.masks[index]
        tags = None if self.tags is None else {k: v[index] for k, v in self.tags.items()}
        return Split(self.images[index], self.labels[index], masks, tags)

    @staticmethod
    def concat(splits: list["Split"]) -> "Split":
        masks = None
        if splits and all(s.masks is not None for s in splits):
            masks = np.concatenate([s.masks for s in splits])
        tags = None
        if splits and all(s.tags is not None for s in splits):
            keys = [k for k in splits[0].tags if all(k in s.tags for s in splits)]
            tags = {k: np.concatenate([s.tags[k] for s in splits]) for k in keys}
        return Split(np.concatenate([s.images for s in splits]),
                     np.concatenate([s.labels for s in splits]), masks, tags)


@dataclass(frozen=True)
class Dataset:
    name: str
    task: TaskInfo
    train: Split                   # the pool that is partitioned across sites
    test: Split | None = None      # the dataset's own global test split, if it has one
    val: Split | None = None       # the dataset's own validation split, if it has one
    # Input files (or labels rows) left out, with the reason: (file or key, reason).
    skipped: tuple[tuple[str, str], ...] = ()

    def class_labels(self, split: Split) -> np.ndarray:
        """One int label per sample (multilabel: index of the first positive, or 0)."""
        if self.task.kind == "multilabel":
            return np.where(split.labels.any(axis=1), split.labels.argmax(axis=1), 0).astype(np.int64)
        return split.labels.astype(np.int64)
