"""report.md's section on model selection and the operating point: which model each method
kept (chosen on validation data), the threshold or class-prior adjustment it predicts with, and
its AUC, balanced accuracy, sensitivity and specificity there on the test splits."""

from __future__ import annotations

from common.report.comparison import finite
from common.report.selection import Selection

COLUMNS = (("auc", "AUC"), ("balanced_accuracy", "balanced acc"),
           ("sensitivity", "sensitivity"), ("specificity", "specificity"),
           ("accuracy", "acc"))


def _cell(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return f"{value:.3f}" if finite(value) else "n/a"


def _mean(sites: dict[str, dict]) -> dict[str, float]:
    """Unweighted mean over the sites of each metric (NaN left out)."""
    keys = {k for m in sites.values() for k in m}
    out = {}
    for key in keys:
        values = [m[key] for m in sites.values() if finite(m.get(key))]
        if values:
            out[key] = sum(values) / len(values)
    return out


def operating_table(points: dict[str, dict]) -> str:
    """Markdown: per model, its metrics at its operating point on the global test split, and
    the mean over the sites' own test splits when scored (`RunRecord.operating_points`)."""
    head = ["model", "test split", "threshold"] + [label for _, label in COLUMNS]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, point in points.items():
        scopes = [("global test", point.get("global") or {})]
        if point.get("sites"):
            scopes.append(("sites' own (mean)", _mean(point["sites"])))
        for scope, metrics in scopes:
            if not metrics:
                continue
            threshold = _cell(metrics, "threshold") if "threshold" in metrics else "-"
            cells = [model, scope, threshold] + [_cell(metrics, k) for k, _ in COLUMNS]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _local_choice(selections: dict[str, Selection]) -> str:
    chosen = [f"site {s}: {'round ' + str(sel.chosen) if sel.selected else 'last round'}"
              for s, sel in selections.items()]
    return "; ".join(chosen)


def selection_lines(federated: Selection | None, local: dict[str, Selection],
                    pooled: Selection | None) -> list[str]:
    """How each model was chosen, in one bullet each."""
    lines = []
    if federated is not None:
        best = " (best_model.pt)" if federated.selected else ""
        lines.append(f"- federated: {federated.describe()}{best}.")
        if federated.stopped:
            lines.append(f"  Stopped early: {federated.stopped}.")
    if local:
        lines.append(f"- local: each site's model after the round with the lowest loss on its "
                     f"own validation split ({_local_choice(local)}).")
    if pooled is not None:
        lines.append(f"- pooled: {pooled.describe()} (the sites' validation splits pooled).")
    return lines


def positive_line(federated: Selection | None) -> list[str]:
    point = federated.operating_point if federated is not None else None
    if point is None or point.positive is None:
        return []
    p = point.positive
    return [f"Binary metrics treat **{p.name}** (label {p.index}) as the positive class "
            f"(from {p.source}); the per-round metrics elsewhere in this report and in "
            f"metrics.jsonl treat label 1 as positive.", ""]


def operating_section(federated: Selection | None, local: dict[str, Selection],
                      pooled: Selection | None, points: dict[str, dict],
                      dp: bool = False) -> list[str]:
    """The whole section ([] when the run has no selection record); ``dp``: the run was under
    sample-level DP (the baselines' exact selection is then said)."""
    if federated is None and not local and pooled is None:
        return []
    lines = ["## Model selection and operating point (validation data only)", "",
             "Each model was chosen, and its operating point set, on validation data (or, "
             "where none left the sites, on their noised training class counts); the test "
             "splits only score the result.", "", *selection_lines(federated, local, pooled),
             ""]
    if dp and (local or pooled is not None):
        lines += ["The baselines select on their exact validation data, under DP too: a "
                  "baseline's data never leave its one holder (the federation's only leave "
                  "noised, or not at all).", ""]
    if federated is not None and federated.operating_point is not None:
        lines += [f"Federated operating point: {federated.operating_point.describe()}.", ""]
    if pooled is not None and pooled.operating_point is not None:
        lines += [f"Pooled operating point: {pooled.operating_point.describe()}.", ""]
    lines += positive_line(federated)
    if any((p.get("global") or p.get("sites")) for p in points.values()):
        lines += [operating_table(points),
                  "AUC is threshold-free; balanced accuracy, sensitivity and specificity are "
                  "at each model's own operating point (multi-class: macro averages after the "
                  "class-prior adjustment). Threshold: on P(positive class). Sites' own: the "
                  "mean over the sites' own test splits, a site without cases of the positive "
                  "(negative) class left out of the sensitivity (specificity).", ""]
    return lines
