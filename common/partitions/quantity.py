"""Quantity skew: seeded, skewed site sizes (``quantity[:powerlaw|lognormal]``)."""

from __future__ import annotations

import numpy as np

from common.config import ConfigError
from common.partitions.base import MIN_SITE_SAMPLES

ZIPF_EXPONENT = 1.5           # quantity:powerlaw, share of the site at rank r is r**-1.5
LOGNORMAL_SIGMA = 1.0         # quantity:lognormal, shares are exp(N(0, sigma^2))


def quantity_sizes(n: int, num_sites: int, law: str, rng: np.random.Generator) -> list[int]:
    """Skewed site sizes summing to ``n``; each site gets >= a tenth of its equal share (and >= 3).

    ``powerlaw``: the sites are ranked in a seeded random order and the site at rank r gets a share
    proportional to r**-1.5 (Zipf-like; largest/smallest = sites**1.5). ``lognormal``: shares are
    seeded draws of exp(N(0, 1)). The remainder after the floor is shared out by largest remainder.
    """
    floor = max(MIN_SITE_SAMPLES, n // (10 * num_sites))
    if floor * num_sites > n:
        raise ConfigError(f"quantity skew: {num_sites} sites need at least {floor * num_sites} "
                          f"samples, the pool has {n}")
    if law == "powerlaw":
        shares = (rng.permutation(num_sites) + 1.0) ** -ZIPF_EXPONENT
    elif law == "lognormal":
        shares = rng.lognormal(0.0, LOGNORMAL_SIGMA, num_sites)
    else:
        raise ConfigError(f"quantity law {law!r} unknown; expected powerlaw or lognormal")
    spare = n - floor * num_sites
    raw = shares / shares.sum() * spare
    sizes = np.floor(raw).astype(np.int64)
    left = spare - int(sizes.sum())
    sizes[np.argsort(sizes - raw, kind="stable")[:left]] += 1   # largest fractional parts first
    return [int(floor + s) for s in sizes]
