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
