"""bench/dp_federated.py: each candidate is one DP federation; its chosen model is scored on
the val split at the run's own threshold."""

import json
from pathlib import Path

import numpy as np
import pytest

from bench import dp_federated as dpf


def test_a_candidate_is_a_dp_fedavg_run_with_its_flags_and_no_baselines(tmp_path):
    got = dpf.argv("b128-lr02", seed=2, rounds=7, epsilon="8", out=tmp_path / "x")
    assert got[got.index("--dp") + 1] == "sample"
    assert got[got.index("--target-epsilon") + 1] == "8"
    assert got[got.index("--baselines") + 1] == ""
    assert got[got.index("--seed") + 1] == "2" and got[got.index("--rounds") + 1] == "7"
    assert got[-4:] == ["--batch-size", "128", "--lr", "0.2"]
    assert dpf.argv("default", 0, 10, "8", tmp_path / "x")[-2:] == ["--target-epsilon", "8"]
    adrenal = dpf.argv("w32", 0, 10, "8", tmp_path / "x", dataset="adrenal")
    assert adrenal[adrenal.index("--partition") + 1] == "iid+shift"
    assert adrenal[adrenal.index("--sites") + 1] == "4" and "adrenalmnist3d" in adrenal[adrenal.index("--data-path") + 1]


def test_a_public_checkpoint_is_pretrained_once_and_passed_as_init_from(tmp_path, monkeypatch):
    runs = []

    def fake_run(argv, out):
        runs.append((argv, out))
        return 0, ""

    monkeypatch.setattr(dpf, "RUNS", tmp_path)
    monkeypatch.setattr(dpf, "run_simulation", fake_run)
    got = dpf.argv("init-chest", 0, 10, "8", tmp_path / "x", dataset="adrenal")
    pre_argv, pre_out = runs[0]
    assert len(runs) == 1 and pre_out == tmp_path / "pretrain-chest2d-w16"
    assert got[-2:] == ["--init-from", str(pre_out / "final_model.pt")]
    assert "pneumoniamnist" in pre_argv[pre_argv.index("--data-path") + 1]
    assert pre_argv[pre_argv.index("--sites") + 1] == "1" and "--dp" not in pre_argv
    assert pre_argv[pre_argv.index("--width") + 1] == "16"    # fits a --dp sample run


def _run_dir(tmp_path: Path, threshold: float, best: bool) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    (out / "final_model.pt").write_bytes(b"")
    if best:
        (out / "best_model.pt").write_bytes(b"")
    point = {"positive_threshold": threshold}
    (out / "summary.json").write_text(json.dumps(
        {"selection": {"chosen_round": 4, "operating_point": point}}))
    return out


@pytest.mark.parametrize("best", [True, False])
def test_the_chosen_model_is_scored_on_val_at_the_runs_threshold(tmp_path, monkeypatch, best):
    labels = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.5, 0.65, 0.6, 0.8, 0.9])
    asked = []

    def fake_val_scores(run, model_file):
        asked.append(model_file)
        return np.stack([1 - p1, p1], axis=1), labels, None

    monkeypatch.setattr(dpf, "val_scores", fake_val_scores)
    got = dpf.score(_run_dir(tmp_path, threshold=0.7, best=best))
    assert asked == ["best_model.pt" if best else "final_model.pt"]
    # at 0.7: positives 0.8, 0.9 called (2/3), every negative below it (3/3)
    assert got["val_bal_acc"] == pytest.approx(0.5 * (2 / 3 + 1.0))
    assert got["val_bal_acc_youden"] >= got["val_bal_acc"]
    assert got["val_auc"] == pytest.approx(8 / 9)     # 8 of the 9 pairs ranked right
    assert got["threshold"] == 0.7 and got["chosen_round"] == 4
    assert got["val_loss"] == pytest.approx(-np.mean(np.log(np.where(labels == 1, p1, 1 - p1))))


def test_the_table_has_one_row_per_candidate_with_the_mean_over_its_seeds():
    def row(name, seed, auc, wall):
        return {"candidate": name, "flags": ["--lr", "0.2"] if name == "lr02" else [],
                "seed": seed, "val_auc": auc, "val_loss": 0.25, "val_bal_acc": 0.9,
                "val_bal_acc_youden": 0.91, "wall_s": wall}
    runs = {"a": row("default", 0, 0.96, 100.0), "b": row("default", 1, 0.98, 300.0),
            "c": row("lr02", 0, 0.95, None)}
    lines = dpf.table({"runs": runs}).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| pneumonia | `default` | (defaults) | 2 | 0.970 +- 0.014 |")
    assert lines[2].endswith("| 200 |")
    assert lines[3] == ("| pneumonia | `lr02` | --lr 0.2 | 1 | 0.950 | 0.250 | 0.900 | 0.910 "
                        "|  |")
