"""Poisson sampling of record indices for DP-SGD: each logical batch includes every record
independently with probability ``sample_rate`` (Opacus' `UniformWithReplacementSampler`)."""

from __future__ import annotations

import numpy as np
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader


class _Indices(torch.utils.data.Dataset):
    """Dataset of record indices: batches are cut from the numpy split, not collated per item."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate_indices(batch: list[int]) -> np.ndarray:
    return np.asarray(batch, dtype=np.int64)   # also fine for an empty Poisson batch


def poisson_loader(n: int, sample_rate: float, steps: int, seed: int) -> DataLoader:
    """``steps`` Poisson batches of indices into ``n`` records (int64 arrays, possibly empty),
    drawn from a torch generator seeded with ``seed``."""
    return DataLoader(_Indices(n), collate_fn=_collate_indices,
                      batch_sampler=UniformWithReplacementSampler(
                          num_samples=n, sample_rate=sample_rate, steps=steps,
                          generator=torch.Generator().manual_seed(seed)))
