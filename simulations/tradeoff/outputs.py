"""The sweep's files: tradeoff.csv (one row per cell, model and scope), tradeoff.md (mean ± std
over seeds per budget, with a paragraph saying what each column holds) and tradeoff.png."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from typing import Any

from common import rundir
from simulations.tradeoff.plot import plot_tradeoff
from simulations.tradeoff.rows import METRICS, MODELS
from simulations.tradeoff.spec import SweepSpec, epsilon_label
from simulations.tradeoff.stats import mean_std, pick, worst_site

CSV_COLUMNS = ("epsilon", "seed", "model", "scope", *METRICS, "epsilon_spent", "mia_auc",
               "mia_tpr_at_1pct_fpr")
CSV_FILE = "tradeoff.csv"
TABLE_FILE = "tradeoff.md"
PLOT_FILE = "tradeoff.png"


def csv_text(rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(key, row[key]) for key in CSV_COLUMNS])
    return buf.getvalue()


def _csv_cell(key: str, value: Any) -> str:
    if key == "epsilon":
        return epsilon_label(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    return str(value)


def _fmt(values: Iterable[float | None]) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    if math.isinf(mean):
        return "inf"
    return f"{mean:.3f}" if n == 1 else f"{mean:.3f} ± {std:.3f}"


def _order(epsilons: Iterable[float]) -> list[float]:
    """No DP first, then from the loosest to the tightest budget."""
    return sorted(set(epsilons), key=lambda e: -e)


def table_metrics(spec: SweepSpec) -> tuple[tuple[str, str], tuple[str, str]]:
    """(utility, second metric) as (key, column label): Dice and HD95, or AUC and accuracy."""
    if spec.base.task == "segmentation":
        return ("dice", "Dice"), ("hd95", "HD95")
    return ("auc", "AUC"), ("accuracy", "acc")


def markdown_table(rows: list[dict], spec: SweepSpec) -> str:
    """Mean ± std over seeds per epsilon, with a paragraph saying what each column holds."""
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    sites = sorted({r["scope"] for r in rows if r["model"] == "federated"
                    and r["scope"].startswith("site-")}, key=lambda s: int(s[5:]))
    mia = any(r["mia_auc"] is not None for r in rows)
    (key, label), (key2, label2) = table_metrics(spec)
    head = ["epsilon budget", "epsilon spent"]
    head += [f"{m} {name}" for m in models for name in (label, label2)]
    head += [f"federated worst-site {label}"] + [f"federated {s} {label}" for s in sites]
    head += ["MIA AUC (federated)", "MIA TPR@1%FPR (federated)"] if mia else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for eps in _order(r["epsilon"] for r in rows):
        cells = ["inf (no DP)" if math.isinf(eps) else epsilon_label(eps),
                 _fmt(pick(rows, eps, "federated", "global", "epsilon_spent"))]
        for m in models:
            cells += [_fmt(pick(rows, eps, m, "global", key)),
                      _fmt(pick(rows, eps, m, "global", key2))]
        cells.append(_fmt(worst_site(rows, eps, key)))
        cells += [_fmt(pick(rows, eps, "federated", s, key)) for s in sites]
        if mia:
            cells += [_fmt(pick(rows, eps, "federated", "global", k))
                      for k in ("mia_auc", "mia_tpr_at_1pct_fpr")]
        lines.append("| " + " | ".join(cells) + " |")
    return _table_intro(spec, models, mia) + "\n".join(lines) + "\n"


def _table_intro(spec: SweepSpec, models: list[str], mia: bool) -> str:
    cfg = spec.base
    seeds = ", ".join(map(str, spec.seeds))
    baselines = " and ".join(m for m in models if m != "federated") or "no"
    if cfg.task == "segmentation":
        metrics = ("`<model> Dice` / `<model> HD95` are the mean Dice and 95th-percentile "
                   "Hausdorff distance (pixels/voxels) of the predicted masks on the global test "
                   "set")
        worst = "Dice"
    else:
        metrics = "`<model> AUC` / `<model> acc` are ROC-AUC and accuracy on the global test set"
        worst = "AUC"
    text = (f"# Privacy-utility trade-off: {cfg.dataset}, {cfg.sites} sites, partition "
            f"`{cfg.partition}`\n\nModel `{cfg.model}` (width {cfg.width}), strategy "
            f"`{cfg.strategy}`, {cfg.rounds} round(s) x {cfg.local_epochs} local epoch(s), "
            f"{cfg.accountant.upper()} accountant, seeds {seeds}.\n\n"
            f"Each cell is the mean ± sample standard deviation over the seeds. `epsilon budget` "
            f"is the whole-run DP-SGD budget per site (inf = trained without DP); `epsilon spent` "
            f"is the largest epsilon any federated site actually spent. {metrics} of the "
            f"federated model and of the {baselines} baseline(s), trained under the same budget "
            f"(local: mean of the sites' own models). `federated worst-site {worst}` is, per "
            f"seed, the lowest {worst} of the federated model over the sites' own test splits; "
            f"`federated site-i {worst}` is that {worst} for each site.")
    if mia:
        text += (" `MIA AUC` and `MIA TPR@1%FPR` are the loss-threshold membership-inference "
                 "attack's ROC-AUC (0.5 = no leak) and true-positive rate at 1% false positives "
                 "against the federated model, over all sites' members and non-members.")
    return text + "\n\n"


def write_outputs(rows: list[dict], spec: SweepSpec) -> None:
    rundir.atomic_write_bytes(spec.directory / CSV_FILE, csv_text(rows).encode())
    rundir.atomic_write_bytes(spec.directory / TABLE_FILE, markdown_table(rows, spec).encode())
    plot_tradeoff(rows, spec, spec.directory / PLOT_FILE)
