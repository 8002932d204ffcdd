"""Index partitions over class labels (or lesion-size bins): iid, dirichlet, pathological, lesion,
and the iid-labels quantity skew, reusing flwr-datasets' partitioners (imported lazily: slow)."""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import numpy as np

from common.config import ConfigError
from common.partition_spec import PartitionSpec
from common.datasets.base import DataError, Dataset, Split
from common.partitions.base import (MIN_SITE_SAMPLES, PARTITIONER, PERMUTE, SIZES,
                                    check_site_sizes, spec_text, stream)
from common.partitions.quantity import quantity_sizes

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


def partition_indices(labels: np.ndarray, num_sites: int, spec: PartitionSpec,
                      seed: int) -> list[np.ndarray]:
    """One sorted int64 array of sample indices per site; disjoint; reproducible for a seed."""
    labels = _check_labels(labels)
    text, n = spec_text(spec), len(labels)
    if num_sites < 1:
        raise ConfigError(f"sites={num_sites}: need at least 1 site")
    if num_sites * MIN_SITE_SAMPLES > n:
        need = num_sites * MIN_SITE_SAMPLES
        raise ConfigError(f"sites={num_sites} needs at least {need} samples "
                          f"({MIN_SITE_SAMPLES} per site for train/val/test) but the pool has only "
                          f"{n}; use at most {n // MIN_SITE_SAMPLES} sites or more data")
    import datasets  # Hugging Face; imported here because it is slow to import

    perm = np.random.default_rng(stream(seed, PERMUTE)).permutation(n)
    partitioner = _make_partitioner(labels, num_sites, spec, seed, text)
    partitioner.dataset = datasets.Dataset.from_dict({"label": labels[perm], "idx": perm})
    try:
        with warnings.catch_warnings():  # flwr warns on each Dirichlet re-draw and unused class
            warnings.simplefilter("ignore")
            parts = [np.sort(np.asarray(list(partitioner.load_partition(i)["idx"]), dtype=np.int64))
                     for i in range(num_sites)]
    except ValueError as exc:
        raise ConfigError(f"partition={text!r} with sites={num_sites} on {n} samples failed: "
                          f"{exc}") from None
    check_site_sizes(parts, spec, text)
    return parts


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels: expected a 1-D integer class label per sample, got shape "
                        f"{labels.shape} dtype {labels.dtype}")
    return labels.astype(np.int64)


def _make_partitioner(labels: np.ndarray, num_sites: int, spec: PartitionSpec, seed: int,
                      text: str) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, SizePartitioner

    flwr_seed = stream(seed, PARTITIONER)
    if spec.label == "by-tag":
        raise ConfigError(f"partition={text!r} splits by per-sample tag values, not labels: use "
                          f"partition_by_tag (build_federation does)")
    if spec.label in ("dirichlet", "lesion"):
        # The minimum must leave room for train/val/test; up to 10 per site when data allows.
        min_size = max(MIN_SITE_SAMPLES, min(10, len(labels) // (4 * num_sites)))
        return DirichletPartitioner(num_sites, "label", alpha=float(spec.alpha),
                                    min_partition_size=min_size, self_balancing=False,
                                    shuffle=True, seed=flwr_seed)
    if spec.label == "pathological":
        num_classes = len(np.unique(labels))
        if spec.classes_per_site > num_classes:
            raise ConfigError(f"partition={text!r}: {spec.classes_per_site} classes per site but "
                              f"the labels hold only {num_classes} classes; use "
                              f"pathological:K with K <= {num_classes}")
        return striped_pathological()(num_sites, "label", spec.classes_per_site,
                                      shuffle=True, seed=flwr_seed)
    if spec.quantity:
        rng = np.random.default_rng(stream(seed, SIZES))
        return SizePartitioner(quantity_sizes(len(labels), num_sites, spec.quantity, rng))
    return IidPartitioner(num_sites)


@functools.cache
def striped_pathological() -> type:
    """flwr's PathologicalPartitioner with a class assignment placing as many classes as possible.

    flwr's own modes either draw each site's classes at random (classes go unused even when the
    sites could hold them all) or give site p classes p..p+K-1 (only sites+K-1 classes used).
    Here the classes are laid out in a seeded random order and site p takes the K consecutive ones
    starting at p*K, cyclically, so min(classes, sites*K) classes are used. Everything else
    (splitting a class's samples evenly among the sites holding it, the checks, the shuffling) is
    flwr's. Built lazily so importing this module does not import flwr-datasets.
    """
    from flwr_datasets.partitioner import PathologicalPartitioner

    class StripedPathological(PathologicalPartitioner):
        def _determine_partition_id_to_unique_labels(self) -> None:
            self._unique_labels = sorted(self.dataset.unique(self._partition_by))
            order = self._rng.permutation(len(self._unique_labels))
            k, c = self._num_classes_per_partition, len(order)
            for pid in range(self._num_partitions):
                self._partition_id_to_unique_labels[pid] = [
                    self._unique_labels[order[(pid * k + i) % c]] for i in range(k)]

    return StripedPathological


def lesion_bins(dataset: Dataset, split: Split) -> np.ndarray:
    """Lesion-size bin per sample (`common.seg_data.LESION_BINS`): the lesion partition's labels."""
    from common.seg_data import lesion_size_bins

    if split.masks is None:
        raise DataError(f"partition='lesion:ALPHA' bins samples by lesion size, but dataset "
                        f"{dataset.name!r} has no masks; use a dataset with masks (synthetic, "
                        f"msd) or another partition")
    return lesion_size_bins(split.masks)
