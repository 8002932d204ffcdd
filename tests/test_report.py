"""Report maths: 'did federation help this site?' and the per-site table."""

from common.report.comparison import federation_helped
from common.report.tables import sites_table


def test_helped_compares_auc_and_falls_back_to_accuracy_on_single_class_sites():
    federated = {"0": {"auc": 0.90, "accuracy": 0.80}, "1": {"auc": None, "accuracy": 0.95},
                 "2": {"auc": 0.70, "accuracy": 0.90}}
    local = {"0": {"auc": 0.85, "accuracy": 0.85}, "1": {"auc": None, "accuracy": 0.99},
             "2": {"auc": 0.75, "accuracy": 0.60}}
    verdict = federation_helped(federated, local)
    assert verdict["0"]["helped"] is True and verdict["0"]["metric"] == "auc"
    assert abs(verdict["0"]["delta"] - 0.05) < 1e-12
    assert verdict["1"] == {"helped": False, "delta": 0.95 - 0.99, "metric": "accuracy"}
    assert verdict["2"]["helped"] is False      # AUC decides even though accuracy rose


def test_sites_table_has_a_row_per_site_and_a_global_row():
    sites = {"0": {"accuracy": 0.8, "auc": 0.9}, "1": {"accuracy": 0.7, "auc": float("nan")}}
    summary = {
        "federated": {"sites": sites, "global": {"accuracy": 0.75, "auc": 0.85}},
        "local": {"sites": {"0": {"accuracy": 0.6, "auc": 0.7}, "1": {"accuracy": 0.9}},
                  "global": {}},
        "site_counts": {"0": {"train": 10, "test": 5}, "1": {"train": 20, "test": 6}},
    }
    summary["federation_helped"] = federation_helped(summary["federated"]["sites"],
                                                     summary["local"]["sites"])
    rows = sites_table(summary).splitlines()
    assert rows[0].startswith("| site | train | test | federated acc | federated AUC | local acc")
    assert rows[2] == "| 0 | 10 | 5 | 0.800 | 0.900 | 0.600 | 0.700 | yes (+0.200 AUC) |"
    assert rows[3] == "| 1 | 20 | 6 | 0.700 | n/a | 0.900 | n/a | no (-0.200 acc) |"
    assert rows[4].startswith("| global test |  |  | 0.750 | 0.850 | n/a | n/a |")


def _ledger_row(round_: int, epsilon: float, target: float) -> dict:
    return {"round": round_, "epsilon": epsilon, "target_epsilon": target, "delta": 1e-3,
            "noise_multiplier": 1.1, "sample_rate": 0.05, "dp_steps": 20 * round_}


def test_report_prints_each_sites_own_privacy_budget(tmp_path):
    """Site 1's operator lowered its budget to 2.5 (`--node-config target-epsilon=2.5`) below the
    run's 8: the report and summary.json show 2.5 for site 1, 8 for site 0."""
    import json

    from common import rundir
    from common.config import RunConfig
    from common.report.privacy import sample_privacy
    from common.report.record import RunRecord
    from common.report.writer import write_report

    cfg = RunConfig(dp="sample", target_epsilon=8.0, sites=2, rounds=2)
    scores = {"accuracy": 0.7, "auc": 0.8}
    history = [{"round": r, "global": scores, "failures": {},
                "sites": {} if r == 0 else {s: {"train": {}, "test": scores} for s in "01"}}
               for r in range(3)]
    ledgers = {"0": [_ledger_row(1, 3.0, 8.0), _ledger_row(2, 4.5, 8.0)],
               "1": [_ledger_row(1, 1.5, 2.5), _ledger_row(2, 2.4, 2.5)]}
    privacy = sample_privacy(cfg, ledgers, {})
    write_report(tmp_path, RunRecord(config=cfg, history=history, wall_seconds=1.0,
                                     privacy=privacy))
    summary = json.loads((tmp_path / rundir.SUMMARY).read_text())
    assert summary["privacy"]["target_epsilon"] == 8.0
    assert summary["privacy"]["sites"]["1"]["target_epsilon"] == 2.5
    assert summary["privacy"]["sites"]["0"]["target_epsilon"] == 8.0
    assert [r["target_epsilon"] for r in summary["privacy"]["per_round"]["1"]] == [2.5, 2.5]
    report = (tmp_path / rundir.REPORT).read_text()
    privacy_part = report.split("## Privacy")[1]
    rows = [line for line in privacy_part.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| site | target epsilon | delta |")
    assert rows[1].startswith("| 0 | 8 | ") and rows[2].startswith("| 1 | 2.5 | ")
    assert rows[2].endswith("| 1.500 | 2.400 |")


# --- the membership audit when sites are too small or the model diverged -------------------------

SKIP_REASON = ("1 member(s) and 5 non-member(s); the membership-inference attack needs at least 2 "
               "of each")


def _tiny_audit(*, usable: bool) -> dict:
    """`common.mia.audit` of a 2-site federation: site 1 has a single member; site 0 is audited
    when ``usable``, else it has no non-member left (all its files skipped)."""
    import numpy as np
    import torch

    from common.datasets.base import Split, TaskInfo
    from common.mia import audit

    rng = np.random.default_rng(0)
    task = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=4)
    split = Split(rng.random((40, 1, 4, 4), dtype=np.float32), np.arange(40) % 3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    site0 = (split.subset(np.arange(20)), split.subset(np.arange(20, 34) if usable else []))
    site1 = (split.subset(np.arange(34, 35)), split.subset(np.arange(35, 40)))
    return audit(model, [site0, site1], task, reference_model=model, seed=0, resamples=50)


def _write_tiny_report(tmp_path, audit: dict) -> tuple[dict, str]:
    import json

    from common import rundir
    from common.config import RunConfig
    from common.report.record import RunRecord
    from common.report.writer import write_report

    scores = {"accuracy": 0.7, "auc": 0.8}
    history = [{"round": r, "global": scores, "failures": {},
                "sites": {} if r == 0 else {s: {"train": {}, "test": scores} for s in "01"}}
               for r in range(2)]
    write_report(tmp_path, RunRecord(config=RunConfig(sites=2, rounds=1), history=history,
                                     wall_seconds=1.0, audit=audit))
    return (json.loads((tmp_path / rundir.SUMMARY).read_text()),
            (tmp_path / rundir.REPORT).read_text())


def _audit_part(report: str) -> str:
    return report.split("## Empirical privacy audit")[1].split("\n## ")[0]


def _audit_rows(report: str) -> list[str]:
    return [line for line in _audit_part(report).splitlines() if line.startswith("| ")]


def test_report_says_why_a_too_small_site_was_not_audited(tmp_path):
    summary, report = _write_tiny_report(tmp_path, _tiny_audit(usable=True))
    audit = summary["audit"]["federated"]
    assert audit["sites"]["1"] == {"skipped": SKIP_REASON}
    assert audit["pooled"]["loss-threshold"]["n_members"] == 14      # site 0 only
    rows = _audit_rows(report)
    assert rows[0].startswith("| scope | members / non-members | loss-threshold AUC")
    assert rows[1].startswith("| site 0 | 14 / 14 | ")
    assert rows[2] == f"| site 1: audit skipped: {SKIP_REASON} |" + "  |" * 5   # 6 columns
    assert rows[3].startswith("| all sites | 14 / 14 | ")
    assert "percentile-bootstrap interval (50 seeded resamples" in report
    assert 'The "all sites" row leaves out the sites the audit skipped.' in report


def test_report_is_written_when_no_site_can_be_audited(tmp_path):
    summary, report = _write_tiny_report(tmp_path, _tiny_audit(usable=False))
    audit = summary["audit"]["federated"]
    assert audit["pooled"] == {}
    assert audit["skipped"].startswith("no site could be audited")
    assert (f"Membership inference on the final global model: audit skipped: "
            f"{audit['skipped']}.") in report
    assert _audit_rows(report) == [
        "| scope | members / non-members |",
        "| site 0: audit skipped: 20 member(s) and 0 non-member(s); the membership-inference "
        "attack needs at least 2 of each |  |",
        f"| site 1: audit skipped: {SKIP_REASON} |  |"]
    assert "all sites" not in _audit_part(report)


def test_tradeoff_rows_leave_a_skipped_audit_empty():
    """The epsilon sweep reads MIA AUC per cell: a skipped site or pooled audit is an empty cell."""
    from simulations.tradeoff.rows import summary_rows

    leak = {"loss-threshold": {"auc": 0.6, "tpr_at_1pct_fpr": 0.02}}
    metrics = {"accuracy": 0.7, "auc": 0.8}
    summary = {"federated": {"global": metrics, "sites": {"0": metrics, "1": metrics}},
               "audit": {"federated": {"sites": {"0": leak, "1": {"skipped": SKIP_REASON}},
                                       "pooled": leak}}}
    rows = {r["scope"]: r for r in summary_rows(summary, 1.0, 0)}
    assert rows["site-0"]["mia_auc"] == 0.6 and rows["global"]["mia_auc"] == 0.6
    assert rows["site-1"]["mia_auc"] is None and rows["site-1"]["mia_tpr_at_1pct_fpr"] is None
    summary["audit"]["federated"] = {"sites": {"0": {"skipped": SKIP_REASON}}, "pooled": {},
                                     "skipped": "no site could be audited"}
    rows = {r["scope"]: r for r in summary_rows(summary, 1.0, 0)}
    assert rows["global"]["mia_auc"] is None and rows["site-0"]["mia_auc"] is None
