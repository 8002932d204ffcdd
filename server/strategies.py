"""Strategy registry: Flower's Message-API strategies, configured from a RunConfig."""

from __future__ import annotations

import math

from flwr.serverapp.strategy import (
    FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Krum, Strategy,
)

from common.config import STRATEGIES, ConfigError, RunConfig

# Weight for averaging: the number of *training samples* each site reports (not batches).
WEIGHT_KEY = "num-examples"
# Client-level DP averages clipped updates with equal weights (every site reports 1.0).
UNIFORM_WEIGHT_KEY = "dp-weight"


def sampled_sites(cfg: RunConfig, num_sites: int) -> int:
    return max(1, math.ceil(cfg.fraction_train * num_sites))


def quorum(cfg: RunConfig, asked: int) -> int:
    """Successful replies a round needs: the larger of min_sites and min_site_fraction x asked."""
    return max(cfg.min_sites, math.ceil(cfg.min_site_fraction * asked - 1e-9))


def build_strategy(cfg: RunConfig, num_sites: int) -> Strategy:
    """Return the Flower strategy named by cfg.strategy, checked against the number of sites.

    The strategy samples from the sites that are connected, and needs only the quorum to be: a
    site that is down must not stall the run (Flower's sampler waits for its minimum forever).
    """
    if cfg.min_sites > num_sites:
        raise ConfigError(f"min_sites={cfg.min_sites} but the federation has only {num_sites} "
                          f"sites; lower min_sites")
    sampled = sampled_sites(cfg, num_sites)
    floor = min(quorum(cfg, sampled), num_sites)
    weight = UNIFORM_WEIGHT_KEY if cfg.dp == "client" else WEIGHT_KEY
    common = dict(fraction_train=cfg.fraction_train, fraction_evaluate=1.0,
                  min_train_nodes=floor, min_evaluate_nodes=floor,
                  min_available_nodes=floor, weighted_by_key=weight)
    name = cfg.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
    if name in ("fedadam", "fedyogi"):
        cls = FedAdam if name == "fedadam" else FedYogi
        return cls(**common, eta=cfg.server_lr, eta_l=cfg.lr)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        if int(cfg.trim_beta * sampled) * 2 >= sampled:
            raise ConfigError(f"trim_beta={cfg.trim_beta}: trims every one of the {sampled} "
                              "sampled sites; lower trim_beta or add sites")
        return FedTrimmedAvg(**common, beta=cfg.trim_beta)
    if name == "krum":
        if sampled < 2 * cfg.krum_malicious + 3:
            raise ConfigError(f"strategy=krum with krum_malicious={cfg.krum_malicious} needs at "
                              f"least {2 * cfg.krum_malicious + 3} sampled sites; got {sampled}")
        return Krum(**common, num_malicious_nodes=cfg.krum_malicious)
    raise ConfigError(f"strategy={name!r}: unknown; expected one of {', '.join(STRATEGIES)}")
