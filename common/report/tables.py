"""Markdown tables of the report: per-site scores, per-site privacy, the membership audit."""

from __future__ import annotations

from common.report.comparison import finite, table_metrics
from common.report.privacy import SamplePrivacy

METRIC_LABELS = {"accuracy": "acc", "auc": "AUC", "dice": "Dice", "hd95": "HD95"}


def _cell(metrics: dict | None, key: str) -> str:
    value = (metrics or {}).get(key)
    if not finite(value):
        return "n/a"
    return f"{value:.2f}" if key == "hd95" else f"{value:.3f}"


def _helped_cell(verdict: dict) -> str:
    if verdict["helped"] is None:
        return "n/a"
    return (f"{'yes' if verdict['helped'] else 'no'} ({verdict['delta']:+.3f} "
            f"{METRIC_LABELS[verdict['metric']]})")


def sites_table(summary: dict) -> str:
    """Markdown: per site, federated vs local vs pooled on that site's own test split
    (accuracy and AUC, or Dice and HD95 for segmentation). Reads summary.json's form
    (`RunRecord.to_json`), so a saved run can be tabled again."""
    models = [m for m in ("federated", "local", "pooled") if m in summary]
    keys = table_metrics(summary)
    helped = summary.get("federation_helped")
    head = ["site", "train", "test"] + [f"{m} {METRIC_LABELS[k]}" for m in models for k in keys]
    if helped is not None:
        head.append("did federation help this site?")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for site in summary["federated"]["sites"]:
        counts = summary["site_counts"].get(site, {})
        cells = [site, str(counts.get("train", "")), str(counts.get("test", ""))]
        cells += [_cell(summary[m]["sites"].get(site), k) for m in models for k in keys]
        if helped is not None:
            cells.append(_helped_cell(helped[site]))
        rows.append("| " + " | ".join(cells) + " |")
    glob = ["global test", "", ""] + [_cell(summary[m].get("global"), k)
                                      for m in models for k in keys]
    if helped is not None:
        glob.append("")
    rows.append("| " + " | ".join(glob) + " |")
    return "\n".join(rows) + "\n"


def privacy_table(privacy: SamplePrivacy) -> str:
    """Markdown: each site's own budget, its DP-SGD settings and its cumulative epsilon after
    each round."""
    rounds = sorted({row.round for site in privacy.sites.values() for row in site.rounds})
    lines = ["| site | target epsilon | delta | sigma | q | "
             + " | ".join(f"eps r{r}" for r in rounds) + " |",
             "|" + "---|" * (5 + len(rounds))]
    for name in sorted(privacy.sites, key=int):
        site = privacy.sites[name]
        by_round, last = {row.round: row for row in site.rounds}, site.final
        cells = [name, f"{last.target_epsilon:g}", f"{last.delta:.2e}",
                 f"{last.noise_multiplier:.3f}", f"{last.sample_rate:.4f}"]
        cells += [f"{by_round[r].epsilon:.3f}" if r in by_round else "-" for r in rounds]
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
