"""Sample-level DP in a real simulated federation: cumulative, honest epsilon; fail closed."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from common.config import RunConfig
from common.datasets import load_dataset
from common.models import build_model
from common.packing import PACKED_KEY, pack_state
from common.partitions.loader import site_data
from common.privacy.accounting import epsilon_of_history
from common.privacy.ledger import PrivacyLedger
from common.privacy.planner import plan_from_config
from simulations.simulate import simulate

BASE = dict(num_samples=240, sites=2, model="cnn", width=8, batch_size=16, local_epochs=1,
            dp="sample", max_grad_norm=1.0, baselines="")


def _context(node_config: dict | None = None) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config or {}, state=RecordDict(),
                   run_config={})


def test_calibrated_run_spends_its_budget_and_no_more(tmp_path):
    cfg = RunConfig(**BASE, rounds=2, target_epsilon=4.0, output_dir=str(tmp_path))
    outcome = simulate(cfg, echo=lambda line: None, run_name="dp")
    ledger = json.loads((outcome.run_dir / "privacy_ledger.json").read_text())
    assert sorted(ledger["sites"]) == ["0", "1"]
    for site, rows in ledger["sites"].items():
        eps = [row["epsilon"] for row in rows]
        assert [row["round"] for row in rows] == [1, 2]
        assert eps == sorted(eps) and eps[0] > 0            # cumulative, never decreasing
        steps = [row["dp_steps"] for row in rows]
        history = [(row["noise_multiplier"], row["sample_rate"], now - before)
                   for row, before, now in zip(rows, [0] + steps[:-1], steps)]
        again = epsilon_of_history(history, rows[-1]["delta"], "rdp")
        assert again == pytest.approx(eps[-1], rel=0.01)     # independent recomputation
        assert 0.9 * 4.0 <= eps[-1] <= 4.0                   # the whole run's epsilon
        n_train = len(site_data(cfg.replace(output_dir=str(tmp_path)), int(site)).train)
        assert rows[-1]["delta"] < 1.0 / n_train
    assert outcome.summary["privacy"]["max_epsilon"] <= 4.0
    assert "Privacy" in (outcome.run_dir / "report.md").read_text()


def test_site_at_its_budget_refuses_and_the_run_ends_cleanly(tmp_path):
    probe = RunConfig(**BASE, rounds=1, noise_multiplier=1.0)
    n_train = min(len(site_data(probe, s).train) for s in range(2))
    plan = plan_from_config(probe, n_train)
    one = PrivacyLedger("rdp")
    one.record(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    first = one.epsilon(plan.delta)
    second = one.epsilon_if(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round,
                            plan.delta)
    budget = (first + second) / 2          # room for one round, not two, at every site
    cfg = RunConfig(**BASE, rounds=4, noise_multiplier=1.0, target_epsilon=budget,
                    output_dir=str(tmp_path))
    outcome = simulate(cfg, echo=lambda line: None, run_name="budget")
    assert "every site has spent its privacy budget" in outcome.summary["stopped_early"]
    privacy = outcome.summary["privacy"]
    assert len(privacy["exhausted"]) == 2
    assert all("budget-exhausted" in info["reason"] for info in privacy["exhausted"].values())
    assert all(row["epsilon"] <= budget for row in privacy["sites"].values())
    assert outcome.history[-1]["round"] < 4


def _train_request(cfg: RunConfig, server_round: int, weights: torch.Tensor) -> Message:
    config = ConfigRecord({**cfg.to_dict(), "server-round": server_round,
                           "fedclinic-run": "run-a"})
    content = RecordDict({"config": config, "arrays": ArrayRecord({PACKED_KEY: weights})})
    return Message(content, dst_node_id=1, message_type="train")


def test_a_round_asked_again_gets_the_same_update_and_is_charged_once(tmp_path, monkeypatch):
    """A resumed server asks again for the round it lost: the site re-sends what it computed
    (no new release, no new epsilon); a different request trains and is charged as usual."""
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import train

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):  # as inside a task
        monkeypatch.setattr(TaskIdentity, name, value)
    cfg = RunConfig(**{**BASE, "num_samples": 120}, rounds=3, target_epsilon=8.0)
    task = load_dataset(cfg).task
    model = build_model(cfg.model, spatial_dims=task.spatial_dims, in_channels=task.channels,
                        num_classes=task.num_classes, norm=cfg.norm, width=cfg.width)
    weights = pack_state(model.state_dict())
    ctx = _context({"partition-id": 0, "num-partitions": 2, "ledger-dir": str(tmp_path)})
    first = train(_train_request(cfg, 2, weights), ctx)
    resumed = cfg.replace(resume="run-a", rounds=4)        # what a resumed server sends
    again = train(_train_request(resumed, 2, weights), _context(dict(ctx.node_config)))
    sent = first.content["arrays"][PACKED_KEY].numpy()
    assert np.array_equal(sent, again.content["arrays"][PACKED_KEY].numpy())
    assert again.content["metrics"]["replayed"] == 1.0 and first.content["metrics"]["replayed"] == 0
    assert again.content["metrics"]["epsilon"] == first.content["metrics"]["epsilon"]
    def steps_charged() -> int:          # the site's lifetime ledger (one dataset here)
        (path,) = tmp_path.glob("*.jsonl")
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return sum(e["steps"] for e in entries if e["run"] == "run-a" and e["kind"] == "dp-sgd")

    one_round = first.content["metrics"]["dp_steps"]
    assert steps_charged() == one_round                      # charged once for round 2
    third = train(_train_request(cfg, 3, torch.as_tensor(sent)), ctx)     # the next round
    assert third.content["metrics"]["replayed"] == 0.0
    assert third.content["metrics"]["epsilon"] > first.content["metrics"]["epsilon"]
    assert steps_charged() == 2 * one_round
