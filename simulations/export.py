"""`fedclinic demo-data`: write each simulated site's data as its own MedMNIST-layout .npz file.

For trying a real deployment (server + sites over the network, or on loopback) without hospital
data: every site gets a file with its own train / val / test split, exactly the partition
`fedclinic simulate` would use with the same options, in the format a site's `--data` accepts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.config import ConfigError, RunConfig
from common.datasets import load_dataset
from common.datasets.base import Split
from common.partitions.federation import build_federation
from common.site_names import site_name


def _uint8(split: Split) -> np.ndarray:
    images = np.clip(np.rint(split.images * 255.0), 0, 255).astype(np.uint8)
    if images.shape[1] == 1:                 # grey: MedMNIST stores (N, H, W) / (N, D, H, W)
        return images[:, 0]
    return np.moveaxis(images, 1, -1)        # RGB: (N, H, W, 3)


def _labels(split: Split) -> np.ndarray:
    labels = split.labels
    return labels.reshape(-1, 1).astype(np.int64) if labels.ndim == 1 else labels.astype(np.int64)


def export_sites(cfg: RunConfig, out: Path, force: bool = False) -> list[Path]:
    """One `site-<i>.npz` per site under `out` (common/site_names.py); returns their paths."""
    fed = build_federation(load_dataset(cfg), cfg)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{site_name(site.site)}.npz" for site in fed.sites]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} exists; pass --force to overwrite")
    for site, path in zip(fed.sites, paths):
        arrays = {}
        for name, split in (("train", site.train), ("val", site.val), ("test", site.test)):
            arrays[f"{name}_images"] = _uint8(split)
            arrays[f"{name}_labels"] = _labels(split)
        np.savez_compressed(path, **arrays)
    return paths
