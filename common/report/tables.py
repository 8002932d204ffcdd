"""Markdown tables of the report: per-site scores, per-site privacy and what each site's
guarantee came to, the values that left the sites, the membership audit."""

from __future__ import annotations

from collections.abc import Sequence

from common.report.comparison import finite, table_metrics
from common.report.coverage import CoveredRelease
from common.report.policy import policy_hex
from common.report.privacy import SamplePrivacy, SiteGuarantee

METRIC_LABELS = {"accuracy": "acc", "auc": "AUC", "dice": "Dice", "hd95": "HD95"}


def _cell(metrics: dict | None, key: str) -> str:
    value = (metrics or {}).get(key)
    if not finite(value):
        return "n/a"
    return f"{value:.2f}" if key == "hd95" else f"{value:.3f}"


def _helped_cell(verdict: dict) -> str:
    if verdict["helped"] is None:
        return "n/a"
    via = f", {verdict['option']}" if "option" in verdict else ""
    return (f"{'yes' if verdict['helped'] else 'no'} ({verdict['delta']:+.3f} "
            f"{METRIC_LABELS[verdict['metric']]}{via})")


def sites_table(summary: dict) -> str:
    """Markdown: per site, federated (and personalised) vs local vs pooled on that site's own
    test split (accuracy and AUC, or Dice and HD95 for segmentation); with personalisation,
    "did federation help" names the better federated option. Reads summary.json's form
    (`RunRecord.to_json`), so a saved run can be tabled again."""
    models = [m for m in ("federated", "personalised", "local", "pooled") if m in summary]
    keys = table_metrics(summary)
    helped = summary.get("federation_helped")
    # a deployed run: sites named, no sizes (the server does not know them), no global row
    # without a global test set
    names = (summary.get("deployment") or {}).get("sites", {})
    sized = bool(summary.get("site_counts"))
    scored = any(summary[m].get("global") for m in models)
    head = ["site", *(["train", "test"] if sized else [])] + [
        f"{m} {METRIC_LABELS[k]}" for m in models for k in keys]
    if helped is not None:
        head.append("did federation help this site?")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for site in summary["federated"]["sites"]:
        counts = summary["site_counts"].get(site, {})
        cells = [f"{site} ({names[site]})" if site in names else site]
        if sized:
            cells += [str(counts.get("train", "")), str(counts.get("test", ""))]
        cells += [_cell(summary[m]["sites"].get(site), k) for m in models for k in keys]
        if helped is not None:
            cells.append(_helped_cell(helped[site]))
        rows.append("| " + " | ".join(cells) + " |")
    if scored or sized:
        glob = ["global test", *(["", ""] if sized else [])] + [
            _cell(summary[m].get("global"), k) for m in models for k in keys]
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


def guarantee_table(privacy: SamplePrivacy) -> str:
    """Markdown: per site, the run's epsilon at its delta and accountant, the lifetime budget
    (every run on the site's dataset) spent and left, its policy id, its count and noise."""
    head = ["site", "epsilon (run)", "delta", "accountant", "lifetime spent", "lifetime budget",
            "lifetime left", "policy", "sample count", "noise"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    guarantees = privacy.guarantees()
    for name in sorted(guarantees, key=int):
        lines.append("| " + " | ".join([name, *_guarantee_cells(guarantees[name])]) + " |")
    return "\n".join(lines) + "\n"


def _guarantee_cells(g: SiteGuarantee) -> list[str]:
    count = {None: "-", True: "noised (charged)", False: "not noised"}[g.count_noised]
    noise = {None: "not reported", True: "OS CSPRNG", False: "seeded (reproducible)"}[
        g.secure_randomness]
    return [f"{g.epsilon:.3f}", f"{g.delta:.2e}", g.accountant.upper(), _number(g.lifetime_spent),
            _number(g.lifetime_budget), _number(g.lifetime_left), policy_hex(g.policy_id), count,
            noise]


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if finite(value) else "no limit"


def coverage_table(released: Sequence[CoveredRelease]) -> str:
    """Markdown: each field the sites sent, whether it depends on their data, how it was
    protected, and whether the guarantee covers it."""
    lines = ["| message | field | depends on private data | protection | covered | sites |",
             "|---|---|---|---|---|---|"]
    for r in released:
        field = r.field if " " in r.field else f"`{r.field}`"
        lines.append(f"| {r.message} | {field} | {r.private} | {r.protection} | "
                     f"{'yes' if r.covered else '**no**'} | {r.sites} |")
    return "\n".join(lines) + "\n"


AUDIT_VALUES = (("auc", "AUC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"))
AUDIT_SKIPPED = "skipped"    # common.mia.SKIPPED: a site (or the audit) the attack could not score


def _estimate(result: dict, key: str) -> str:
    """``0.712 [0.650, 0.770]``: the value and its bootstrap interval when the audit has one."""
    low, high = result.get(f"{key}_ci_low"), result.get(f"{key}_ci_high")
    if low is None or high is None:
        return f"{result[key]:.3f}"
    return f"{result[key]:.3f} [{low:.3f}, {high:.3f}]"


def _audited(audit: dict) -> list[dict]:
    """The results with attack summaries: the pooled one (when not empty), then each audited
    site's; a skipped site (``{"skipped": reason}``) has none."""
    results = [audit.get("pooled") or {}] + list(audit["sites"].values())
    return [r for r in results if r and AUDIT_SKIPPED not in r]


def audit_rows(audit: dict, pooled_label: str | None = "all sites") -> str:
    """Markdown: per scope (each site, then the pooled row unless ``pooled_label`` is None or the
    pooled attack did not run), members/non-members and each attack's AUC and TPR at 1% FPR. A
    site the audit skipped is one row ``site 3: audit skipped: <reason>``."""
    results = _audited(audit)
    attacks = [a for a in ("loss-threshold", "calibrated") if results and a in results[0]]
    head = ["scope", "members / non-members"] + [f"{a} {label}" for a in attacks
                                                 for _, label in AUDIT_VALUES]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scopes = [(f"site {s}", r) for s, r in audit["sites"].items()]
    if pooled_label is not None and audit.get("pooled"):
        scopes.append((pooled_label, audit["pooled"]))
    for name, result in scopes:
        if AUDIT_SKIPPED in result:
            cells = [f"{name}: audit skipped: {result[AUDIT_SKIPPED]}"] + [""] * (len(head) - 1)
        else:
            first = result[attacks[0]]
            cells = [name, f"{first['n_members']} / {first['n_nonmembers']}"]
            cells += [_estimate(result[a], key) for a in attacks for key, _ in AUDIT_VALUES]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def audit_text(audit: dict, pooled_label: str | None = "all sites",
               model: str = "the final global model") -> str:
    """Markdown: membership-inference AUC and TPR at 1% FPR of ``model``, with their bootstrap
    confidence intervals (`audit_rows`); why, when no site could be audited."""
    results = _audited(audit)
    if not results:
        reason = audit.get(AUDIT_SKIPPED) or "no site could be audited"
        return (f"Membership inference on {model}: audit skipped: {reason}.\n\n"
                + audit_rows(audit, pooled_label))
    first = next(iter(results[0].values()))
    interval = ""
    if "bootstrap_resamples" in first:
        interval = (f" In brackets: the {first['ci_level']:.0%} percentile-bootstrap interval "
                    f"({first['bootstrap_resamples']} seeded resamples of the members and of the "
                    f"non-members); an interval that holds 0.5 (AUC) or 0.01 (TPR at 1% FPR) "
                    f"shows no leakage this audit can tell from chance.")
    if pooled_label is not None and any(AUDIT_SKIPPED in r for r in audit["sites"].values()):
        interval += f" The \"{pooled_label}\" row leaves out the sites the audit skipped."
    return (f"Membership inference on {model}: each site's training samples "
            "(members) against its held-out test split (non-members), balanced. AUC 0.5 means "
            "the attack cannot tell them apart." + interval + "\n\n"
            + audit_rows(audit, pooled_label))
