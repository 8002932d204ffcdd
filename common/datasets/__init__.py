"""Dataset registry: `load_dataset(cfg)` returns the `Dataset` named by ``cfg.dataset``.

Loaded datasets are cached per process (sites simulated in one process share them), so callers
must treat the returned arrays as read-only: index or copy them, never modify them in place.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import RunConfig
from common.datasets import medmnist, synthetic
from common.datasets.base import TASK_KINDS, Dataset, DataError, Split, TaskInfo

if TYPE_CHECKING:  # imported lazily: pydicom / nibabel only load when a run uses them
    from common.datasets.dicom.options import DicomOptions
    from common.datasets.msd import MsdOptions

DATASET_NAMES = ("synthetic", "medmnist", "dicom", "msd")

__all__ = ["DATASET_NAMES", "TASK_KINDS", "Dataset", "DataError", "Split", "TaskInfo",
           "load_dataset"]


def load_dataset(cfg: RunConfig) -> Dataset:
    """The dataset ``cfg`` asks for (synthetic: image_size, spatial_dims, num_samples, seed;
    medmnist: data_path; dicom / msd: data_path and the fields in `DicomOptions` / `MsdOptions`,
    which are also the cache key), seen as ``cfg.task`` trains on it (segmentation: the masks are
    the targets, see `common.seg_data`)."""
    from common.seg_data import for_task

    return for_task(_load(cfg), cfg)


def _load(cfg: RunConfig) -> Dataset:
    if cfg.dataset == "synthetic":
        return _synthetic(cfg.image_size, cfg.spatial_dims, cfg.num_samples, cfg.seed)
    if cfg.dataset == "medmnist":
        return _medmnist(cfg.data_path)
    if cfg.dataset == "dicom":
        from common.datasets.dicom.options import DicomOptions

        return _dicom(cfg.data_path, DicomOptions.from_config(cfg))
    if cfg.dataset == "msd":
        from common.datasets import msd

        return _msd(cfg.data_path, msd.MsdOptions.from_config(cfg))
    raise DataError(f"dataset={cfg.dataset!r}: unknown; expected one of {', '.join(DATASET_NAMES)}")


@lru_cache(maxsize=4)
def _synthetic(size: int, spatial_dims: int, num_samples: int, seed: int) -> Dataset:
    return synthetic.load(size=size, spatial_dims=spatial_dims, num_samples=num_samples, seed=seed)


@lru_cache(maxsize=2)
def _medmnist(data_path: str) -> Dataset:
    return medmnist.load(data_path)


@lru_cache(maxsize=2)
def _dicom(data_path: str, options: DicomOptions) -> Dataset:
    from common.datasets.dicom.loader import load_folder

    return load_folder(Path(data_path), options)


@lru_cache(maxsize=2)
def _msd(data_path: str, options: MsdOptions) -> Dataset:
    from common.datasets import msd

    return msd.load_folder(Path(data_path), options)
