"""Dataset registry: `load_dataset(cfg)` returns the `Dataset` named by ``cfg.dataset``.

Loaded datasets are cached per process (sites simulated in one process share them), so callers
must treat the returned arrays as read-only: index or copy them, never modify them in place.
"""

from __future__ import annotations

from functools import lru_cache

from common.config import RunConfig
from common.datasets import medmnist, synthetic
from common.datasets.base import TASK_KINDS, Dataset, DataError, Split, TaskInfo

DATASET_NAMES = ("synthetic", "medmnist")

__all__ = ["DATASET_NAMES", "TASK_KINDS", "Dataset", "DataError", "Split", "TaskInfo",
           "load_dataset"]


def load_dataset(cfg: RunConfig) -> Dataset:
    """The dataset ``cfg`` asks for (synthetic: image_size, spatial_dims, num_samples, seed;
    medmnist: data_path)."""
    if cfg.dataset == "synthetic":
        return _synthetic(cfg.image_size, cfg.spatial_dims, cfg.num_samples, cfg.seed)
    if cfg.dataset == "medmnist":
        return _medmnist(cfg.data_path)
    raise DataError(f"dataset={cfg.dataset!r}: unknown; expected one of {', '.join(DATASET_NAMES)}")


@lru_cache(maxsize=4)
def _synthetic(size: int, spatial_dims: int, num_samples: int, seed: int) -> Dataset:
    return synthetic.load(size=size, spatial_dims=spatial_dims, num_samples=num_samples, seed=seed)


@lru_cache(maxsize=2)
def _medmnist(data_path: str) -> Dataset:
    return medmnist.load(data_path)
