"""`fedclinic tradeoff`: epsilon x seed sweep, its csv/md/png, resuming, refusing mixed sweeps."""

import argparse
import csv
import json
import math
import statistics

import pytest
import torch

from common import rundir
from common.config import ConfigError, RunConfig
from fedclinic.cli import tradeoff as tradeoff_cli
from simulations.simulate import SimulationOutcome
from simulations.tradeoff import cells as tradeoff_cells
from simulations.tradeoff.spec import SweepSpec, parse_epsilons, parse_seeds
from simulations.tradeoff.sweep import run_tradeoff

TINY = dict(model="cnn", width=8, num_samples=200, sites=2, rounds=1, local_epochs=1,
            batch_size=16)


def _quality(cfg: RunConfig) -> float:
    """The fake's utility: rises with epsilon, best without DP, a little noise per seed."""
    base = 0.9 if cfg.dp == "off" else 0.5 + 0.4 * cfg.target_epsilon / (cfg.target_epsilon + 4)
    return base + 0.01 * cfg.seed


def _metrics(auc: float) -> dict:
    return {"loss": 1.0 - auc, "accuracy": auc - 0.1, "balanced_accuracy": auc - 0.15, "auc": auc}


def fake_summary(cfg: RunConfig, audit: bool) -> dict:
    q = _quality(cfg)
    summary = {
        "config": cfg.to_dict(), "rounds": cfg.rounds,
        "federated": {"global": _metrics(q), "sites": {"0": _metrics(q - 0.05),
                                                       "1": _metrics(q + 0.03)}},
        "local": {"global": _metrics(q - 0.1), "sites": {"0": _metrics(q - 0.12),
                                                         "1": _metrics(q - 0.08)}},
        "pooled": {"global": _metrics(q + 0.02), "sites": {"0": _metrics(q),
                                                           "1": _metrics(q + 0.04)}},
    }
    if cfg.dp == "sample":
        eps = cfg.target_epsilon
        summary["privacy"] = {"max_epsilon": 0.99 * eps,
                              "sites": {"0": {"epsilon": 0.98 * eps}, "1": {"epsilon": 0.99 * eps}}}
        summary["local"]["privacy"] = {"0": {"epsilon": 0.97 * eps}, "1": {"epsilon": 0.96 * eps}}
        summary["pooled"]["privacy"] = {"epsilon": 0.95 * eps}
    if audit:
        leak = {"loss-threshold": {"auc": 0.5 + (1 - q) / 2, "tpr_at_1pct_fpr": 0.02},
                "calibrated": {"auc": 0.6, "tpr_at_1pct_fpr": 0.05}}
        summary["audit"] = {"federated": {"sites": {"0": leak, "1": leak}, "pooled": leak}}
    return summary


class FakeSimulate:
    """Writes a run directory and a realistic summary.json, as simulate() does; counts calls."""

    def __init__(self, audit: bool = False):
        self.audit, self.calls = audit, []

    def __call__(self, cfg, echo=print, verbose=False, run_name=None, **_):
        self.calls.append((cfg.dp, cfg.target_epsilon, cfg.seed))
        run_dir = rundir.create_run_dir(cfg, run_name)
        summary = fake_summary(cfg, self.audit)
        rundir.write_json(run_dir / rundir.SUMMARY, summary)
        return SimulationOutcome(run_dir, summary, [])


def _refuse(*args, **kwargs):
    raise AssertionError("simulate() must not be called for a finished cell")


def _spec(tmp_path, eps="inf,4", seeds="2", name="sweep", **changes) -> SweepSpec:
    base = RunConfig(**{**TINY, "output_dir": str(tmp_path), **changes})
    return SweepSpec(base, parse_epsilons(eps), parse_seeds(seeds, base.seed), name)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_epsilon_and_seed_lists_are_parsed_or_refused():
    assert parse_epsilons("inf,16,8") == (math.inf, 16.0, 8.0)
    assert parse_epsilons(" INF , 0.5") == (math.inf, 0.5)
    for bad, shown in (("0", "'0'"), ("-1", "'-1'"), ("abc", "'abc'"), ("inf,,4", "''"),
                       ("nan", "'nan'"), ("4,2e7", "'2e7'")):
        with pytest.raises(ConfigError, match=f"epsilons=.*{shown} is not a privacy budget.*inf"):
            parse_epsilons(bad)
    with pytest.raises(ConfigError, match="'4.0' is listed twice"):
        parse_epsilons("4,4.0")
    assert parse_seeds("3") == (0, 1, 2)
    assert parse_seeds("3", first=5) == (5, 6, 7)
    assert parse_seeds("0,5,9") == (0, 5, 9)
    for bad in ("0", "a", "-1", "1,1", ""):
        with pytest.raises(ConfigError, match="seeds="):
            parse_seeds(bad)


def test_sweep_writes_rows_table_and_plot_then_resumes_without_simulating(tmp_path, monkeypatch):
    fake, lines = FakeSimulate(), []
    monkeypatch.setattr(tradeoff_cells, "simulate", fake)
    spec = _spec(tmp_path)
    out = run_tradeoff(spec, echo=lines.append)
    assert (out.ran, out.skipped) == (4, 0)
    assert fake.calls == [("off", 8.0, 0), ("off", 8.0, 1), ("sample", 4.0, 0), ("sample", 4.0, 1)]
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "eps4-seed0", "eps4-seed1", "epsinf-seed0", "epsinf-seed1"]
    rows = _read_csv(sweep / "tradeoff.csv")
    assert len(rows) == 2 * 2 * 3 * 3          # epsilons x seeds x models x (global + 2 sites)
    assert {(r["model"], r["scope"]) for r in rows} == {
        (m, s) for m in ("federated", "local", "pooled") for s in ("global", "site-0", "site-1")}
    by_key = {(r["epsilon"], r["seed"], r["model"], r["scope"]): r for r in rows}
    fed = by_key[("4", "1", "federated", "global")]
    assert float(fed["auc"]) == pytest.approx(0.5 + 0.4 * 4 / 8 + 0.01)
    assert float(fed["accuracy"]) == pytest.approx(float(fed["auc"]) - 0.1)
    assert float(fed["epsilon_spent"]) == pytest.approx(0.99 * 4)
    assert float(by_key[("4", "0", "federated", "site-0")]["epsilon_spent"]) == pytest.approx(3.92)
    assert float(by_key[("4", "0", "local", "global")]["epsilon_spent"]) == pytest.approx(3.88)
    assert float(by_key[("4", "0", "local", "site-1")]["epsilon_spent"]) == pytest.approx(3.84)
    assert float(by_key[("4", "0", "pooled", "site-0")]["epsilon_spent"]) == pytest.approx(3.8)
    assert all(r["epsilon_spent"] == "inf" for r in rows if r["epsilon"] == "inf")
    assert all(r["mia_auc"] == "" and r["mia_tpr_at_1pct_fpr"] == "" for r in rows)

    table = (sweep / "tradeoff.md").read_text()
    assert "`epsilon spent` is" in table.split("| epsilon budget")[0]   # explained above
    body = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(body) == 1 + 2 and body[1].startswith("| inf (no DP) |") and "| 4 |" in body[2]
    q = [0.5 + 0.4 * 4 / 8 + 0.01 * s for s in (0, 1)]
    cells = [c.strip() for c in body[2].strip("|").split("|")]
    head = [c.strip() for c in body[0].strip("|").split("|")]
    col = dict(zip(head, cells))
    assert col["federated AUC"] == f"{statistics.fmean(q):.3f} ± {statistics.stdev(q):.3f}"
    assert col["pooled AUC"] == f"{statistics.fmean(q) + 0.02:.3f} ± {statistics.stdev(q):.3f}"
    assert col["federated worst-site AUC"] == f"{statistics.fmean(q) - 0.05:.3f} ± 0.007"
    assert col["federated site-1 AUC"].startswith(f"{statistics.fmean(q) + 0.03:.3f}")
    assert col["epsilon spent"] == "3.960 ± 0.000"
    assert "MIA" not in table
    assert (sweep / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((sweep / "sweep.json").read_text())["epsilons"] == ["inf", "4"]
    progress = [line for line in lines if line.startswith("[tradeoff] cell")]
    assert len(progress) == 8 and "start" in progress[0] and "ETA" in progress[1]

    before = {name: (sweep / name).read_bytes() for name in ("tradeoff.csv", "tradeoff.md")}
    monkeypatch.setattr(tradeoff_cells, "simulate", _refuse)
    again = run_tradeoff(spec, echo=lines.append)
    assert (again.ran, again.skipped) == (0, 4)
    for name, data in before.items():
        assert (sweep / name).read_bytes() == data, name

    # A cell stopped mid-run (folder without summary.json) is the only one run again.
    (sweep / "eps4-seed1" / rundir.SUMMARY).unlink()
    fake = FakeSimulate()
    monkeypatch.setattr(tradeoff_cells, "simulate", fake)
    third = run_tradeoff(spec, echo=lines.append)
    assert fake.calls == [("sample", 4.0, 1)] and (third.ran, third.skipped) == (1, 3)
    assert not (sweep / "eps4-seed1-2").exists()
    for name, data in before.items():
        assert (sweep / name).read_bytes() == data, name


def test_restart_with_other_arguments_names_what_differs(tmp_path, monkeypatch):
    monkeypatch.setattr(tradeoff_cells, "simulate", FakeSimulate())
    run_tradeoff(_spec(tmp_path, seeds="1"), echo=lambda line: None)
    monkeypatch.setattr(tradeoff_cells, "simulate", _refuse)
    with pytest.raises(ConfigError, match=r"sweep.json.*rounds: recorded 1, now 3"):
        run_tradeoff(_spec(tmp_path, seeds="1", rounds=3), echo=lambda line: None)
    with pytest.raises(ConfigError, match=r"epsilons: recorded \['inf', '4'\], now \['inf', '2'\]"):
        run_tradeoff(_spec(tmp_path, eps="inf,2", seeds="1"), echo=lambda line: None)
    with pytest.raises(ConfigError, match=r"seeds: recorded \[0\], now \[0, 1\]"):
        run_tradeoff(_spec(tmp_path, seeds="2"), echo=lambda line: None)


def test_membership_inference_audit_fills_its_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(tradeoff_cells, "simulate", FakeSimulate(audit=True))
    out = run_tradeoff(_spec(tmp_path, eps="2", seeds="1"), echo=lambda line: None)
    rows = _read_csv(out.sweep_dir / "tradeoff.csv")
    fed = [r for r in rows if r["model"] == "federated"]
    q = 0.5 + 0.4 * 2 / 6
    assert [float(r["mia_auc"]) for r in fed] == pytest.approx([0.5 + (1 - q) / 2] * 3)
    assert all(float(r["mia_tpr_at_1pct_fpr"]) == 0.02 for r in fed)
    assert all(r["mia_auc"] == "" for r in rows if r["model"] != "federated")
    table = (out.sweep_dir / "tradeoff.md").read_text()
    assert "MIA AUC (federated)" in table and f"{0.5 + (1 - q) / 2:.3f}" in table


def test_bad_sweep_names_and_seeds_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="sweep_name='a/b'"):
        _spec(tmp_path, name="a/b")
    with pytest.raises(ConfigError, match="seed=2147483648"):
        _spec(tmp_path, seeds=f"0,{2**31}")
    with pytest.raises(ConfigError, match="largest seed 2147483647"):
        parse_seeds("5", first=2**31 - 3)
    with pytest.raises(ConfigError, match="expected 1 to 1000 seeds"):
        parse_seeds(str(2**31))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedclinic")
    tradeoff_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_every_option_documents_its_default_and_swept_ones_are_absent():
    sub = _parser()._subparsers._group_actions[0].choices["tradeoff"]
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert all(a.help.endswith(")") and "(default: " in a.help for a in options)
    flags = {f for a in options for f in a.option_strings}
    assert {"--epsilons", "--seeds", "--sweep-name", "--rounds", "--partition"} <= flags
    assert not flags & {"--dp", "--target-epsilon", "--noise-multiplier"}


def test_one_real_dp_cell_end_to_end(tmp_path, capsys):
    """The real simulate(): federation plus DP local and pooled baselines at epsilon 4."""
    torch.set_num_threads(1)
    argv = ["tradeoff", "--epsilons", "4", "--seeds", "1", "--output-dir", str(tmp_path)]
    for key, value in TINY.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    args = _parser().parse_args(argv)
    assert tradeoff_cli.run(args) == 0
    sweep = tmp_path / "tradeoff-synthetic-iid-fedavg-cnn"
    assert "[tradeoff] cell 1/1 eps=4 seed=0: done" in capsys.readouterr().out
    summary = json.loads((sweep / "eps4-seed0" / rundir.SUMMARY).read_text())
    assert summary["config"]["dp"] == "sample" and summary["config"]["target_epsilon"] == 4.0
    rows = _read_csv(sweep / "tradeoff.csv")
    assert len(rows) == 3 * 3
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert 0.0 < float(row["epsilon_spent"]) <= 4.0
    fed = next(r for r in rows if (r["model"], r["scope"]) == ("federated", "global"))
    assert float(fed["epsilon_spent"]) == pytest.approx(summary["privacy"]["max_epsilon"])
    assert (sweep / "tradeoff.png").is_file() and "| 4 |" in (sweep / "tradeoff.md").read_text()


def test_a_relative_data_path_is_recorded_absolute_so_a_resume_from_elsewhere_matches(
        tmp_path, monkeypatch):
    data = tmp_path / "data" / "pneumo.npz"
    data.parent.mkdir()
    data.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    relative = RunConfig(dataset="medmnist", data_path="data/pneumo.npz",
                         output_dir=str(tmp_path / "out"))
    spec = SweepSpec(relative, (8.0,), (0,), "s")
    assert spec.record()["options"]["data_path"] == str(data.resolve())
    assert spec.config(8.0, 0).data_path == str(data.resolve())   # what a finished cell says


def test_a_sweep_with_dp_cells_trains_every_cell_with_one_dp_safe_loss(tmp_path, capsys) -> None:
    from fedclinic.cli import build_parser
    from fedclinic.cli.tradeoff import spec_from_args

    def spec(*extra: str):
        args = build_parser().parse_args(["tradeoff", "--output-dir", str(tmp_path), *extra])
        return spec_from_args(args)

    mixed = spec("--epsilons", "inf,8")         # the recipe's loss runs under DP too
    assert {mixed.config(e, 0).loss for e, _ in mixed.cells()} == {"logit_adjusted"}
    assert "--loss ce" not in capsys.readouterr().err
    assert spec("--epsilons", "inf,8", "--loss", "focal").base.loss == "focal"
