"""Seeds: the global RNGs of a process, and independent substreams derived from one seed."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels (warn, don't fail)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def substream(seed: int, key: int) -> int:
    """An independent 32-bit seed derived from ``seed`` (e.g. for augmentation)."""
    return int(np.random.SeedSequence([seed, key]).generate_state(1)[0])
