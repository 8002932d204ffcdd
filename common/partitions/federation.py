"""A federation: the pool partitioned into sites, each split and (optionally) scanner-shifted."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.config import RunConfig
from common.partition_spec import PartitionSpec
from common.datasets.base import Dataset, Split, TaskInfo
from common.partitions.base import SHIFT, SPLIT, stream
from common.partitions.by_tag import partition_by_tag, tag_values
from common.partitions.label_skew import lesion_bins, partition_indices
from common.partitions.site_split import split_site

if TYPE_CHECKING:
    from common.acquisition import AcquisitionProfile


@dataclass(frozen=True)
class SiteData:
    """One simulated hospital: its own train/val/test splits (shifted when the spec says so)."""

    site: int
    train: Split
    val: Split
    test: Split
    profile: AcquisitionProfile | None   # acquisition profile applied to the images; None: no shift
    indices: np.ndarray                  # sorted rows of the pool (dataset.train [+ dataset.val])


@dataclass(frozen=True)
class Federation:
    dataset_name: str
    task: TaskInfo
    sites: tuple[SiteData, ...]
    global_test: Split | None            # the dataset's own test split, never shifted
    spec: PartitionSpec
    seed: int


def build_federation(dataset: Dataset, cfg: RunConfig) -> Federation:
    """Partition the pool (train [+ val]) into cfg.sites sites, split each, apply site shift."""
    spec = cfg.partition_spec
    pool = dataset.train if dataset.val is None else Split.concat([dataset.train, dataset.val])
    labels = lesion_bins(dataset, pool) if spec.label == "lesion" else dataset.class_labels(pool)
    if spec.label == "by-tag":
        parts = partition_by_tag(tag_values(dataset, pool, spec.tag), cfg.sites, spec.tag)
    else:
        parts = partition_indices(labels, cfg.sites, spec, cfg.seed)
    sites = tuple(_make_site(s, idx, pool, labels[idx], cfg, spec.shift)
                  for s, idx in enumerate(parts))
    return Federation(dataset.name, dataset.task, sites, dataset.test, spec, cfg.seed)


def _make_site(site: int, indices: np.ndarray, pool: Split, labels: np.ndarray, cfg: RunConfig,
               shift: bool) -> SiteData:
    data = pool.subset(indices)
    profile = None
    if shift:
        from common.acquisition import apply_profile, site_profile

        profile = site_profile(site, cfg.seed)
        images = apply_profile(data.images, profile, seed=stream(cfg.seed, site, SHIFT))
        data = dataclasses.replace(data, images=images)   # keeps masks and tags
    rng = np.random.default_rng(stream(cfg.seed, site, SPLIT))
    train, val, test = split_site(labels, cfg.val_fraction, cfg.test_fraction, rng, site)
    return SiteData(site, data.subset(train), data.subset(val), data.subset(test), profile, indices)
