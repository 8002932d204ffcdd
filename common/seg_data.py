"""The segmentation view of a dataset: the targets are the masks, not the image-level labels.

`for_task(dataset, cfg)` turns a dataset into what ``cfg.task`` trains on. For segmentation the
splits are unchanged (images, image-level labels, masks); only the task differs: a
`SegmentationTask` whose ``num_classes`` counts the mask classes *including* background (class 0;
synthetic: 2, background and lesion). Image-level labels stay in ``Split.labels`` because the
partitioner and the per-site stratified splits use them.

3D volumes in ``volume_mode='slices'`` keep their (N, C, D, H, W) layout, but the task's
``spatial_dims`` is 2: every caller that builds the network from the task (server, sites,
baselines) gets a 2D network, and `common.training` then trains it on the volumes' axial slices
and predicts slice by slice, stacking the slices back into a volume for 3D metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from common.config import VOLUME_MODES, ConfigError, RunConfig
from common.datasets.base import DataError, Dataset, Split, TaskInfo

LESION_BINS = ("none", "small", "medium", "large")


@dataclass(frozen=True)
class SegmentationTask(TaskInfo):
    """A `TaskInfo` of kind ``segmentation`` that also says how volumes meet the network.

    ``spatial_dims`` is the network's (2 in slices mode), ``data_dims`` the images' own.
    ``roi_size`` > 0: 3D prediction by MONAI sliding-window inference with that cube (clipped
    to the volume, so a cube covering the volume is one whole-volume pass).
    """

    data_dims: int = 2
    volume_mode: str = "3d"
    roi_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind != "segmentation":
            raise DataError(f"SegmentationTask: kind={self.kind!r}; expected 'segmentation'")
        if self.volume_mode not in VOLUME_MODES:
            raise DataError(f"SegmentationTask: volume_mode={self.volume_mode!r}; expected one "
                            f"of {', '.join(VOLUME_MODES)}")
        if self.data_dims not in (2, 3) or self.spatial_dims != network_dims(self.data_dims,
                                                                              self.volume_mode):
            raise DataError(f"SegmentationTask: spatial_dims={self.spatial_dims} does not fit "
                            f"data_dims={self.data_dims} in volume_mode={self.volume_mode!r}")
        if self.roi_size < 0:
            raise DataError(f"SegmentationTask: roi_size={self.roi_size}; expected >= 0")
        if self.num_classes < 2:
            raise DataError(f"SegmentationTask: num_classes={self.num_classes}; a mask needs "
                            f"background plus at least one class")

    @property
    def slices(self) -> bool:
        """True when a 2D network runs on the axial slices of 3D volumes."""
        return self.data_dims == 3 and self.spatial_dims == 2


def network_dims(data_dims: int, volume_mode: str) -> int:
    """Spatial dims of the network for data of ``data_dims`` dims in ``volume_mode``."""
    return 2 if volume_mode == "slices" else data_dims


def _mask_splits(dataset: Dataset) -> list[tuple[str, Split]]:
    named = [("train", dataset.train), ("test", dataset.test), ("val", dataset.val)]
    out = []
    for which, split in named:
        if split is None:
            continue
        if split.masks is None:
            raise DataError(f"dataset {dataset.name!r}: the {which} split has no masks; "
                            f"task='segmentation' needs a lesion mask per image (datasets with "
                            f"masks: synthetic, msd)")
        if not np.issubdtype(split.masks.dtype, np.integer):
            raise DataError(f"dataset {dataset.name!r}: {which} masks have dtype "
                            f"{split.masks.dtype}; expected integer class ids (uint8)")
        out.append((which, split))
    return out


def _labels_are_mask_classes(split: Split) -> bool:
    labels = np.asarray(split.labels)
    if labels.ndim != 1 or not len(split):
        return False
    return bool(np.array_equal(labels, split.masks.reshape(len(split), -1).max(axis=1)))


def segmentation_view(dataset: Dataset, *, volume_mode: str = "3d", roi_size: int = 0) -> Dataset:
    """``dataset`` with a `SegmentationTask` (the arrays are shared, not copied).

    The task keeps its ``num_classes`` and class names when they already describe the mask
    classes: a segmentation task, or image-level labels that are each image's largest mask
    class (MSD's convention). Otherwise (synthetic: the labels are lesion types) they come from
    the masks: ``max(mask) + 1`` classes (at least 2), named ``background, lesion`` for binary
    masks.
    """
    splits = _mask_splits(dataset)
    task = dataset.task
    top = max(int(s.masks.max()) if s.masks.size else 0 for _, s in splits)
    if task.kind == "segmentation" or (_labels_are_mask_classes(dataset.train)
                                       and task.num_classes > top):
        num_classes, names = task.num_classes, task.class_names
    else:
        num_classes = max(2, top + 1)
        names = ("background", "lesion") if num_classes == 2 else \
            ("background",) + tuple(f"class {c}" for c in range(1, num_classes))
    data_dims = dataset.train.images.ndim - 2
    seg = SegmentationTask(kind="segmentation", num_classes=num_classes,
                           spatial_dims=network_dims(data_dims, volume_mode),
                           channels=task.channels, size=task.size, class_names=tuple(names),
                           data_dims=data_dims, volume_mode=volume_mode, roi_size=roi_size)
    return replace(dataset, task=seg)


def for_task(dataset: Dataset, cfg: RunConfig) -> Dataset:
    """The dataset as ``cfg.task`` sees it (idempotent: a converted dataset converts to itself)."""
    if cfg.task == "segmentation":
        return segmentation_view(dataset, volume_mode=cfg.volume_mode, roi_size=cfg.roi_size)
    if dataset.task.kind == "segmentation":
        raise ConfigError(f"task='classification' but dataset={cfg.dataset!r} "
                          f"({dataset.name}) only has segmentation masks; use task=segmentation")
    return dataset


def check_task_model(cfg: RunConfig) -> None:
    """ConfigError unless ``cfg.model`` produces what ``cfg.task`` needs (mask vs label)."""
    from common.models import MODEL_NAMES, is_segmentation_model

    seg_models = [m for m in MODEL_NAMES if is_segmentation_model(m)]
    classifiers = [m for m in MODEL_NAMES if not is_segmentation_model(m)]
    if cfg.task == "segmentation" and not is_segmentation_model(cfg.model):
        raise ConfigError(f"model={cfg.model!r} is a classifier (one label per image); "
                          f"task='segmentation' needs a segmentation network: one of "
                          f"{', '.join(seg_models)}")
    if cfg.task != "segmentation" and is_segmentation_model(cfg.model):
        raise ConfigError(f"model={cfg.model!r} is a segmentation network (a mask per image); "
                          f"task={cfg.task!r} needs a classifier: one of "
                          f"{', '.join(classifiers)} (or set task=segmentation)")


def check_dp_volume_mode(cfg: RunConfig, task: TaskInfo) -> None:
    """Sample-level DP protects one record per patient; slices would make each slice a record."""
    if cfg.dp == "sample" and isinstance(task, SegmentationTask) and task.slices:
        raise ConfigError("dp='sample' with volume_mode='slices': DP-SGD protects one record per "
                          "patient, but slice training makes every slice of a volume a separate "
                          "record, so the patient's privacy would be overstated; use "
                          "volume_mode=3d (or dp=off/client)")


def lesion_fraction(masks: np.ndarray) -> np.ndarray:
    """(N,) share of each mask's pixels/voxels that belong to any foreground class."""
    masks = np.asarray(masks)
    if masks.ndim < 3:
        raise DataError(f"masks: shape {masks.shape}; expected (N, H, W) or (N, D, H, W)")
    flat = masks.reshape(masks.shape[0], -1)
    return (flat > 0).mean(axis=1) if flat.shape[1] else np.zeros(masks.shape[0])


def lesion_size_bins(masks: np.ndarray) -> np.ndarray:
    """(N,) int64 bin of each mask in `LESION_BINS`: 0 none (empty mask), 1..3 small, medium,
    large = lower, middle, upper third of the non-empty masks' lesion fractions.

    Tertiles of the pool itself, so the bins mean the same in 2D and 3D and on any dataset
    (``np.quantile`` with its default linear interpolation; ties go to the smaller bin).
    """
    frac = lesion_fraction(masks)
    bins = np.zeros(frac.shape[0], dtype=np.int64)
    present = frac > 0
    if present.any():
        cuts = np.quantile(frac[present], [1 / 3, 2 / 3])
        bins[present] = 1 + np.searchsorted(cuts, frac[present], side="left")
    return bins
