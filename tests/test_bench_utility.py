"""bench/utility.py: cells become mean +- std rows per dataset, epsilon and model."""

import pytest

from bench import utility


def _cell(seed: int, fed_auc: float, pooled_auc: float, personal: float | None = None,
          strategy: str = "fedavg+finetune") -> dict:
    points = {"federated": {"auc": fed_auc, "balanced_accuracy": 0.8, "sensitivity": 0.9,
                            "specificity": 0.7},
              "pooled": {"auc": pooled_auc, "balanced_accuracy": 0.85, "sensitivity": 0.9,
                         "specificity": 0.8}}
    if personal is not None:
        points["personalised (site mean)"] = {"auc": personal, "balanced_accuracy": 0.75}
        points["worse_than_local"] = {"sites": []}
    return {"cell": {"dataset": "pneumonia", "strategy": strategy, "epsilon": "8",
                     "seed": seed, "rounds": 10}, "wall_s": 10.0 * (seed + 1),
            "operating_point": points}


def test_rows_average_over_seeds_and_name_each_model() -> None:
    rows = utility.rows([_cell(0, 0.90, 0.95, 0.93), _cell(1, 0.80, 0.93, 0.91),
                         _cell(0, 0.88, 0.94, strategy="fedavg"), {"cell": {}, "error": "boom"}])
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"fedavg+finetune", "fedavg", "pooled",
                             "fedavg+finetune personalised (site mean)"}
    # the baselines are the fedavg cell's only: one seed, not one per strategy
    assert by_model["pooled"]["seeds"] == 1 and by_model["pooled"]["auc"]["mean"] == 0.94
    fed = by_model["fedavg+finetune"]
    assert fed["seeds"] == 2 and fed["auc"]["mean"] == pytest.approx(0.85)
    assert fed["auc"]["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert fed["wall_s"]["mean"] == pytest.approx(15.0)
    mine = by_model["fedavg+finetune personalised (site mean)"]
    assert mine["sensitivity"]["n"] == 0 and mine["balanced_accuracy"]["mean"] == 0.75
    table = utility.markdown(rows)
    assert "| pneumonia | 8 | 10 | fedavg+finetune | 2 | 0.850 +- 0.071 |" in table
    merged = utility.merge_cells([_cell(0, 0.5, 0.5), {"cell": {}, "error": "x"}],
                                 [_cell(0, 0.90, 0.95), _cell(1, 0.80, 0.93)])
    assert [m["operating_point"]["federated"]["auc"] for m in merged] == [0.90, 0.80]


def test_a_cell_runs_the_public_cli_with_dp_only_for_a_finite_epsilon(tmp_path) -> None:
    plain = utility.Cell("pneumonia", "fedprox", "inf", 1, 3).argv(tmp_path / "c")
    assert plain[2:4] == ["fedclinic.cli", "simulate"] and "--dp" not in plain
    assert plain[plain.index("--strategy") + 1] == "fedprox"
    assert plain[plain.index("--baselines") + 1] == ""          # fedavg's cell trains them
    fedavg = utility.Cell("pneumonia", "fedavg", "inf", 1, 3).argv(tmp_path / "c")
    assert fedavg[fedavg.index("--baselines") + 1] == "local,pooled"
    private = utility.Cell("adrenal", "fedavg+local-norm", "2", 0, 3).argv(tmp_path / "c")
    assert private[private.index("--target-epsilon") + 1] == "2"
    assert private[private.index("--personalize") + 1] == "local-norm"
    assert private[private.index("--partition") + 1] == "iid+shift"
    assert private[private.index("--baselines") + 1] == "local"    # "did federation help?"


def test_a_finished_cell_is_read_back_with_the_personalised_operating_point(tmp_path,
                                                                            monkeypatch) -> None:
    import json

    monkeypatch.setattr(utility, "CELLS", tmp_path)
    cell = utility.Cell("pneumonia", "fedavg+finetune", "inf", 0, 2)
    assert cell.folder == "pneumonia-fedavg_finetune-epsinf-r2-s0"    # as create_run_dir names it
    (tmp_path / cell.folder).mkdir()
    summary = {"operating_point": {
        "federated": {"global": {"auc": 0.9, "balanced_accuracy": 0.8}},
        "personalised": {"global": {}, "sites": {"0": {"balanced_accuracy": 0.6},
                                                 "1": {"balanced_accuracy": 0.8}}}},
        "personalised": {"sites": {"0": {"auc": 0.7}, "1": {"auc": 0.9}}},
        "federation_helped": {}, "site_counts": {}}
    (tmp_path / cell.folder / "summary.json").write_text(json.dumps(summary))
    (tmp_path / cell.folder / "bench-wall.txt").write_text("12.5\n")
    got = utility.run_cell(cell)                       # reused: nothing runs
    assert got["wall_s"] == 12.5 and "personalised" not in got["operating_point"]
    mine = got["operating_point"]["personalised (site mean)"]
    assert mine["auc"] == pytest.approx(0.8) and mine["balanced_accuracy"] == pytest.approx(0.7)


def test_an_unfinished_cell_is_run_again_in_its_own_folder(tmp_path, monkeypatch) -> None:
    """A folder without summary.json (a crashed run) is removed first, so the new run is not
    written beside it as "<name>-2" (create_run_dir never reuses a folder)."""
    import json
    import subprocess
    from pathlib import Path

    monkeypatch.setattr(utility, "CELLS", tmp_path)
    cell = utility.Cell("pneumonia", "fedavg", "8", 1, 2)
    (tmp_path / cell.folder / "checkpoints").mkdir(parents=True)

    def fake_run(argv, **_):
        out = Path(argv[argv.index("--output-dir") + 1]) / argv[argv.index("--run-name") + 1]
        assert not out.exists()
        out.mkdir()
        (out / "summary.json").write_text(json.dumps(
            {"operating_point": {"federated": {"global": {"auc": 0.91}}}}))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(utility.subprocess, "run", fake_run)
    got = utility.run_cell(cell)
    assert got["operating_point"]["federated"]["auc"] == 0.91
    assert (tmp_path / cell.folder / "bench-wall.txt").exists()


def test_cells_already_in_utility_json_are_kept_unless_rerun(tmp_path, monkeypatch) -> None:
    """A fresh checkout has no cell folders: a grid grown a few cells at a time must not run
    again the cells whose results utility.json already holds (unless --rerun)."""
    import json

    monkeypatch.setattr(utility, "RESULTS", tmp_path)
    monkeypatch.setattr(utility, "CELLS", tmp_path / "utility")
    earlier = _cell(0, 0.90, 0.95, strategy="fedavg")
    (tmp_path / "utility.json").write_text(json.dumps({"cells": [earlier]}))
    ran = []

    def fake_cell(cell):
        ran.append(cell.name)
        return _cell(cell.seed, 0.70, 0.75, strategy="fedavg") | {"cell": vars(cell)}

    monkeypatch.setattr(utility, "run_cell", fake_cell)
    argv = ["--datasets", "pneumonia", "--strategies", "fedavg", "--epsilons", "8",
            "--seeds", "2"]
    assert utility.main(argv) == 0
    assert ran == ["pneumonia-fedavg-eps8-r10-s1"]              # seed 0 was kept
    cells = json.loads((tmp_path / "utility.json").read_text())["cells"]
    assert sorted(c["operating_point"]["federated"]["auc"] for c in cells) == [0.70, 0.90]
    assert utility.main(argv + ["--rerun"]) == 0
    assert ran[1:] == ["pneumonia-fedavg-eps8-r10-s0", "pneumonia-fedavg-eps8-r10-s1"]
