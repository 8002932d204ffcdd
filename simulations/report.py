"""Run report: summary.json for scripts, sites.md and report.md for people, a learning-curve PNG.

Classification runs are compared on accuracy and ROC-AUC, segmentation runs (metrics with a
``dice`` key) on Dice and HD95, with the empty-mask convention stated in the report and the
overlay PNGs of `simulations.overlays` linked from it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import rundir  # noqa: E402
from common.segmentation import EMPTY_MASK_CONVENTION  # noqa: E402

METRIC_LABELS = {"accuracy": "acc", "auc": "AUC", "dice": "Dice", "hd95": "HD95"}


def _ok(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _is_segmentation(metrics: Iterable[dict | None]) -> bool:
    return any("dice" in (m or {}) for m in metrics)


def summary_is_segmentation(summary: dict) -> bool:
    """True when the run's federated metrics are segmentation metrics (Dice, HD95, ...)."""
    fed = summary["federated"]
    return _is_segmentation([fed.get("global"), *fed["sites"].values()])


def federation_helped(federated: dict[str, dict], local: dict[str, dict]) -> dict[str, dict]:
    """Per site: is the federated model better than the site's own model on the site's test split?

    Segmentation: compared on Dice. Classification: on ROC-AUC (threshold-free, robust to
    imbalance) where both models have one, else on accuracy (AUC is undefined on a test split
    holding a single class)."""
    out = {}
    for site, fed_m in federated.items():
        loc_m = local.get(site, {})
        if _is_segmentation([fed_m, loc_m]):
            metric = "dice"
        else:
            metric = "auc" if _ok(fed_m.get("auc")) and _ok(loc_m.get("auc")) else "accuracy"
        fed, loc = fed_m.get(metric), loc_m.get(metric)
        if not (_ok(loc) and _ok(fed)):
            out[site] = {"helped": None, "delta": None, "metric": metric}
        else:
            out[site] = {"helped": bool(fed > loc), "delta": fed - loc, "metric": metric}
    return out


def build_summary(cfg: dict, history: list[dict], baselines: dict[str, dict], counts: dict,
                  heterogeneity: float, wall_seconds: float) -> dict:
    last = history[-1]
    federated = {"global": last["global"],
                 "sites": {s: v["test"] for s, v in last["sites"].items()}}
    summary = {
        "config": cfg,
        "rounds": last["round"],
        "wall_seconds": round(wall_seconds, 2),
        "heterogeneity": heterogeneity,
        "site_counts": counts,
        "initial": {"global": history[0]["global"]},
        "federated": federated,
        **{name: result for name, result in baselines.items()},
    }
    if "local" in baselines:
        summary["federation_helped"] = federation_helped(federated["sites"],
                                                         baselines["local"]["sites"])
    return summary


def privacy_summary(cfg, outcome: dict) -> dict:
    """Final cumulative epsilon per site (the whole run's, from the sites' own ledgers), or the
    run's client-level epsilon from Flower's accountant."""
    if cfg.dp == "client":
        last = next((h["central_dp"] for h in reversed(outcome["history"])
                     if "central_dp" in h), {"epsilon": 0.0})
        per_round = {str(h["round"]): h["central_dp"]["epsilon"] for h in outcome["history"]
                     if "central_dp" in h and h["round"] > 0}
        return {**outcome.get("central_plan", {}), "epsilon": last["epsilon"],
                "per_round": per_round, "max_epsilon": last["epsilon"]}
    sites = {site: rows[-1] for site, rows in outcome.get("privacy", {}).items()}
    return {
        "mode": cfg.dp, "accountant": cfg.accountant, "budget_epsilon": cfg.target_epsilon,
        "max_grad_norm": cfg.max_grad_norm,
        "sites": sites,
        "per_round": outcome.get("privacy", {}),
        "exhausted": {str(node): info for node, info in outcome.get("exhausted", {}).items()},
        "max_epsilon": max((row["epsilon"] for row in sites.values()), default=0.0),
    }


def privacy_table(privacy: dict) -> str:
    """Markdown: cumulative epsilon of each site after each round."""
    per_round = privacy["per_round"]
    rounds = sorted({row["round"] for rows in per_round.values() for row in rows})
    lines = ["| site | delta | sigma | q | " + " | ".join(f"eps r{r}" for r in rounds) + " |",
             "|" + "---|" * (4 + len(rounds))]
    for site in sorted(per_round, key=int):
        rows = {row["round"]: row for row in per_round[site]}
        last = per_round[site][-1]
        cells = [site, f"{last['delta']:.2e}", f"{last['noise_multiplier']:.3f}",
                 f"{last['sample_rate']:.4f}"]
        cells += [f"{rows[r]['epsilon']:.3f}" if r in rows else "-" for r in rounds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def audit_text(audit: dict) -> str:
    """Markdown: membership-inference AUC and TPR at 1% FPR of the final global model."""
    attacks = [a for a in ("loss-threshold", "calibrated") if a in audit["pooled"]]
    head = ["scope"] + [f"{a} {k}" for a in attacks for k in ("AUC", "TPR@1%FPR")]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scopes = [(f"site {s}", r) for s, r in audit["sites"].items()] + [("all sites", audit["pooled"])]
    for name, result in scopes:
        cells = [name] + [f"{result[a][k]:.3f}" for a in attacks for k in ("auc", "tpr_at_1pct_fpr")]
        rows.append("| " + " | ".join(cells) + " |")
    return ("Membership inference on the final global model: each site's training samples "
            "(members) against its held-out test split (non-members), balanced. AUC 0.5 means "
            "the attack cannot tell them apart.\n\n" + "\n".join(rows))


def _cell(metrics: dict | None, key: str) -> str:
    value = (metrics or {}).get(key)
    if not _ok(value):
        return "n/a"
    return f"{value:.2f}" if key == "hd95" else f"{value:.3f}"


def table_metrics(summary: dict) -> tuple[str, str]:
    """The two metrics the per-site table shows: (dice, hd95) or (accuracy, auc)."""
    return ("dice", "hd95") if summary_is_segmentation(summary) else ("accuracy", "auc")


def sites_table(summary: dict) -> str:
    """Markdown: per site, federated vs local vs pooled on that site's own test split
    (accuracy and AUC, or Dice and HD95 for segmentation)."""
    models = [m for m in ("federated", "local", "pooled") if m in summary]
    keys = table_metrics(summary)
    head = ["site", "train", "test"] + [f"{m} {METRIC_LABELS[k]}" for m in models for k in keys]
    if "federation_helped" in summary:
        head.append("did federation help this site?")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for site, fed in summary["federated"]["sites"].items():
        counts = summary["site_counts"].get(site, {})
        cells = [site, str(counts.get("train", "")), str(counts.get("test", ""))]
        for m in models:
            site_m = summary[m]["sites"].get(site)
            cells += [_cell(site_m, k) for k in keys]
        if "federation_helped" in summary:
            h = summary["federation_helped"][site]
            cells.append("n/a" if h["helped"] is None else
                         f"{'yes' if h['helped'] else 'no'} ({h['delta']:+.3f} "
                         f"{METRIC_LABELS[h['metric']]})")
        rows.append("| " + " | ".join(cells) + " |")
    glob = ["global test", "", ""]
    for m in models:
        glob += [_cell(summary[m].get("global"), k) for k in keys]
    if "federation_helped" in summary:
        glob.append("")
    rows.append("| " + " | ".join(glob) + " |")
    return "\n".join(rows) + "\n"


def plot_learning_curve(history: list[dict], summary: dict, path: Path) -> None:
    """Per round: accuracy and ROC-AUC, or Dice and HD95 for segmentation; global test, each
    site's test split, and the baselines' global values as horizontal lines."""
    rounds = [h["round"] for h in history]
    seg = _is_segmentation([h["global"] for h in history]
                           + [s["test"] for h in history for s in h["sites"].values()])
    panels = (("dice", "Dice"), ("hd95", "HD95 (pixels/voxels)")) if seg else \
        (("accuracy", "accuracy"), ("auc", "ROC-AUC"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, (key, label) in zip(axes, panels):
        if any(_ok(h["global"].get(key)) for h in history):
            ax.plot(rounds, [h["global"].get(key, math.nan) for h in history], "k-o", lw=2,
                    label="federated, global test")
        sites = sorted({s for h in history for s in h["sites"]}, key=int)
        for s in sites:
            pts = [(h["round"], h["sites"][s]["test"].get(key, math.nan)) for h in history
                   if s in h["sites"] and h["sites"][s]["test"]]
            if pts:
                ax.plot(*zip(*pts), "--", alpha=0.7, label=f"site {s} test")
        for name, style in (("pooled", "g:"), ("local", "r:")):
            value = summary.get(name, {}).get("global", {}).get(key)
            if _ok(value):
                ax.axhline(value, color=style[0], ls=":", label=f"{name} baseline, global test")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per round")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(4, len(labels)),
               frameon=False)
    fig.suptitle(f"{summary['config']['dataset']} / {summary['config']['partition']} / "
                 f"{summary['config']['strategy']} / {summary['config']['model']}")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _segmentation_notes(summary: dict) -> list[str]:
    cfg, task = summary["config"], summary.get("task", {})
    volume = ""
    if task.get("data_dims") == 3 and task.get("spatial_dims") == 2:
        volume = (" The 3D volumes were segmented slice by slice by a 2D network and stacked "
                  "back, so the metrics are volumetric.")
    elif task.get("data_dims") == 3 and cfg.get("roi_size"):
        volume = (f" The 3D volumes were predicted by sliding windows of {cfg['roi_size']} "
                  f"voxels a side (Gaussian-blended).")
    return ["Segmentation: Dice and HD95 (95th-percentile Hausdorff distance, in pixels/voxels) "
            "of the argmax mask of each test image, averaged over the images and the foreground "
            f"classes; 'did federation help' compares Dice.{volume} {EMPTY_MASK_CONVENTION}", ""]


def overlay_section(overlays: dict[str, list[str]]) -> list[str]:
    """Markdown linking each site's overlay PNGs (paths relative to the run directory)."""
    lines = ["## Predictions on test cases", "",
             "Final global model on test cases of each site's own test split: image, ground "
             "truth and prediction (3D: the middle axial slice).", ""]
    for site, paths in overlays.items():
        links = " ".join(f"![site {site} case {i + 1}]({path})" for i, path in enumerate(paths))
        lines += [f"Site {site}: " + ", ".join(f"[{Path(p).name}]({p})" for p in paths), "",
                  links, ""]
    return lines


def exclusions_section(history: list[dict]) -> list[str]:
    """Every site left out of a round (failed, timed out, refused) and why; skipped rounds."""
    rows = []
    for line in history:
        for who, reason in line.get("failures", {}).items():
            rows.append(f"- round {line['round']}: {who}: {reason}")
        if line.get("skipped"):
            rows.append(f"- round {line['round']}: not aggregated: {line['skipped']}")
    if not rows:
        return []
    return ["## Sites excluded from rounds", "",
            "A round aggregates the replies that arrived in time if the quorum held; these did "
            "not take part:", "", *rows, ""]


def write_report(run_dir: Path, summary: dict, history: list[dict]) -> None:
    rundir.write_json(run_dir / rundir.SUMMARY, summary)
    table = sites_table(summary)
    (run_dir / rundir.SITES_TABLE).write_text(table)
    plot_learning_curve(history, summary, run_dir / rundir.CURVE)
    cfg = summary["config"]
    lines = [
        f"# fedclinic run: {cfg['dataset']}, {cfg['sites']} sites, partition `{cfg['partition']}`",
        "",
        f"Model `{cfg['model']}` (norm {cfg['norm']}, width {cfg['width']}), strategy "
        f"`{cfg['strategy']}`, {summary['rounds']} rounds x {cfg['local_epochs']} local epoch(s), "
        f"batch {cfg['batch_size']}, lr {cfg['lr']}, seed {cfg['seed']}. "
        f"Wall time {summary['wall_seconds']:.1f} s. " + (
            f"Label heterogeneity {summary['heterogeneity']:.3f} (0 = IID)."
            if summary.get("heterogeneity") is not None else
            "Deployed run: every site trained on its own data."),
        "",
        "Each site is scored on its own test split; baselines use the same model, initial weights "
        "and number of epochs. `local` = the site's own model; its global-test row is the mean "
        "of the local models.",
        "",
        table,
        *(_segmentation_notes(summary) if summary_is_segmentation(summary) else []),
        f"![learning curve]({rundir.CURVE})",
        "",
    ]
    if (run_dir / "partition.md").exists():
        lines += ["Partition: see [partition.md](partition.md) and ![partition](partition.png).",
                  ""]
    lines += exclusions_section(history)
    if summary.get("skipped_files"):
        skipped = summary["skipped_files"]
        lines += [f"**{len(skipped)} data file(s) were skipped** (training used the valid "
                  f"ones; `--strict` makes a bad file fatal):", "",
                  *[f"- {s['file']}: {s['reason']}" for s in skipped[:20]],
                  *([f"- ... and {len(skipped) - 20} more (see summary.json)"]
                    if len(skipped) > 20 else []), ""]
    if summary.get("stopped_early"):
        lines += [f"**The run stopped early:** {summary['stopped_early']}.", ""]
    if summary.get("overlays"):
        lines += overlay_section(summary["overlays"])
    if "audit" in summary:
        lines += ["## Empirical privacy audit", "", audit_text(summary["audit"]["federated"]), ""]
        if summary["audit"].get("note"):
            lines += [summary["audit"]["note"], ""]
    if summary.get("privacy", {}).get("mode") == "client":
        p = summary["privacy"]
        curve = ", ".join(f"r{r}: {e:.2f}" for r, e in p["per_round"].items())
        lines += ["## Privacy", "",
                  f"Client-level DP (Flower's server-side fixed clipping, clip "
                  f"{p['clipping_norm']:g}, sigma {p['noise_multiplier']:.3f}, Flower's RDP "
                  f"accountant, no sampling amplification): epsilon {p['epsilon']:.2f} at delta "
                  f"{p['delta']:.2e} for the whole run ({curve}). {p['warning']}. The local and "
                  "pooled baselines are not private.", ""]
    elif "privacy" in summary:
        p = summary["privacy"]
        lines += [
            "## Privacy",
            "",
            f"Sample-level DP-SGD at each site (Opacus, {p['accountant'].upper()} accountant, clip "
            f"{p['max_grad_norm']:g}), budget epsilon {p['budget_epsilon']:g} per site for the "
            f"whole run. Each epsilon below is cumulative: the privacy spent by the site from the "
            f"first round up to that round, recomputed by the site's own ledger. Largest final "
            f"epsilon: {p['max_epsilon']:.3f}.",
            "",
            privacy_table(p),
        ]
        for node, info in p["exhausted"].items():
            lines.append(f"- node {node} stopped training at round {info['round']}: "
                         f"{info['reason']}")
        lines.append("")
    (run_dir / rundir.REPORT).write_text("\n".join(lines))
