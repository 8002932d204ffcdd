"""Which metrics a run is compared on, and whether federation helped each site.

Classification runs are compared on accuracy and ROC-AUC, segmentation runs (metrics with a
``dice`` key) on Dice and HD95.
"""

from __future__ import annotations

import math
from typing import Any, Iterable


def finite(value: Any) -> bool:
    """A metric value that can be printed and compared (not None, NaN or infinite)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def is_segmentation(metrics: Iterable[dict | None]) -> bool:
    """True when any of these metric dicts are segmentation metrics (have a ``dice`` key)."""
    return any("dice" in (m or {}) for m in metrics)


def summary_is_segmentation(summary: dict) -> bool:
    """True when the run's federated metrics are segmentation metrics (Dice, HD95, ...)."""
    fed = summary["federated"]
    return is_segmentation([fed.get("global"), *fed["sites"].values()])


def table_metrics(summary: dict) -> tuple[str, str]:
    """The two metrics the per-site table shows: (dice, hd95) or (accuracy, auc)."""
    return ("dice", "hd95") if summary_is_segmentation(summary) else ("accuracy", "auc")


def federation_helped(federated: dict[str, dict], local: dict[str, dict]) -> dict[str, dict]:
    """Per site: is the federated model better than the site's own model on the site's test split?

    Segmentation: compared on Dice. Classification: on ROC-AUC (threshold-free, robust to
    imbalance) where both models have one, else on accuracy (AUC is undefined on a test split
    holding a single class)."""
    out = {}
    for site, fed_m in federated.items():
        loc_m = local.get(site, {})
        if is_segmentation([fed_m, loc_m]):
            metric = "dice"
        else:
            metric = "auc" if finite(fed_m.get("auc")) and finite(loc_m.get("auc")) else "accuracy"
        fed, loc = fed_m.get(metric), loc_m.get(metric)
        if not (finite(loc) and finite(fed)):
            out[site] = {"helped": None, "delta": None, "metric": metric}
        else:
            out[site] = {"helped": bool(fed > loc), "delta": fed - loc, "metric": metric}
    return out
