"""A metrics.jsonl line and a summary.json as flat numeric values for a tracker.

Keys are ``global/<metric>`` (the server's global test), ``site-<i>/train/<metric>`` and
``site-<i>/test/<metric>`` (what each site sent), ``privacy/site-<i>/epsilon`` (and delta,
lifetime spend when the site's policy reports it), ``privacy/central/epsilon`` under
client-level DP, ``validation/<criterion>``, ``seconds``; the summary's final scores are
``final/<model>/global/<metric>`` and ``final/<model>/site-<i>/<metric>`` for the federated
model and each baseline. Only finite numbers are kept (booleans, text, NaN and inf are not).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Per-site privacy fields, from a train reply, under privacy/site-<i>/
PRIVACY_FIELDS = ("epsilon", "delta", "target_epsilon", "lifetime_epsilon_spent",
                  "lifetime_epsilon_budget")
MODELS = ("federated", "local", "pooled")


def number(value: Any) -> float | None:
    """``value`` as a float when it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def flat(prefix: str, values: Mapping[str, Any] | None) -> dict[str, float]:
    """``{prefix/key: number}`` for the numeric entries of ``values``."""
    out = {}
    for key, value in (values or {}).items():
        x = number(value)
        if x is not None:
            out[f"{prefix}/{key}"] = x
    return out


def round_values(line: Mapping[str, Any]) -> dict[str, float]:
    """One metrics.jsonl line (`server.round_log.RoundLog.round_line`) as flat values."""
    out = flat("global", line.get("global"))
    for site, parts in (line.get("sites") or {}).items():
        out.update(flat(f"site-{site}/train", parts.get("train")))
        out.update(flat(f"site-{site}/test", parts.get("test")))
        train = parts.get("train") or {}
        out.update(flat(f"privacy/site-{site}", {k: train[k] for k in PRIVACY_FIELDS
                                                 if k in train}))
    central = line.get("central_dp") or {}
    out.update(flat("privacy/central", {k: central[k] for k in ("epsilon", "delta")
                                        if k in central}))
    validation = line.get("validation") or {}
    if number(validation.get("value")) is not None:
        out[f"validation/{validation.get('criterion') or 'score'}"] = float(validation["value"])
    out.update(flat("timing", line.get("timing")))
    seconds = number(line.get("seconds"))
    if seconds is not None:
        out["seconds"] = seconds
    out["failures"] = float(len(line.get("failures") or {}))
    return out


def summary_values(summary: Mapping[str, Any]) -> dict[str, float]:
    """summary.json's final scores: the federated model and each baseline, global and per
    site, with the epsilon each site spent and the wall time."""
    out: dict[str, float] = {}
    for model in MODELS:
        scores = summary.get(model)
        if not isinstance(scores, Mapping):
            continue
        out.update(flat(f"final/{model}/global", scores.get("global")))
        for site, metrics in (scores.get("sites") or {}).items():
            out.update(flat(f"final/{model}/site-{site}", metrics))
    privacy = summary.get("privacy") or {}
    per_site = privacy.get("sites")         # dp='client': the number of sites, not a map
    for site, spent in (per_site.items() if isinstance(per_site, Mapping) else ()):
        if isinstance(spent, Mapping):
            out.update(flat(f"final/privacy/site-{site}",
                            {k: spent[k] for k in ("epsilon", "delta") if k in spent}))
    for key in ("max_epsilon", "epsilon"):
        if number(privacy.get(key)) is not None:
            out[f"final/privacy/{key}"] = float(privacy[key])
    wall = number(summary.get("wall_seconds"))
    if wall is not None:
        out["final/wall_seconds"] = wall
    return out
