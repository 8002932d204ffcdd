"""Baselines with the same model, initial weights and compute as the federation.

`local`: each site trains alone for rounds x local_epochs epochs on its own training split.
`pooled`: one model trains for rounds x local_epochs epochs on every site's training data at once
(what sharing the data would give). Both are scored on every site's test split and the global test
with `common.training.prediction.evaluate` (classification metrics, or Dice/IoU/HD95/ASD for segmentation).
With dp='sample' both train under DP-SGD with the same epsilon budget and delta rule as the sites.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.config import RunConfig
from common.datasets import Split
from common.metrics import mean_metrics
from common.models import build_model
from common.training.dp_local import train_local_dp
from common.privacy.ledger import PrivacyLedger
from common.privacy.planner import plan_from_config
from common.training.local import train_local
from common.partitions.federation import Federation
from common.report.privacy import SpentPrivacy
from common.report.record import BaselineScores
from common.training.prediction import evaluate


def initial_model(cfg: RunConfig, fed: Federation) -> torch.nn.Module:
    """The same initial network the ServerApp starts from (seeded by cfg.seed)."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, spatial_dims=fed.task.spatial_dims, in_channels=fed.task.channels,
                       num_classes=fed.task.num_classes, norm=cfg.norm, width=cfg.width)


def _train(model: torch.nn.Module, split: Split, cfg: RunConfig, fed: Federation,
           seed: int) -> SpentPrivacy | None:
    """Train for rounds x local_epochs epochs; under DP-SGD with the same budget as each site
    (noise calibrated for this data set's size). Returns the privacy spent (None without DP)."""
    epochs = cfg.rounds * cfg.local_epochs
    if cfg.dp != "sample":
        train_local(model, split, fed.task, cfg, epochs=epochs, seed=seed)
        return None
    plan = plan_from_config(cfg, len(split))
    result = train_local_dp(model, split, fed.task, cfg, epochs=epochs, seed=seed,
                            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                            steps=plan.total_steps)
    ledger = PrivacyLedger(cfg.accountant)
    ledger.record(result.noise_multiplier, result.sample_rate, result.steps)
    return SpentPrivacy(epsilon=ledger.epsilon(plan.delta), delta=plan.delta,
                        noise_multiplier=result.noise_multiplier, sample_rate=result.sample_rate,
                        dp_steps=result.steps)


def headline(metrics: dict) -> str:
    """One short score for progress lines: Dice (and HD95) for segmentation, else accuracy."""
    if "dice" in metrics:
        return f"dice {metrics['dice']:.3f} hd95 {metrics.get('hd95', float('nan')):.2f}"
    return f"acc {metrics['accuracy']:.3f}" if "accuracy" in metrics else "n/a"


def run_local(cfg: RunConfig, fed: Federation, echo: Callable[[str], None]) -> BaselineScores:
    """One model per site; each site's entry is its own model on its own test split."""
    sites, globals_, weights, privacy = {}, [], [], {}
    for s in fed.sites:
        model = initial_model(cfg, fed)
        spent = _train(model, s.train, cfg, fed, seed=cfg.seed + 7919 * (s.site + 1))
        if spent is not None:
            privacy[str(s.site)] = spent
        sites[str(s.site)] = evaluate(model, s.test, fed.task)
        if fed.global_test is not None:
            globals_.append(evaluate(model, fed.global_test, fed.task))
            weights.append(len(s.train))
        echo(f"[baseline local] site {s.site}: test {headline(sites[str(s.site)])}")
    glob = mean_metrics(globals_, weights) if globals_ else {}
    return BaselineScores(sites, glob, note="mean of the local models, weighted by training "
                          "samples", site_privacy=privacy)


def run_pooled(cfg: RunConfig, fed: Federation, echo: Callable[[str], None]) -> BaselineScores:
    """One model on the union of the sites' training data."""
    model = initial_model(cfg, fed)
    pooled = Split.concat([s.train for s in fed.sites])
    spent = _train(model, pooled, cfg, fed, seed=cfg.seed + 104729)
    sites = {str(s.site): evaluate(model, s.test, fed.task) for s in fed.sites}
    glob = evaluate(model, fed.global_test, fed.task) if fed.global_test is not None else {}
    echo("[baseline pooled] done" + (f": global {headline(glob)}" if glob else ""))
    return BaselineScores(sites, glob, privacy=spent)


BASELINE_RUNNERS = {"local": run_local, "pooled": run_pooled}
