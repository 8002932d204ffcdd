"""The learning curve: per round, the federated model on the global test and each site's test
split, with the baselines' global values as horizontal lines."""

from __future__ import annotations

import math
from pathlib import Path

from common.report.comparison import finite, is_segmentation
from common.report.record import RunRecord


def _panels(history: list[dict]) -> tuple[tuple[str, str], tuple[str, str]]:
    seg = is_segmentation([h["global"] for h in history]
                          + [s["test"] for h in history for s in h["sites"].values()])
    if seg:
        return ("dice", "Dice"), ("hd95", "HD95 (pixels/voxels)")
    return ("accuracy", "accuracy"), ("auc", "ROC-AUC")


def _draw_panel(ax, record: RunRecord, key: str, label: str) -> None:
    history = record.history
    rounds = [h["round"] for h in history]
    if any(finite(h["global"].get(key)) for h in history):
        ax.plot(rounds, [h["global"].get(key, math.nan) for h in history], "k-o", lw=2,
                label="federated, global test")
    for s in sorted({s for h in history for s in h["sites"]}, key=int):
        pts = [(h["round"], h["sites"][s]["test"].get(key, math.nan)) for h in history
               if s in h["sites"] and h["sites"][s]["test"]]
        if pts:
            ax.plot(*zip(*pts), "--", alpha=0.7, label=f"site {s} test")
    for name, color in (("pooled", "g"), ("local", "r")):
        baseline = record.baselines.get(name)
        value = None if baseline is None else baseline.overall.get(key)
        if finite(value):
            ax.axhline(value, color=color, ls=":", label=f"{name} baseline, global test")
    ax.set_xlabel("round")
    ax.set_ylabel(label)
    ax.set_title(f"{label} per round")
    ax.grid(alpha=0.3)


def plot_learning_curve(record: RunRecord, path: Path) -> None:
    """Accuracy and ROC-AUC per round, or Dice and HD95 for segmentation (two panels)."""
    # Object-oriented Agg canvas: no pyplot global state, no backend switching for the process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, (key, label) in zip(axes, _panels(record.history)):
        _draw_panel(ax, record, key, label)
    handles, labels = axes[0].get_legend_handles_labels()
    if labels:        # nothing scored (e.g. every site refused the run): no legend
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(4, len(labels)),
                   frameon=False)
    cfg = record.config
    data = ("deployed" if record.deployment is not None      # not the config's default data
            else f"{cfg.dataset} / {cfg.partition}")
    fig.suptitle(f"{data} / {cfg.strategy} / {cfg.model}")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
