"""Strategy registry: Flower's Message-API strategies, configured from a RunConfig, each coping
with what sites keep local under DP (`SiteReleasesMixin`)."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, FedYogi, Krum, Strategy,
)

from common.config import STRATEGIES, ConfigError, RunConfig

# Weight for averaging: the number of *training samples* each site reports (not batches).
WEIGHT_KEY = "num-examples"
# Client-level DP averages clipped updates with equal weights (every site reports 1.0).
UNIFORM_WEIGHT_KEY = "dp-weight"


# What sites keep local under DP (docs/what-leaves.md): a train reply says whether its weight is
# a noised count (1.0) or the equal weight 1.0 (0.0); an evaluate reply whether its test metrics
# stayed at the site (1.0).
COUNT_NOISED_KEY = "count_noised"
WITHHELD_KEY = "withheld"


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))


def equal_weights_if_mixed(replies: list[Message], weight_key: str) -> bool:
    """Some sites weighted by a noised count, others by the equal weight 1.0 (their policy keeps
    the count): weight every site equally (the reply's weight set to 1.0, in place), or the
    equal-weight sites would count for almost nothing. True when it did."""
    flags = {float(_metrics(m).get(COUNT_NOISED_KEY, -1.0))
             for m in replies if not m.has_error() and m.content.metric_records}
    if not {0.0, 1.0} <= flags:
        return False
    for msg in replies:
        if not msg.has_error() and msg.content.metric_records:
            _metrics(msg)[weight_key] = 1.0
    return True


def comparable_evaluate_replies(replies: Iterable[Message]) -> list[Message]:
    """The evaluate replies Flower can average: errors (Flower logs them), and the replies with
    metrics, minus those whose metrics stayed at the site; if the rest still differ in their
    keys (sites with different policies or task metrics), the largest group with one key set.
    Flower refuses to aggregate replies whose metric keys differ."""
    replies = list(replies)
    errors = [m for m in replies if m.has_error()]
    scored = [m for m in replies if not m.has_error() and m.content.metric_records
              and _metrics(m).get(WITHHELD_KEY, 0.0) != 1.0]
    groups = Counter(frozenset(_metrics(m).keys()) for m in scored)
    if len(groups) > 1:
        keys = groups.most_common(1)[0][0]
        scored = [m for m in scored if frozenset(_metrics(m).keys()) == keys]
    return errors + scored


class ComparableEvaluateMixin:
    """Before a Flower strategy aggregates evaluate replies: only those that carry comparable
    test metrics (`comparable_evaluate_replies`)."""

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return super().aggregate_evaluate(  # type: ignore[misc]
            server_round, comparable_evaluate_replies(replies))


class SiteReleasesMixin(ComparableEvaluateMixin):
    """... and before it aggregates train replies: equal weights when sites mix noised and equal
    weights (`equal_weights_if_mixed`)."""

    weighted_by_key: str

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        equal_weights_if_mixed(replies, self.weighted_by_key)
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]


@functools.cache
def _with(mixin: type, cls: type) -> type:
    """``cls`` with ``mixin``, under the same name (checkpoints record layer names)."""
    return type(cls.__name__, (mixin, cls), {"__module__": __name__, "__doc__": cls.__doc__})


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
    common = dict(fraction_train=cfg.fraction_train, fraction_evaluate=cfg.fraction_evaluate,
                  min_train_nodes=floor, min_evaluate_nodes=floor,
                  min_available_nodes=floor, weighted_by_key=weight)
    name = cfg.strategy
    # Client-level DP (Flower's fixed-clipping wrapper) needs FedAvg's own aggregate_train; its
    # sites weight equally ("dp-weight") and never send noised counts.
    mixin = ComparableEvaluateMixin if cfg.dp == "client" else SiteReleasesMixin

    def _coping(cls: type) -> type:
        return _with(mixin, cls)

    if name == "fedavg":
        return _coping(FedAvg)(**common)
    if name == "fedprox":
        return _coping(FedProx)(**common, proximal_mu=cfg.proximal_mu)
    if name in ("fedadam", "fedyogi"):
        cls = FedAdam if name == "fedadam" else FedYogi
        return _coping(cls)(**common, eta=cfg.server_lr, eta_l=cfg.lr, tau=cfg.server_tau)
    if name == "fedmedian":
        return _coping(FedMedian)(**common)
    if name == "fedtrimmedavg":
        if int(cfg.trim_beta * sampled) * 2 >= sampled:
            raise ConfigError(f"trim_beta={cfg.trim_beta}: trims every one of the {sampled} "
                              "sampled sites; lower trim_beta or add sites")
        return _coping(FedTrimmedAvg)(**common, beta=cfg.trim_beta)
    if name == "krum":
        if sampled < 2 * cfg.krum_malicious + 3:
            raise ConfigError(f"strategy=krum with krum_malicious={cfg.krum_malicious} needs at "
                              f"least {2 * cfg.krum_malicious + 3} sampled sites; got {sampled}")
        return _coping(Krum)(**common, num_malicious_nodes=cfg.krum_malicious)
    raise ConfigError(f"strategy={name!r}: unknown; expected one of {', '.join(STRATEGIES)}")
