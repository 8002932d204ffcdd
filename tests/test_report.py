"""Report maths: 'did federation help this site?' and the per-site table."""

from simulations.report import federation_helped, sites_table


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
