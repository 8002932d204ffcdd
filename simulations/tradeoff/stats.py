"""Over seeds: the values of one model, scope and metric at one budget, the worst site per seed,
and their mean and sample standard deviation (what both the table and the plot show)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean and sample std of the finite values (std 0 for one value); NaN when there are none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    if all(math.isinf(v) for v in vals):
        return math.inf, 0.0, len(vals)
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def pick(rows: list[dict], epsilon: float, model: str, scope: str, key: str) -> list:
    """``key`` of every row (one per seed) of this budget, model and scope."""
    return [r[key] for r in rows if r["epsilon"] == epsilon and r["model"] == model
            and r["scope"] == scope]


def worst_site(rows: list[dict], epsilon: float, key: str = "auc") -> list[float | None]:
    """Per seed, the lowest federated value over sites (sites without one are ignored)."""
    out = []
    for seed in sorted({r["seed"] for r in rows if r["epsilon"] == epsilon}):
        vals = [r[key] for r in rows if r["epsilon"] == epsilon and r["seed"] == seed
                and r["model"] == "federated" and r["scope"].startswith("site-")
                and r[key] is not None]
        out.append(min(vals) if vals else None)
    return out
