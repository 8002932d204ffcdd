"""What a report says was guaranteed (issue 13, item 6): per-site lifetime budget and policy, the
released values the guarantee covers, membership-inference intervals, the site's own audit, and
the DP-safe loss and client-level delta defaults."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import FedAvg

from client.policy import DEFAULT_POLICY, SIMULATION_POLICY
from client.site_audit import AUDIT_REPORT, LAST_GLOBAL, save_last_global
from common import rundir
from common.config import ConfigError, RunConfig
from common.datasets.base import Split, TaskInfo
from common.mia import scores_to_result
from common.mia_bootstrap import bootstrap_intervals, weighted_summaries
from common.models import build_model
from common.report.policy import policy_hex, policy_summary
from common.report.privacy import sample_privacy
from common.report.record import RunRecord
from common.report.writer import write_report
from common.task_defaults import with_task_defaults
from common.training.local import train_local
from common.training.losses import check_dp_loss, make_loss, make_seg_training_loss
from fedclinic.cli import main
from server.central_dp import central_delta, wrap_client_dp

torch.set_num_threads(1)

CFG = RunConfig(dp="sample", target_epsilon=8.0, sites=2, rounds=2)
SCORES = {"accuracy": 0.7, "auc": 0.8}
DP_TRAIN = {"epsilon": 1.0, "target_epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 1.1,
            "sample_rate": 0.05, "dp_steps": 20, "lifetime_epsilon_spent": 2.0,
            "lifetime_epsilon_budget": 24.0, "policy_id": 5.0, "count_noised": 1.0,
            "secure_randomness": 1.0, "num-examples": 101.7, "dp-weight": 1.0, "steps": 20,
            "proximal_mu": 0.0, "site": 0, "replayed": 0.0}
WITHHELD = {"site": 0, "withheld": 1.0, "num-examples": 1.0}


def _row(round_: int, epsilon: float, lifetime: float, policy_id: int, secure: float) -> dict:
    return {"round": round_, "epsilon": epsilon, "target_epsilon": 8.0, "delta": 1e-5,
            "noise_multiplier": 1.1, "sample_rate": 0.05, "dp_steps": 20 * round_,
            "lifetime_epsilon_spent": lifetime, "lifetime_epsilon_budget": 24.0,
            "policy_id": policy_id, "count_noised": 1.0, "secure_randomness": secure,
            "a_key_from_a_newer_site": 3.0}


def _history(train: dict, test: dict) -> list[dict]:
    first = [{"round": 0, "global": SCORES, "failures": {}, "sites": {}}]
    return first + [{"round": r, "global": SCORES, "failures": {},
                     "sites": {s: {"train": train, "test": test} for s in "01"}}
                    for r in (1, 2)]


def _deployed_record(train: dict = DP_TRAIN, test: dict = WITHHELD) -> RunRecord:
    pid = DEFAULT_POLICY.policy_id
    ledgers = {"0": [_row(1, 3.0, 10.0, pid, 1.0), _row(2, 4.5, 11.5, pid, 1.0)],
               "1": [_row(1, 1.5, 1.5, pid, 1.0), _row(2, 2.4, 2.4, pid, 1.0)]}
    refused = {7: {"round": 1, "reason": "policy-refused: require_dp: dp='off' asked",
                   "rule": "require_dp"}}
    return RunRecord(config=CFG, history=_history(train, test), wall_seconds=1.0,
                     privacy=sample_privacy(CFG, ledgers, {}, refused))


def _report(tmp_path: Path, record: RunRecord) -> tuple[dict, str]:
    write_report(tmp_path, record)
    return (json.loads((tmp_path / rundir.SUMMARY).read_text()),
            (tmp_path / rundir.REPORT).read_text())


def _table(text: str, header: str) -> list[list[str]]:
    """The rows (cells) of the markdown table whose header starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# --- per-site guarantee: lifetime spent/left, policy, noise source -------------------------------

def test_deployed_report_states_each_sites_lifetime_budget_policy_and_noise(tmp_path):
    summary, report = _report(tmp_path, _deployed_record())
    rows = _table(report, "| site | epsilon (run) |")
    pid = policy_hex(DEFAULT_POLICY.policy_id)
    assert rows[0] == ["0", "4.500", "1.00e-05", "RDP", "11.500", "24.000", "12.500", pid,
                       "noised (charged)", "OS CSPRNG"]
    assert rows[1][:7] == ["1", "2.400", "1.00e-05", "RDP", "2.400", "24.000", "21.600"]
    assert "OS CSPRNG at every site" in report
    assert "Site(s) 0, 1 kept their test metrics local" in report
    assert "node 7 was refused by its own site policy at round 1 (rule `require_dp`)" in report
    guarantee = summary["privacy"]["guarantee"]["0"]
    assert (guarantee["lifetime_spent"], guarantee["lifetime_left"]) == (11.5, 12.5)
    assert guarantee["policy_id"] == DEFAULT_POLICY.policy_id
    assert summary["privacy"]["sites"]["1"]["lifetime_epsilon_budget"] == 24.0
    assert summary["privacy"]["refused"]["7"]["rule"] == "require_dp"
    # a site that sends none of it (an older fedclinic) still reports, with '-'
    old = {k: v for k, v in _row(1, 1.0, 1.0, 1, 0.0).items() if k in (
        "round", "epsilon", "target_epsilon", "delta", "noise_multiplier", "sample_rate",
        "dp_steps")}
    privacy = sample_privacy(CFG, {"0": [old]}, {})
    assert privacy.guarantees()["0"].lifetime_left is None


def test_simulation_report_states_the_policy_and_that_its_noise_was_seeded(tmp_path):
    policy = policy_summary(SIMULATION_POLICY, dp=True)
    record = _deployed_record()
    seeded = {site: [{**row, "secure_randomness": 0.0, "policy_id": policy.policy_id,
                      "lifetime_epsilon_budget": float("inf")}
                     for row in rows] for site, rows in
              {"0": [_row(1, 3.0, 3.0, 0, 0.0)], "1": [_row(1, 1.0, 1.0, 0, 0.0)]}.items()}
    privacy = sample_privacy(CFG, seeded, {})
    import dataclasses

    record = dataclasses.replace(record, privacy=dataclasses.replace(privacy, policy=policy))
    summary, report = _report(tmp_path, record)
    assert f"sha256 `{SIMULATION_POLICY.digest()}`" in report
    assert "DP required: no; max epsilon per run no limit; lifetime epsilon no limit" in report
    assert "sample count exact (in this run: noised)" in report
    assert "test metrics noised; train loss exact (in this run: local)" in report
    assert "seeded from the run seed (simulation): reproducible" in report
    assert _table(report, "| site | epsilon (run) |")[0][4:7] == ["3.000", "no limit",
                                                                  "no limit"]
    assert summary["privacy"]["policy"]["digest"] == SIMULATION_POLICY.digest()
    assert summary["privacy"]["policy"]["source"] == "simulation"
    assert "Sites reported another policy id" not in report


def test_a_policy_file_is_named_without_its_path():
    from client.policy import policy_from_text

    policy = policy_from_text("lifetime_epsilon = 3.0\n", "/srv/hospital/secret/policy.toml")
    summary = policy_summary(policy)
    assert summary.source == "policy.toml" and summary.lifetime_epsilon == 3.0
    assert summary.policy_id == policy.policy_id


def test_dp_simulation_scores_the_sites_itself_and_states_its_policy(tmp_path):
    """Under DP the sites release their test metrics only noised (in the last round): the
    simulator scores the final model on each site's test split itself, says so, and states the
    simulation policy and seeded noise."""
    from common.datasets import load_dataset
    from common.partitions.federation import build_federation
    from common.training.prediction import evaluate
    from simulations.simulate import final_model, simulate

    cfg = RunConfig(num_samples=200, sites=2, rounds=1, model="cnn", width=8, baselines="",
                    dp="sample", target_epsilon=8.0, output_dir=str(tmp_path))
    outcome = simulate(cfg, echo=lambda line: None, run_name="dp")
    summary, report = outcome.summary, (outcome.run_dir / rundir.REPORT).read_text()
    for site in outcome.history[-1]["sites"].values():               # nothing left exact
        assert site["test"]["withheld"] == 0.0 and not {"loss", "auc", "val_loss"} & set(
            site["test"])
    fed = build_federation(load_dataset(cfg), cfg)
    model = final_model(cfg, fed, outcome.run_dir)
    for site in fed.sites:
        expected = evaluate(model, site.test, fed.task)
        assert summary["federated"]["sites"][str(site.site)] == pytest.approx(expected)
    assert "computed by the simulator, not released by the sites" in summary["federated"][
        "sites_note"]
    assert "Policy in force at every simulated site: `simulation`" in report
    assert "seeded from the run seed (simulation)" in report
    assert summary["privacy"]["guarantee"]["0"]["secure_randomness"] is False
    assert all(r["covered"] for r in summary["released"])


# --- which released values are covered ----------------------------------------------------------

def test_report_lists_what_left_and_flags_an_uncovered_value(tmp_path):
    summary, report = _report(tmp_path, _deployed_record())
    released = {(r["message"], r["field"]): r for r in summary["released"]}
    assert released[("train", "num-examples")]["protection"].startswith("Gaussian noise")
    assert released[("train", "arrays (the model weights)")]["covered"] is True
    assert released[("evaluate", "withheld")]["covered"] is True
    leaky = _deployed_record(train={**DP_TRAIN, "train_loss": 0.3},
                             test={"accuracy": 0.9, "auc": 0.8, "site": 0})
    summary, report = _report(tmp_path, leaky)
    uncovered = {r["field"] for r in summary["released"] if not r["covered"]}
    assert {"train_loss", "auc"} <= uncovered and "accuracy" not in uncovered  # noised is listed
    assert "Not covered by a DP guarantee:" in report and "train_loss" in report
    row = next(r for r in _table(report, "| message | field |") if r[1] == "`train_loss`")
    assert row[3:5] == ["stays local", "**no**"]


# --- membership-inference confidence intervals --------------------------------------------------

def test_vectorised_bootstrap_summaries_equal_the_exact_ones():
    rng = np.random.default_rng(0)
    for _ in range(40):
        m = np.round(rng.normal(0.5, 1.0, rng.integers(2, 80)), 1)     # rounded: many ties
        n = np.round(rng.normal(0.0, 1.0, rng.integers(2, 80)), 1)
        counts_m, counts_n = rng.integers(0, 3, m.size), rng.integers(0, 3, n.size)
        counts_m[0] = counts_n[0] = 2
        exact = scores_to_result("loss-threshold", np.repeat(m, counts_m), np.repeat(n, counts_n))
        fast = weighted_summaries(m, n, counts_m[None], counts_n[None])
        for key in ("auc", "tpr_at_1pct_fpr", "advantage"):
            assert fast[key][0] == pytest.approx(getattr(exact, key), abs=1e-12)


def test_intervals_hold_the_estimate_are_seeded_and_narrow_with_more_samples():
    rng = np.random.default_rng(1)
    small = (rng.normal(0.5, 1, 60), rng.normal(0, 1, 60))
    large = (rng.normal(0.5, 1, 2000), rng.normal(0, 1, 2000))
    widths = {}
    for name, (m, n) in (("small", small), ("large", large)):
        point = scores_to_result("loss-threshold", m, n)
        ci = bootstrap_intervals(m, n, seed=(3, 0))
        for key in ("auc", "advantage"):
            interval = getattr(ci, key)
            assert interval.low <= getattr(point, key) <= interval.high
        widths[name] = ci.auc.high - ci.auc.low
        assert bootstrap_intervals(m, n, seed=(3, 0)) == ci
        wider = bootstrap_intervals(m, n, seed=(3, 0), level=0.99)
        assert wider.auc.low <= ci.auc.low and ci.auc.high <= wider.auc.high
    assert widths["large"] < widths["small"] / 3           # ~ 1/sqrt(n): sqrt(2000/60) = 5.8
    assert 0.5 < bootstrap_intervals(*large, seed=0).auc.low        # a real effect, excluded 0.5


def test_bootstrap_rejects_bad_settings():
    with pytest.raises(ValueError, match="resamples=1"):
        bootstrap_intervals(np.ones(3), np.zeros(3), seed=0, resamples=1)
    with pytest.raises(ValueError, match="level=1.0"):
        bootstrap_intervals(np.ones(3), np.zeros(3), seed=0, level=1.0)


def test_report_audit_table_shows_the_intervals(tmp_path):
    from common.mia import audit

    rng = np.random.default_rng(0)
    task = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=4)
    split = Split(rng.random((40, 1, 4, 4), dtype=np.float32), np.arange(40) % 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    result = audit(model, [(split.subset(np.arange(20)), split.subset(np.arange(20, 40)))], task,
                   seed=0, resamples=200)
    record = RunRecord(config=RunConfig(), history=_history({}, SCORES), wall_seconds=1.0,
                       audit=result)
    _, report = _report(tmp_path, record)
    site0 = result["sites"][0]["loss-threshold"]
    row = _table(report, "| scope | members / non-members |")[0]
    assert row[:2] == ["site 0", "20 / 20"]
    assert row[2] == (f"{site0['auc']:.3f} [{site0['auc_ci_low']:.3f}, "
                      f"{site0['auc_ci_high']:.3f}]")
    assert "95% percentile-bootstrap interval (200 seeded resamples" in report


# --- the site's own audit -------------------------------------------------------------------------

def _site_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 4), ("test", 40)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    np.savez(path, **arrays)
    return path


def _memorising_model(data: Path, cfg: RunConfig) -> torch.nn.Module:
    from client.site import load_site

    site = load_site(cfg, {"data-path": str(data)})
    torch.manual_seed(1)
    model = build_model(cfg.model, spatial_dims=2, in_channels=1, num_classes=2, norm=cfg.norm,
                        width=cfg.width)
    train_local(model, site.train, site.task, cfg, epochs=40, seed=0)
    return model


def test_site_audit_runs_locally_writes_a_private_report_and_prints_the_table(tmp_path, capsys):
    data = _site_file(tmp_path / "site.npz")
    cfg = RunConfig(model="cnn", width=8, optimizer="adam", lr=3e-3, batch_size=8)
    model = _memorising_model(data, cfg)
    state = tmp_path / "state"
    old = os.umask(0)                                    # 0600 whatever the umask
    try:
        saved = save_last_global({"ledger-dir": str(state / "ledgers")}, model, cfg, 3, "run-a")
    finally:
        os.umask(old)
    assert saved == state / LAST_GLOBAL and stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert save_last_global({"partition-id": 0}, model, cfg, 3) is None     # simulation: none
    code = main(["site", "audit", "--data", str(data), "--state", str(state), "--seed", "1",
                 "--resamples", "300", "--site-id", "4"])
    printed = capsys.readouterr().out
    assert code == 0
    report = state / AUDIT_REPORT
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert report.read_text() in printed and "round 3 of run run-a" in printed
    rows = _table(printed, "| scope | members / non-members |")
    assert [r[:2] for r in rows] == [["site 4", "40 / 40"]]        # the site's row alone
    auc, low, high = (float(x) for x in rows[0][2].replace("[", "").replace("]", "")
                      .replace(",", "").split())
    assert low <= auc <= high and low > 0.5        # it memorised its 40 training images
    # the consortium's final_model.pt gives the same audit as the model the site kept
    final = tmp_path / "final_model.pt"
    rundir.save_model(final, model.state_dict(), {"round": 3, "config": cfg.to_dict()})
    code = main(["site", "audit", "--data", str(data), "--state", str(state), "--seed", "1",
                 "--resamples", "300", "--site-id", "4", "--model", str(final)])
    assert code == 0 and _table(capsys.readouterr().out, "| scope |") == rows


def test_site_audit_without_a_model_says_what_to_do(tmp_path, capsys):
    data = _site_file(tmp_path / "site.npz")
    code = main(["site", "audit", "--data", str(data), "--state", str(tmp_path / "empty")])
    assert code == 2
    assert "no global model saved yet" in capsys.readouterr().err
    assert not (tmp_path / "empty" / AUDIT_REPORT).exists()


# --- weighted_ce under DP, the 3D default, client-level delta ------------------------------------

def test_class_weights_under_dp_are_refused_naming_the_safe_losses(tmp_path):
    cfg = RunConfig(dp="sample", loss="weighted_ce")
    with pytest.raises(ConfigError, match="weighted_ce.*private label counts.*dice_ce"):
        check_dp_loss(cfg)
    task = TaskInfo(kind="binary", num_classes=2, spatial_dims=2, channels=1, size=4)
    with pytest.raises(ConfigError, match="weighted_ce"):
        make_loss(cfg, task, np.array([0, 1, 1]))
    seg = TaskInfo(kind="segmentation", num_classes=2, spatial_dims=3, channels=1, size=4)
    with pytest.raises(ConfigError, match="weighted_ce"):
        make_seg_training_loss(cfg.replace(task="segmentation"), seg, np.zeros((2, 4, 4, 4),
                                                                              np.int64))
    for allowed in (cfg.replace(dp="off"), cfg.replace(dp="client"), cfg.replace(loss="focal")):
        check_dp_loss(allowed)
    from simulations.simulate import simulate

    with pytest.raises(ConfigError, match="weighted_ce"):
        simulate(cfg.replace(output_dir=str(tmp_path)), echo=lambda line: None)
    assert not list(tmp_path.iterdir())                 # refused before any run directory


def test_3d_segmentation_default_loss_is_dp_safe_under_dp_only():
    seg3d = {"task": "segmentation", "spatial_dims": 3}
    assert with_task_defaults({**seg3d, "dp": "sample"})[0]["loss"] == "dice_ce"
    assert with_task_defaults(seg3d)[0]["loss"] == "weighted_ce"
    assert with_task_defaults({**seg3d, "dp": "client"})[0]["loss"] == "weighted_ce"
    check_dp_loss(RunConfig.from_dict(with_task_defaults({**seg3d, "dp": "sample",
                                                          "model": "unet"})[0]))


def test_client_level_delta_defaults_to_at_most_1e5(tmp_path):
    for sites in (2, 4, 100, 10_000, 1_000_000):
        delta = central_delta(RunConfig(dp="client"), sites)
        assert delta <= 1e-5 and delta <= 1 / (10 * sites)
    assert central_delta(RunConfig(dp="client", delta=1e-7), 4) == 1e-7
    cfg = RunConfig(dp="client", sites=4, noise_multiplier=1.0)
    _, plan = wrap_client_dp(FedAvg(), cfg, 4, 4)
    assert plan.delta == 1e-5 and not plan.delta_given
    from common.report.privacy import client_privacy
    from common.report.markdown import client_privacy_section

    text = "\n".join(client_privacy_section(client_privacy(plan, [])))
    assert "delta 1.00e-05 (the default min(1e-5, 1/(10 x 4 sites)))" in text
