"""A run's federation, built once per process: what each simulated ClientApp trains on."""

from __future__ import annotations

import functools

from common.config import ConfigError, RunConfig
from common.partitions.federation import Federation, SiteData, build_federation


@functools.lru_cache(maxsize=2)
def load_federation(cfg: RunConfig) -> Federation:
    """Load cfg's dataset and build its federation once per process (cfg is frozen, so hashable)."""
    from common.datasets import load_dataset

    return build_federation(load_dataset(cfg), cfg)


def site_data(cfg: RunConfig, site: int) -> SiteData:
    """The data of one site, what each simulated ClientApp trains and evaluates on."""
    if not 0 <= site < cfg.sites:
        raise ConfigError(f"site={site}: out of range; this run has sites={cfg.sites} "
                          f"(ids 0..{cfg.sites - 1})")
    return load_federation(cfg).sites[site]
