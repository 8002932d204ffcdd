"""Baselines with the same model, initial weights and compute as the federation.

`local`: each site trains alone on its own training split. `pooled`: one model trains on every
site's training data at once (what sharing the data would give). Both train as a site does:
``rounds`` rounds of ``local_epochs`` epochs (a fresh optimiser each round, as each round of the
federation has), printing a line per round. They select their round on validation data the
way the federation does: the model after the round with the lowest validation loss (local: the
site's own val split; pooled: every site's), ``patience`` rounds without a better one ending the
training; their operating point comes from their own validation scores
(`common.operating_point`, the same histograms and rule as the federation's). A baseline's
validation data never leave its one holder, so it selects on the exact values, under DP too.
The test splits choose nothing: both are scored on every site's test split and the global test
with `common.training.prediction.evaluate`, and at their operating point. With dp='sample' both
train under DP-SGD with the same epsilon budget and delta rule as the sites (each round's steps
as a site's plan has them); with loss='logit_adjusted' the prior is the holder's class counts
released once with Gaussian noise (sigma `PRIOR_SIGMA`, the sites' default count release),
planned into the budget and charged to its ledger, as a site's is.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from common.class_prior import class_counts
from common.config import RunConfig
from common.datasets import Split
from common.metrics import mean_metrics
from common.models import build_model
from common.operating_point import (OperatingPoint, argmax_point, choose_operating_point,
                                    metrics_at, positive_class)
from common.training.dp_local import train_local_dp
from common.training.init import initial_state
from common.privacy.ledger import PrivacyLedger
from common.privacy.mechanisms import release_matrix
from common.privacy.planner import PrivacyPlan, plan_from_config
from common.training.local import train_local
from common.training.schedule import round_window
from common.partitions.federation import Federation
from common.report.privacy import SpentPrivacy
from common.report.record import BaselineScores
from common.report.selection import Selection
from common.training.prediction import evaluate, predict_proba
from common.validation_stats import validation_counts
from simulations.progress import Progress, Task

SCORED_KINDS = ("binary", "multiclass", "ordinal")
PRIOR_SIGMA = 10.0               # as a site policy's default count_noise_multiplier
ROUND_SEED = 100_003             # round r of a baseline trains with seed + r x ROUND_SEED


def initial_model(cfg: RunConfig, fed: Federation) -> torch.nn.Module:
    """The same initial network the ServerApp starts from (seeded by cfg.seed; with
    cfg.init_from, that file's weights, `common.training.init`)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, spatial_dims=fed.task.spatial_dims,
                        in_channels=fed.task.channels, num_classes=fed.task.num_classes,
                        norm=cfg.norm, width=cfg.width)
    initial_state(cfg.init_from, model, fed.task.num_classes)
    return model


@dataclass(frozen=True)
class Trained:
    """A baseline model after training: what it spent, and how its round was chosen."""

    spent: SpentPrivacy | None
    selection: Selection


def _dp_prior(split: Split, fed: Federation, seed: int, ledger: PrivacyLedger) -> np.ndarray:
    """The split's class counts plus N(0, PRIOR_SIGMA^2) each (L2 sensitivity 1), charged to
    ``ledger``: the prior of loss='logit_adjusted' under DP."""
    counts = class_counts(split.labels, fed.task.num_classes)
    noisy, (sigma, q, steps) = release_matrix(counts, PRIOR_SIGMA,
                                              torch.Generator().manual_seed(seed))
    ledger.record(sigma, q, steps)
    return np.clip(np.round(noisy), 0.0, None)


def _train_round(model: torch.nn.Module, split: Split, cfg: RunConfig, fed: Federation,
                 server_round: int, seed: int, plan: PrivacyPlan | None,
                 ledger: PrivacyLedger | None, task: Task,
                 prior: np.ndarray | None = None) -> float:
    """Round ``server_round``: local_epochs epochs at that round's place in the run's
    learning-rate schedule (as a site's, `round_window`), under DP-SGD the plan's steps of one
    round, recorded in ``ledger``; returns the training loss of its last epoch. ``task``
    counts the epochs (each one without DP; under DP-SGD, whose epochs are logical, the
    round's at its end)."""
    window = round_window(cfg, server_round)
    if plan is None:
        return train_local(model, split, fed.task, cfg, epochs=cfg.local_epochs, seed=seed,
                           window=window, on_epoch=lambda _: task.advance()).loss
    result = train_local_dp(model, split, fed.task, cfg, epochs=cfg.local_epochs, seed=seed,
                            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                            steps=plan.steps_per_round, window=window, prior_counts=prior)
    ledger.record(result.noise_multiplier, result.sample_rate, result.steps)
    task.advance(cfg.local_epochs)
    return result.loss


def _val_loss(model: torch.nn.Module, val: Split | None, fed: Federation) -> float | None:
    """The model's validation loss; None without a val split, or for segmentation (no
    selection there yet, as in the federation)."""
    if val is None or len(val) == 0 or fed.task.kind == "segmentation":
        return None
    return evaluate(model, val, fed.task)["loss"]


def _spent(plan: PrivacyPlan | None, ledger: PrivacyLedger | None) -> SpentPrivacy | None:
    if plan is None:
        return None
    return SpentPrivacy(epsilon=ledger.epsilon(plan.delta), delta=plan.delta,
                        noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                        dp_steps=ledger.steps)


def train_selected(model: torch.nn.Module, split: Split, val: Split | None, cfg: RunConfig,
                   fed: Federation, seed: int, name: str,
                   echo: Callable[[str], None], task: Task | None = None) -> Trained:
    """Train round by round (module docstring), scoring ``val`` after each round; leave
    ``model`` holding the weights of the round with the lowest validation loss (the last
    round's without validation data). ``task`` counts its epochs (`simulations.progress`);
    each round's line says how many are done and the time left."""
    task = task or Progress().task(name, cfg.rounds * cfg.local_epochs)
    prior_release = (cfg.dp == "sample" and cfg.loss == "logit_adjusted"
                     and fed.task.kind in SCORED_KINDS)
    plan = plan_from_config(cfg, len(split), extra=[(PRIOR_SIGMA, 1.0, 1)] if prior_release
                            else ()) if cfg.dp == "sample" else None
    ledger = PrivacyLedger(cfg.accountant) if plan is not None else None
    prior = _dp_prior(split, fed, seed, ledger) if prior_release else None
    best, best_round, best_state, scores, since, stopped = None, 0, None, {}, 0, ""
    last = 0
    for r in range(1, cfg.rounds + 1):
        clock = time.perf_counter()
        loss = _train_round(model, split, cfg, fed, r, seed + r * ROUND_SEED, plan, ledger,
                            task, prior)
        last, value = r, _val_loss(model, val, fed)
        note = ""
        if value is not None:
            scores[r] = value
            if best is None or value < best:
                best, best_round, best_state, since = value, r, copy.deepcopy(
                    model.state_dict()), 0
                note = " (best)"
            else:
                since += 1
        shown = "" if value is None else f", val loss {value:.3f}{note}"
        echo(f"[baseline {name}] round {r}/{cfg.rounds}: train loss {loss:.3f}{shown} "
             f"({time.perf_counter() - clock:.1f}s; {task.status()})")
        if cfg.patience and since >= cfg.patience and r < cfg.rounds:
            stopped = (f"early stopping: {since} rounds without a lower validation loss (best "
                       f"{best:.4f} at round {best_round}, patience {cfg.patience})")
            echo(f"[baseline {name}] {stopped}")
            task.drop((cfg.rounds - r) * cfg.local_epochs)
            break
    if best_state is None:
        reason = ("no model selection for segmentation yet" if fed.task.kind == "segmentation"
                  else "no validation data")
        return Trained(_spent(plan, ledger), Selection("", last, last, skipped=reason,
                                                       stopped=stopped))
    model.load_state_dict(best_state)
    return Trained(_spent(plan, ledger), Selection("val_loss", best_round, last, best, scores,
                                                   stopped=stopped))


def operating_point_of(model: torch.nn.Module, val: Split | None, cfg: RunConfig,
                       fed: Federation, source: str) -> OperatingPoint:
    """The model's operating point from its own validation scores (as the federation's, from
    the same histograms / confusion matrix)."""
    positive = positive_class(fed.task, cfg.positive_class)
    if fed.task.kind not in SCORED_KINDS:
        return argmax_point(f"no operating point for {fed.task.kind} tasks", positive)
    if val is None or len(val) == 0:
        return argmax_point("no validation data", positive)
    probs = predict_proba(model, val.images, fed.task)
    counts = validation_counts(fed.task.kind, np.asarray(val.labels), probs)
    return choose_operating_point(fed.task, counts, target_sensitivity=cfg.target_sensitivity,
                                  positive=positive, source=source,
                                  prior_adjusted=cfg.loss == "logit_adjusted")


def scored_at(point: OperatingPoint, model: torch.nn.Module, split: Split | None,
              fed: Federation) -> dict[str, float]:
    """The model's metrics on ``split`` at ``point`` ({} without a split, or for tasks without
    an operating point)."""
    if split is None or len(split) == 0 or fed.task.kind not in SCORED_KINDS:
        return {}
    probs = predict_proba(model, split.images, fed.task)
    return metrics_at(point, fed.task.kind, np.asarray(split.labels), probs)


def headline(metrics: dict) -> str:
    """One short score for progress lines: Dice (and HD95) for segmentation, else accuracy."""
    if "dice" in metrics:
        return f"dice {metrics['dice']:.3f} hd95 {metrics.get('hd95', float('nan')):.2f}"
    return f"acc {metrics['accuracy']:.3f}" if "accuracy" in metrics else "n/a"


def _site_model(cfg: RunConfig, fed: Federation, s, echo: Callable[[str], None],
                task: Task | None = None) -> tuple[torch.nn.Module, Trained]:
    model = initial_model(cfg, fed)
    trained = train_selected(model, s.train, s.val, cfg, fed, cfg.seed + 7919 * (s.site + 1),
                             f"local site {s.site}", echo, task)
    point = operating_point_of(model, s.val, cfg, fed, f"site {s.site}'s validation split")
    own = scored_at(point, model, s.test, fed)
    glob = scored_at(point, model, fed.global_test, fed)
    selection = replace(trained.selection, operating_point=point, at_operating_point=glob,
                        sites_at_operating_point={str(s.site): own} if own else {})
    return model, replace(trained, selection=selection)


def run_local(cfg: RunConfig, fed: Federation, echo: Callable[[str], None],
              progress: Progress | None = None) -> BaselineScores:
    """One model per site; each site's entry is its own model on its own test split.
    ``progress`` shows the epochs of all the sites' models as one task."""
    sites, globals_, weights, privacy, chosen = {}, [], [], {}, {}
    at_point, glob_at_point = {}, []
    task = (progress or Progress()).task("baseline local",
                                         len(fed.sites) * cfg.rounds * cfg.local_epochs)
    for s in fed.sites:
        model, trained = _site_model(cfg, fed, s, echo, task)
        if trained.spent is not None:
            privacy[str(s.site)] = trained.spent
        chosen[str(s.site)] = trained.selection
        sites[str(s.site)] = evaluate(model, s.test, fed.task)
        at_point.update(trained.selection.sites_at_operating_point)
        if fed.global_test is not None:
            globals_.append(evaluate(model, fed.global_test, fed.task))
            glob_at_point.append(trained.selection.at_operating_point)
            weights.append(len(s.train))
        echo(f"[baseline local] site {s.site}: test {headline(sites[str(s.site)])} "
             f"({_chosen(trained.selection)})")
    task.finish()
    glob = mean_metrics(globals_, weights) if globals_ else {}
    glob_op = (mean_metrics(glob_at_point, weights)
               if glob_at_point and all(glob_at_point) else {})
    return BaselineScores(sites, glob, note="mean of the local models, weighted by training "
                          "samples", site_privacy=privacy, site_selection=chosen,
                          at_operating_point=glob_op, sites_at_operating_point=at_point)


def _chosen(selection: Selection) -> str:
    if not selection.selected:
        return f"last round, {selection.skipped}"
    return f"round {selection.chosen} of {selection.last} by validation loss"


def run_pooled(cfg: RunConfig, fed: Federation, echo: Callable[[str], None],
               progress: Progress | None = None) -> BaselineScores:
    """One model on the union of the sites' training data, selected on the union of their
    val splits."""
    model = initial_model(cfg, fed)
    pooled = Split.concat([s.train for s in fed.sites])
    vals = [s.val for s in fed.sites if s.val is not None and len(s.val)]
    val = Split.concat(vals) if vals else None
    task = (progress or Progress()).task("baseline pooled", cfg.rounds * cfg.local_epochs)
    trained = train_selected(model, pooled, val, cfg, fed, cfg.seed + 104729, "pooled", echo,
                             task)
    task.finish()
    point = operating_point_of(model, val, cfg, fed, "the sites' pooled validation splits")
    sites = {str(s.site): evaluate(model, s.test, fed.task) for s in fed.sites}
    glob = evaluate(model, fed.global_test, fed.task) if fed.global_test is not None else {}
    at_sites = {str(s.site): m for s in fed.sites
                if (m := scored_at(point, model, s.test, fed))}
    selection = replace(trained.selection, operating_point=point,
                        at_operating_point=scored_at(point, model, fed.global_test, fed),
                        sites_at_operating_point=at_sites)
    echo("[baseline pooled] done" + (f": global {headline(glob)}" if glob else "")
         + f" ({_chosen(selection)})")
    return BaselineScores(sites, glob, privacy=trained.spent, selection=selection,
                          at_operating_point=selection.at_operating_point,
                          sites_at_operating_point=at_sites)


BASELINE_RUNNERS = {"local": run_local, "pooled": run_pooled}
