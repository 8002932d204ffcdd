"""A cell's summary.json as rows: one per model and scope (global test, then each site's own test
split), with its utility metrics, the epsilon spent and the membership-inference result."""

from __future__ import annotations

import math
from typing import Any

MODELS = ("federated", "local", "pooled")
METRICS = ("accuracy", "auc", "balanced_accuracy", "dice", "hd95")   # empty where n/a


def _finite(value: Any) -> float | None:
    """A number as float (inf kept), None for NaN, booleans and anything not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if not math.isnan(value) else None


def _spent(summary: dict, model: str, epsilon: float) -> dict[str, float | None]:
    """Epsilon actually spent, keyed by scope ('global' = the largest over sites)."""
    if math.isinf(epsilon):
        return {"global": math.inf}
    if model == "federated":
        privacy = summary.get("privacy", {})
        sites = {f"site-{s}": _finite(v.get("epsilon"))
                 for s, v in privacy.get("sites", {}).items()}
        return {"global": _finite(privacy.get("max_epsilon")), **sites}
    privacy = summary.get(model, {}).get("privacy", {})
    if "epsilon" in privacy:                                     # pooled: one model
        return {"global": _finite(privacy["epsilon"])}
    sites = {f"site-{s}": _finite(v.get("epsilon")) for s, v in privacy.items()}
    found = [v for v in sites.values() if v is not None]
    return {"global": max(found) if found else None, **sites}


def _audit(summary: dict, model: str, scope: str) -> dict:
    """Loss-threshold membership-inference result of the model at this scope, or {}."""
    audit = summary.get("audit", {}).get(model, {})
    part = audit.get("pooled", {}) if scope == "global" else \
        audit.get("sites", {}).get(scope.removeprefix("site-"), {})
    return part.get("loss-threshold", {}) if isinstance(part, dict) else {}


def summary_rows(summary: dict, epsilon: float, seed: int) -> list[dict[str, Any]]:
    """One CSV row per model and scope (global test, then each site's own test split)."""
    rows = []
    for model in (m for m in MODELS if m in summary):
        entry, spent = summary[model], _spent(summary, model, epsilon)
        scopes = [("global", entry.get("global") or {})]
        scopes += [(f"site-{s}", m or {}) for s, m in
                   sorted(entry.get("sites", {}).items(), key=lambda kv: int(kv[0]))]
        for scope, metrics in scopes:
            audit = _audit(summary, model, scope)
            rows.append({"epsilon": epsilon, "seed": seed, "model": model, "scope": scope,
                         **{k: _finite(metrics.get(k)) for k in METRICS},
                         "epsilon_spent": spent.get(scope, spent["global"]),
                         "mia_auc": _finite(audit.get("auc")),
                         "mia_tpr_at_1pct_fpr": _finite(audit.get("tpr_at_1pct_fpr"))})
    return rows
