"""tradeoff.png: utility against epsilon (log axis, no DP at the right), error bars = std over
seeds, one line per model plus the federated model's worst site."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from simulations.tradeoff.rows import MODELS  # noqa: E402
from simulations.tradeoff.spec import SweepSpec, epsilon_label  # noqa: E402
from simulations.tradeoff.stats import mean_std, pick, worst_site  # noqa: E402

STYLES = {"federated": "k-o", "local": "r-s", "pooled": "g-^"}


def _utility_metric(rows: list[dict]) -> str:
    """Plot Dice for segmentation; else AUC when every global value has one, else accuracy (AUC
    is undefined on one class)."""
    glob = [r for r in rows if r["scope"] == "global"]
    if glob and any(r.get("dice") is not None for r in glob):
        return "dice"
    return "auc" if glob and all(r["auc"] is not None for r in glob) else "accuracy"


def _x_positions(epsilons: list[float]) -> dict[float, float]:
    finite = [e for e in epsilons if not math.isinf(e)]
    inf_x = max(finite) * 4 if finite else 1.0
    return {e: inf_x if math.isinf(e) else e for e in epsilons}


def _error_bars(ax, xs: list[float], stats: list[tuple[float, float, int]], **style) -> None:
    ax.errorbar(xs, [s[0] for s in stats], yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
                capsize=3, **style)


def plot_tradeoff(rows: list[dict], spec: SweepSpec, path: Path) -> None:
    """Utility against epsilon (log axis, no DP at the right), error bars = std over seeds."""
    metric = _utility_metric(rows)
    label = {"auc": "ROC-AUC", "dice": "Dice"}.get(metric, "accuracy")
    epsilons = sorted({r["epsilon"] for r in rows})
    xpos = _x_positions(epsilons)
    xs = [xpos[e] for e in epsilons]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for model in (m for m in MODELS if any(r["model"] == m for r in rows)):
        _error_bars(ax, xs, [mean_std(pick(rows, e, model, "global", metric)) for e in epsilons],
                    fmt=STYLES[model], label=f"{model}, global test")
    _error_bars(ax, xs, [mean_std(worst_site(rows, e, metric)) for e in epsilons],
                fmt="k--", alpha=0.6, label="federated, worst site")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(xs)
    ax.set_xticklabels(["inf (no DP)" if math.isinf(e) else epsilon_label(e) for e in epsilons])
    ax.set_xlabel("privacy budget epsilon per site (log scale)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs privacy: {spec.base.dataset} / {spec.base.partition} / "
                 f"{spec.base.strategy} / {spec.base.model}, {len(spec.seeds)} seed(s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
