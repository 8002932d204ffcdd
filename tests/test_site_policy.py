"""The site's own privacy policy (client.policy) and its admission of runs (client.admission),
in-process: a deployed site's ClientApp train task on a tiny .npz, with its lifetime ledger in a
temporary state folder. The real-process versions are tests/test_deploy_policy.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from client.admission import admit
from client.policy import (DEFAULT_POLICY, SIMULATION_POLICY, PolicyRefused, SitePolicy,
                           load_policy, policy_for, policy_from_text)
from client.site import site_privacy
from client.train_task import train_reply
from common.config import ConfigError, RunConfig
from common.datasets import load_dataset
from common.models import build_model
from common.packing import PACKED_KEY, pack_state
from common.privacy.ledger import PrivacyLedger
from common.wire import RUN_KEY, SITE_POLICY_KEY, ReplyCode

TINY = dict(model="cnn", width=4, batch_size=16, local_epochs=1, rounds=1, baselines="")


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower objects made outside a task need its identity (as inside the executor)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _site_file(path: Path, n_train: int = 48) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("val", 8), ("test", 16)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def site(tmp_path) -> dict:
    """A deployed site's node config: its data file and ledger folder (as `fedclinic site`)."""
    data = _site_file(tmp_path / "site.npz")
    return {"data-path": str(data), "site-id": 0, "ledger-dir": str(tmp_path / "state" / "ledgers")}


def _policy_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def _request(cfg: RunConfig, classes: int, run: str = "run-a", server_round: int = 1,
             extra: dict | None = None) -> Message:
    torch.manual_seed(0)
    model = build_model(cfg.model, spatial_dims=2, in_channels=1, num_classes=classes,
                        norm=cfg.norm, width=cfg.width)
    config = ConfigRecord({**cfg.to_dict(), "server-round": server_round, RUN_KEY: run,
                           **(extra or {})})
    content = RecordDict({"config": config,
                          "arrays": ArrayRecord({PACKED_KEY: pack_state(model.state_dict())})})
    return Message(content, dst_node_id=1, message_type="train")


def _train(node_config: dict, cfg: RunConfig, **kwargs) -> Message:
    context = Context(run_id=7, node_id=1, node_config=dict(node_config), state=RecordDict(),
                      run_config={})
    simulated = "partition-id" in node_config        # else the site's 2-class .npz
    classes = load_dataset(cfg).task.num_classes if simulated else 2
    return train_reply(_request(cfg, classes, **kwargs), context)


def _refusal(reply: Message) -> tuple[int, str]:
    assert reply.has_error(), dict(reply.content["metrics"])
    return reply.error.code, reply.error.reason


# ---------------------------------------------------------------------------- the policy file

@pytest.mark.parametrize("text, expected", [
    ("require_dp = 1\n", r"require_dp = 1: expected true or false"),
    ("lifetime_epsilon = -3\n", r"lifetime_epsilon = -3: expected a finite number > 0"),
    ("lifetime_epsilon = inf\n", r"lifetime_epsilon = inf: expected a finite number"),
    ("max_epsilon_per_run = \"8\"\n", r"max_epsilon_per_run = '8': expected a finite number"),
    ("delta = 0.5\n", r"delta = 0.5: expected a number with 0 < delta <= 1e-3"),
    ("allowed_models = [\"cnn\", \"gpt\"]\n", r"allowed_models = \['cnn', 'gpt'\]: expected a "
                                              r"list of model names from: resnet10"),
    ("sample_count = \"rounded\"\n", r"sample_count = 'rounded': expected one of noised, equal"),
    ("max_metric_releases_per_run = 1.5\n", r"max_metric_releases_per_run = 1.5: expected an "
                                            r"integer >= 0"),
    ("lifetime_epsilon = 24\nepsilon = 3\n", r"unknown policy key 'epsilon'; known keys: "
                                             r"require_dp, max_epsilon_per_run"),
    ("test_metrics = \"exact\"\n", r'test_metrics = "exact" with require_dp = true: an exact '
                                   r'value never leaves a DP run; use "local" or "noised"'),
    ("require_dp = true\nrequire_dp = false\n", r"not valid TOML"),
    ("max_local_passes = 0\n", r"max_local_passes = 0: expected an integer >= 1 \(leave it "
                               r"out for any\)"),
    ("max_width = 2.5\n", r"max_width = 2.5: expected an integer >= 4"),
])
def test_a_policy_file_mistake_names_the_file_the_key_and_what_is_expected(tmp_path, text,
                                                                          expected):
    path = _policy_file(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


def test_a_missing_policy_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the site policy"):
        load_policy(tmp_path / "missing.toml")


def test_a_policy_reads_back_from_its_canonical_toml_and_its_digest_ignores_where_it_came_from(
        tmp_path):
    path = _policy_file(tmp_path, "lifetime_epsilon = 3\nallowed_models = [\"cnn\"]\n"
                                  "delta = 1e-6\n")
    policy = load_policy(path)
    assert (policy.lifetime_epsilon, policy.allowed_models, policy.delta) == (3.0, ("cnn",), 1e-6)
    assert policy.require_dp and policy.source == str(path)
    again = policy_from_text(policy.to_toml(), "elsewhere")
    assert again.digest() == policy.digest() and again.source == "elsewhere"
    assert policy.digest() != DEFAULT_POLICY.digest()
    assert policy.policy_id == int(policy.digest()[:12], 16)
    assert load_policy(None) is DEFAULT_POLICY and DEFAULT_POLICY.require_dp
    assert "lifetime epsilon:       at most 3 over every run" in policy.render()


def test_what_may_leave_follows_the_policy_and_never_exact_under_dp():
    assert DEFAULT_POLICY.planned_releases() == ((10.0, 1.0, 1),)     # the noised count
    noised = SitePolicy(test_metrics="noised", max_metric_releases_per_run=2)
    assert noised.planned_releases() == ((10.0, 1.0, 1), (10.0, 1.0, 2))
    for dp in (True, False):
        assert SitePolicy(sample_count="equal").sample_count_release(dp) == "equal"
    sim = SIMULATION_POLICY
    assert (sim.sample_count_release(True), sim.test_metrics_release(True),
            sim.train_loss_release(True)) == ("noised", "noised", "local")
    assert sim.planned_releases() == ((10.0, 1.0, 1), (10.0, 1.0, 1))   # count, last round
    assert (sim.sample_count_release(False), sim.test_metrics_release(False),
            sim.train_loss_release(False)) == ("exact", "exact", "exact")
    assert math.isinf(sim.lifetime_epsilon) and not sim.require_dp


def test_where_a_sites_policy_comes_from(tmp_path):
    mine = _policy_file(tmp_path, "lifetime_epsilon = 5\n")
    sent = {SITE_POLICY_KEY: "require_dp = false\nlifetime_epsilon = 1000\n"}
    assert policy_for({"data-path": "x"}, {}) is DEFAULT_POLICY
    assert policy_for({"data-path": "x", "policy-path": str(mine)}, sent).lifetime_epsilon == 5
    assert policy_for({"data-path": "x"}, sent) is DEFAULT_POLICY    # never the server's
    simulated = {"partition-id": 0, "num-partitions": 2}
    assert policy_for(simulated, {}) is SIMULATION_POLICY
    assert policy_for(simulated, sent).lifetime_epsilon == 1000


def test_a_sites_own_privacy_settings_may_only_tighten_the_run():
    cfg = RunConfig(dp="sample", target_epsilon=8.0, noise_multiplier=0.0, delta=1e-5)
    tight = site_privacy(cfg, {"target-epsilon": 2, "delta": 1e-6, "max-grad-norm": 0.5,
                               "noise-multiplier": 1.5})
    assert (tight.target_epsilon, tight.delta, tight.max_grad_norm, tight.noise_multiplier) == (
        2.0, 1e-6, 0.5, 1.5)
    for key, value in (("target-epsilon", 10), ("delta", 1e-4), ("max-grad-norm", 2.0),
                       ("delta", 0)):
        with pytest.raises(ConfigError, match=f"node config {key}=.* is looser than the run's"):
            site_privacy(cfg, {key: value})
    with pytest.raises(ConfigError, match="node config noise-multiplier=1 is looser"):
        site_privacy(cfg.replace(noise_multiplier=2.0), {"noise-multiplier": 1.0})


# ---------------------------------------------------------------------------------- admission

class _Ledger:
    """A ledger as admission reads it: one history per run."""

    def __init__(self, runs: dict[str, list[tuple[float, float, int]]] | None = None) -> None:
        self.runs = runs or {}

    def _ledger(self, entries) -> PrivacyLedger:
        ledger = PrivacyLedger("rdp")
        for entry in entries:
            ledger.record(*entry)
        return ledger

    def lifetime(self) -> PrivacyLedger:
        return self._ledger([e for run in self.runs.values() for e in run])

    def run(self, run_key: str) -> PrivacyLedger:
        return self._ledger(self.runs.get(run_key, []))

    def released(self, run_key: str, kind: str) -> float | None:
        return None


def test_admission_plans_with_the_sites_delta_clip_and_releases():
    policy = SitePolicy(max_grad_norm=0.5, lifetime_epsilon=24.0)
    cfg = RunConfig(dp="sample", target_epsilon=4.0, **{**TINY, "rounds": 3})
    admitted = admit(cfg, policy, 400, _Ledger(), "run-a", 1)
    plan = admitted.plan
    assert plan.delta == 1e-5 and plan.max_grad_norm == 0.5 and admitted.cfg.max_grad_norm == 0.5
    assert plan.extra == ((10.0, 1.0, 1),) and plan.epsilon == pytest.approx(4.0, rel=0.01)
    assert admitted.new_run and admitted.count_due and admitted.budget == 4.0
    lower = admit(cfg.replace(delta=1e-7), policy, 400, _Ledger(), "run-a", 1)
    assert lower.plan.delta == 1e-7                  # the server may only lower delta


def test_admission_refuses_what_the_policy_does_not_allow():
    policy = SitePolicy(max_epsilon_per_run=4.0, allowed_models=("cnn",),
                        allowed_strategies=("fedavg",))
    cfg = RunConfig(dp="sample", target_epsilon=4.0, **TINY)
    cases = [(cfg.replace(dp="off"), "require_dp"), (cfg.replace(dp="client"), "require_dp"),
             (cfg.replace(model="resnet10"), "allowed_models"),
             (cfg.replace(strategy="krum"), "allowed_strategies"),
             (cfg.replace(target_epsilon=5.0), "max_epsilon_per_run"),
             (cfg.replace(noise_multiplier=0.3), "max_epsilon_per_run")]   # fixed sigma: too low
    for asked, rule in cases:
        with pytest.raises(PolicyRefused) as refused:
            admit(asked, policy, 400, _Ledger(), "run-a", 1)
        assert refused.value.rule == rule
        assert str(refused.value).startswith(f"policy-refused: {rule}: ")


def test_admission_caps_the_compute_a_request_asks():
    """Passes over the train split per request (local epochs x augmented copies; fine-tuning
    epochs) and the model's width, at and one past each limit."""
    policy = SitePolicy(max_local_passes=8, max_width=8)
    cfg = RunConfig(dp="sample", target_epsilon=4.0, **TINY)
    fits = [cfg.replace(local_epochs=8), cfg.replace(width=8),
            cfg.replace(local_epochs=2, augment="hflip", aug_multiplicity=4),
            cfg.replace(personalize="finetune", finetune_epochs=8)]
    for asked in fits:
        assert admit(asked, policy, 400, _Ledger(), "run-a", 1).plan is not None
    cases = [(cfg.replace(local_epochs=9), "local_epochs 9 x aug_multiplicity 1"),
             (cfg.replace(local_epochs=3, augment="hflip", aug_multiplicity=3),
              "asks 9 passes over the train split (local_epochs 3 x aug_multiplicity 3); this "
              "site allows at most 8"),
             (cfg.replace(personalize="finetune", finetune_epochs=9), "9 epochs of fine-tuning"),
             (cfg.replace(width=16), "the run asks width 16; this site allows at most 8")]
    for asked, why in cases:
        with pytest.raises(PolicyRefused, match=r"^policy-refused: max_") as refused:
            admit(asked, policy, 400, _Ledger(), "run-a", 1)
        assert why in str(refused.value)
        assert refused.value.rule == ("max_width" if "width" in why else "max_local_passes")
    unlimited = SitePolicy()
    assert admit(cfg.replace(local_epochs=1000, width=512), unlimited, 400, _Ledger(), "run-a",
                 1).plan is not None


def test_a_compute_cap_leaves_the_default_policys_digest_and_shows_in_the_policy():
    capped = policy_from_text("max_local_passes = 16\nmax_width = 64\n", "capped.toml")
    assert (capped.max_local_passes, capped.max_width) == (16, 64)
    assert policy_from_text(capped.to_toml(), "again").digest() == capped.digest()
    assert capped.digest() != DEFAULT_POLICY.digest()
    assert "max_local_passes" not in DEFAULT_POLICY.to_toml()      # unset keys: no line
    assert "passes per request:     at most 16" in capped.render()
    assert "model width:            any" in DEFAULT_POLICY.render()


# ------------------------------------------------------------------- the train task, deployed

def test_the_default_policy_refuses_a_run_without_dp_with_a_4033_reply(site):
    reply = _train(site, RunConfig(dp="off", **TINY))
    code, reason = _refusal(reply)
    assert code == ReplyCode.POLICY_REFUSED == 4033
    assert reason.startswith("policy-refused: require_dp: ") and "dp=off" in reason
    assert site["data-path"] not in reason and "/" not in reason        # no local path leaves


def test_a_deployed_site_refuses_more_compute_than_its_policy_allows_before_reading_data(
        site, tmp_path):
    capped = _policy_file(tmp_path, "max_local_passes = 2\n")
    node = {**site, "policy-path": str(capped), "data-path": str(tmp_path / "absent.npz")}
    code, reason = _refusal(_train(node, RunConfig(dp="sample", **{**TINY, "local_epochs": 3})))
    assert code == 4033 and reason.startswith("policy-refused: max_local_passes: a round asks 3 "
                                              "passes")


def test_a_broken_policy_file_refuses_without_saying_where_it_is(site, tmp_path):
    broken = _policy_file(tmp_path, "lifetime_epsilon = \"a lot\"\n")
    code, reason = _refusal(_train({**site, "policy-path": str(broken)},
                                   RunConfig(dp="sample", **TINY)))
    assert code == 4033 and reason.startswith("policy-refused: policy_file: ")
    assert str(tmp_path) not in reason


def test_max_epsilon_per_run_refuses_a_larger_budget(site):
    code, reason = _refusal(_train(site, RunConfig(dp="sample", target_epsilon=9.0, **TINY)))
    assert code == 4033
    assert reason.startswith("policy-refused: max_epsilon_per_run: the run asks target_epsilon "
                             "9; this site allows at most 8 per run")


def test_a_lifetime_budget_of_3_admits_one_run_of_2_and_refuses_a_second(site, tmp_path):
    policy = _policy_file(tmp_path, "lifetime_epsilon = 3\n")
    node = {**site, "policy-path": str(policy)}
    cfg = RunConfig(dp="sample", target_epsilon=2.0, **TINY)
    first = _train(node, cfg, run="run-a")
    assert not first.has_error(), first.error.reason if first.has_error() else ""
    metrics = first.content["metrics"]
    assert metrics["epsilon"] == pytest.approx(2.0, rel=0.01)
    assert metrics["lifetime_epsilon_spent"] == pytest.approx(metrics["epsilon"])
    assert metrics["lifetime_epsilon_budget"] == 3.0
    assert metrics["policy_id"] == load_policy(policy).policy_id
    assert metrics["dp_steps"] == metrics["steps"]              # DP-SGD steps, not releases
    assert "train_loss" not in metrics                          # under DP it stays here
    code, reason = _refusal(_train(node, cfg, run="run-b"))     # same data, another run name
    assert code == 4033 and reason.startswith("policy-refused: lifetime_epsilon: ")
    assert "left" in reason and str(tmp_path) not in reason
    again = _train(node, cfg.replace(target_epsilon=0.9), run="run-c")   # what is left fits
    assert not again.has_error()

    from client.readiness.policy import check_budget, check_policy

    state = Path(site["ledger-dir"]).parent               # what `site doctor` / `status` read
    budget = check_budget(state, load_policy(policy))
    assert budget.status == "ok" and "budget 3" in budget.detail   # composed: 2 + 0.9 -> 2.16
    assert "spent 2.1" in budget.detail and "left 0.8" in budget.detail
    assert check_policy(policy)[0].status == "ok"


def test_a_site_policy_sent_by_the_server_is_ignored_in_deployment(site):
    permissive = "require_dp = false\nlifetime_epsilon = 1000\n"
    reply = _train(site, RunConfig(dp="off", **TINY), extra={SITE_POLICY_KEY: permissive})
    code, reason = _refusal(reply)
    assert code == 4033 and "require_dp" in reason


def test_a_simulated_site_follows_the_simulation_policy_it_was_given():
    cfg = RunConfig(dp="off", num_samples=160, sites=2, **TINY)
    simulated = {"partition-id": 0, "num-partitions": 2}
    plain = _train(simulated, cfg)
    assert not plain.has_error() and "train_loss" in plain.content["metrics"]
    strict = _train(simulated, cfg, extra={SITE_POLICY_KEY: "require_dp = true\n"})
    assert _refusal(strict)[0] == 4033


# ------------------------------------------------------------------------------ the server side

def test_the_server_records_a_policy_refusal_and_stops_asking_that_site(tmp_path):
    from flwr.app import MessageType

    from common.datasets import TaskInfo
    from server.round_log import RoundLog

    def sent(node):
        return Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)

    log = RoundLog(run_dir=tmp_path, num_rounds=3, task=TaskInfo("binary", 2, 2, 1, 28),
                   make_model=lambda: torch.nn.Linear(2, 2), global_test=None,
                   echo=lambda line: None)
    ok = Message(RecordDict({"metrics": MetricRecord({"num-examples": 1.0, "site": 0})}),
                 reply_to=sent(11))
    reason = "policy-refused: require_dp: this site trains only with sample-level DP-SGD"
    refusal = Message(Error(code=int(ReplyCode.POLICY_REFUSED), reason=reason),
                      reply_to=sent(12))
    log.record_train(1, [ok, refusal])
    assert log.refused == {12: {"round": 1, "reason": reason, "rule": "require_dp"}}
    assert log.out_of_run() == {12} and not log.exhausted
    log.record_train(2, [Message(Error(code=int(ReplyCode.POLICY_REFUSED),
                                       reason="policy-refused: lifetime_epsilon: spent"),
                                 reply_to=sent(11))])    # the last site refuses: no failure
    assert log.out_of_run() == {11, 12}
    stop = log.stop_reason(2)
    assert "require_dp" in stop and "lifetime_epsilon" in stop and "after round 2" in stop


def test_the_example_policy_the_hospital_reviews_is_the_default_policy():
    example = Path(__file__).resolve().parents[1] / "deploy" / "site-policy.example.toml"
    assert load_policy(example).digest() == DEFAULT_POLICY.digest()


# ------------------------------------------------------------------------------ the command line

def test_fedclinic_site_will_not_start_with_a_bad_policy_and_status_reads_the_ledgers(
        tmp_path, capsys):
    from fedclinic.cli import main

    bad = _policy_file(tmp_path, "require_dp = \"yes\"\n")
    data = _site_file(tmp_path / "site.npz")
    code = main(["site", "--insecure", "--data", str(data), "--state", str(tmp_path / "st"),
                 "--policy", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and f"--policy: {bad}: require_dp = 'yes': expected true or false" in err
    assert not (tmp_path / "st").exists()                # before joining: nothing started
    assert main(["site", "status", "--state", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "lifetime epsilon 24" in out and "has not trained under DP" in out


def test_doctor_shows_the_policy_in_force(tmp_path):
    from client.readiness.policy import check_policy

    permissive = _policy_file(tmp_path, "require_dp = false\ntrain_loss = \"exact\"\n")
    check, policy = check_policy(permissive)
    assert check.status == "warning" and "DP-SGD NOT required" in check.detail
    assert "require_dp = false lets a run without DP train here" in check.detail
    broken, none = check_policy(tmp_path / "nowhere.toml")
    assert broken.status == "error" and none is None and "cannot read" in broken.detail


def test_simulate_checks_its_site_policy_before_running(tmp_path, capsys):
    from fedclinic.cli import main

    bad = _policy_file(tmp_path, "lifetime = 3\n")
    code = main(["simulate", "--site-policy", str(bad), "--output-dir", str(tmp_path)])
    assert code == 2 and "--site-policy: " in capsys.readouterr().err
    assert not list(tmp_path.glob("*/summary.json"))


def test_a_run_every_site_refuses_by_policy_ends_cleanly_after_that_round(tmp_path):
    """RecordingStrategy over a grid of two sites that refuse by their policy: round 1 is
    recorded, nobody is asked to evaluate, and the run stops naming the rule."""
    from flwr.app import MessageType
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg

    from common.datasets import TaskInfo
    from server.recording_strategy import PrivacyBudgetSpent, RecordingStrategy
    from server.round_log import RoundLog

    class Refusing(Grid):
        def __init__(self) -> None:
            self.inbox, self.types = {}, []

        def set_run(self, run) -> None: ...

        @property
        def run(self):
            return None

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id, message_type, group_id=group_id)

        def get_node_ids(self):
            return [11, 12]

        def push_messages(self, messages):
            ids = []
            for msg in messages:
                mid = f"m{len(self.types)}"
                msg.metadata.__dict__["_message_id"] = mid
                self.inbox[mid] = msg
                self.types.append(msg.metadata.message_type)
                ids.append(mid)
            return ids

        def pull_messages(self, message_ids):
            reason = "policy-refused: require_dp: this site trains only with DP-SGD"
            return [Message(Error(code=int(ReplyCode.POLICY_REFUSED), reason=reason),
                            reply_to=self.inbox.pop(mid)) for mid in list(message_ids)]

        def send_and_receive(self, messages, *, timeout=None):
            raise AssertionError("fedclinic pulls replies itself")

    grid = Refusing()
    log = RoundLog(run_dir=tmp_path, num_rounds=3, task=TaskInfo("binary", 2, 2, 1, 28),
                   make_model=lambda: torch.nn.Linear(2, 2), global_test=None,
                   echo=lambda line: None)
    strategy = RecordingStrategy(FedAvg(), log)
    arrays = ArrayRecord({PACKED_KEY: pack_state(torch.nn.Linear(2, 2).state_dict())})
    with pytest.raises(PrivacyBudgetSpent, match=r"refused by the sites' privacy policy "
                                                 r"\(require_dp\).*after round 1"):
        strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3, timeout=1.0,
                       evaluate_fn=log.evaluate)
    assert grid.types == [MessageType.TRAIN, MessageType.TRAIN]     # no evaluate, no round 2
    assert [line["round"] for line in log.history] == [0, 1]
    assert set(log.refused) == {11, 12}


def test_a_simulation_policy_binds_every_simulated_site(tmp_path):
    """`fedclinic simulate --site-policy`: the TOML travels to every simulated site, which
    enforces it; a dp=off run under require_dp ends cleanly after round 1, naming the rule."""
    from simulations.simulate import simulate

    cfg = RunConfig(num_samples=80, sites=2, output_dir=str(tmp_path),
                    **{**TINY, "rounds": 3})
    outcome = simulate(cfg, echo=lambda line: None, run_name="strict",
                       site_policy="require_dp = true\n")
    assert "require_dp" in outcome.summary["stopped_early"]
    assert [line["round"] for line in outcome.history] == [0, 1]
    assert all("policy-refused: require_dp" in reason
               for reason in outcome.history[1]["failures"].values())
