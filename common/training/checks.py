"""What a split must look like before a model trains on it, predicts it or is evaluated on it."""

from __future__ import annotations

from common.datasets.base import Split, TaskInfo


def check_split(split: Split, task: TaskInfo, where: str) -> None:
    """ValueError naming ``where`` unless ``split`` is non-empty and shaped as ``task`` needs
    (images, labels, and for segmentation one mask per image)."""
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
