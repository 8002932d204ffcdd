"""Poisson sampling of record indices for DP-SGD: each logical batch includes every record
independently with probability ``sample_rate`` (Opacus' `UniformWithReplacementSampler`), drawn
from a seeded torch generator (simulation) or from a `CsprngSource` (deployment,
`common.training.secure_random`)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

from common.training.secure_random import CsprngSource


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


class CsprngPoissonSampler(UniformWithReplacementSampler):
    """Opacus' Poisson sampler (so `BatchMemoryManager` sizes it alike) drawing from a
    `CsprngSource` instead of a torch generator."""

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int,
                 source: CsprngSource) -> None:
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, steps=steps)
        self.source = source

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield self.source.poisson_indices(self.num_samples, self.sample_rate).tolist()


def poisson_loader(n: int, sample_rate: float, steps: int, seed: int | None,
                   source: CsprngSource | None = None) -> DataLoader:
    """``steps`` Poisson batches of indices into ``n`` records (int64 arrays, possibly empty),
    drawn from a torch generator seeded with ``seed``, or from ``source`` (then ``seed`` must be
    None: a secure batch never depends on a seed)."""
    if (seed is None) == (source is None):
        raise ValueError(f"poisson_loader: pass exactly one of seed={seed!r} and source={source!r}")
    if source is not None:
        sampler = CsprngPoissonSampler(num_samples=n, sample_rate=sample_rate, steps=steps,
                                       source=source)
    else:
        sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=sample_rate,
                                                steps=steps,
                                                generator=torch.Generator().manual_seed(seed))
    return DataLoader(_Indices(n), collate_fn=_collate_indices, batch_sampler=sampler)
