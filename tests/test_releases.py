"""What leaves a site: the table and its doc, the Gaussian releases, planning with them, and the
replies themselves as Flower serializes them (no train_loss, no exact test metric under DP)."""

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from client.audit import check_outgoing
from client.policy import SIMULATION_POLICY, SitePolicy
from client.release import (Releases, SampleCount, evaluate_metrics, keep_local,
                            local_report_path, sample_count, train_metrics)
from client.site import LocalSite
from common.config import ConfigError, RunConfig
from common.datasets import load_dataset
from common.metrics import classification_metrics
from common.models import build_model
from common.packing import PACKED_KEY, pack_state
from common.partitions.loader import site_data
from common.privacy.accounting import epsilon_of_history
from common.privacy.ledger import PrivacyLedger
from common.privacy.mechanisms import (confusion_counts, derived_metrics, gaussian_entry,
                                       matrix_sensitivity, release_count, release_matrix)
from common.privacy.planner import plan, plan_from_config
from common.releases import (DP, EVALUATE, LOCAL, RELEASES, TRAIN, allowed_metric_keys,
                             render_markdown)
from common.training.prediction import evaluate
from common.training.secure_random import CsprngSource
from server.progress import progress_line
from server.strategies import comparable_evaluate_replies, equal_weights_if_mixed

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(num_samples=120, sites=2, model="cnn", width=8, batch_size=16, local_epochs=1,
            dp="sample", max_grad_norm=1.0, baselines="", rounds=2, target_epsilon=8.0)


@pytest.fixture
def task_identity(monkeypatch):
    """Messages need a run/task identity; a SuperNode or the simulation engine sets it."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


# --------------------------------------------------------------------------- the table

def test_the_committed_doc_is_the_rendered_table():
    assert (ROOT / "docs" / "what-leaves.md").read_text() == render_markdown()


def test_under_dp_no_data_dependent_exact_value_is_an_allowed_key():
    for message in (TRAIN, EVALUATE):
        dp = allowed_metric_keys(message, dp=True)
        assert dp <= allowed_metric_keys(message, dp=False)
        for r in RELEASES:
            if r.message == message and r.metric and r.when == DP and r.private == "yes":
                assert r.protection != "none (exact)", r
    train_dp = allowed_metric_keys(TRAIN, dp=True)
    assert {"epsilon", "num-examples", "count_noised", "site", "steps"} <= train_dp
    assert not {"train_loss", "train_seconds", "client_seconds", "skipped_files"} & train_dp
    assert "train_loss" in allowed_metric_keys(TRAIN, dp=False)
    eval_dp = allowed_metric_keys(EVALUATE, dp=True)
    assert {"withheld", "accuracy", "recall_0", "recall_13"} <= eval_dp
    assert not {"loss", "auc", "dice", "precision"} & eval_dp
    assert {"loss", "auc", "dice_c1"} <= allowed_metric_keys(EVALUATE, dp=False)
    assert any(r.protection == LOCAL for r in RELEASES if r.field == "train_loss")
    with pytest.raises(ValueError, match="'query'"):
        allowed_metric_keys("query", dp=True)


# --------------------------------------------------------------------------- mechanisms

def test_count_release_has_the_noise_std_asked_and_costs_one_gaussian_step():
    gen = torch.Generator().manual_seed(1234)
    draws = np.array([release_count(100, 10.0, gen)[0] for _ in range(4000)])
    assert abs(draws.mean() - 100) < 0.8                 # 5 standard errors (0.16)
    assert 9.5 < draws.std() < 10.5
    assert release_count(3, 10.0, gen)[1] == (10.0, 1.0, 1) == gaussian_entry(10.0)
    with pytest.raises(ValueError, match="count=-1"):
        release_count(-1, 10.0, gen)
    with pytest.raises(ConfigError, match="noise_multiplier=0"):
        release_count(3, 0, gen)


def test_matrix_release_noise_std_per_cell_scales_with_the_sensitivity():
    gen = torch.Generator().manual_seed(7)
    counts = np.full((200, 200), 5)
    noisy, entry = release_matrix(counts, 2.0, gen)
    assert entry == (2.0, 1.0, 1)
    assert abs((noisy - 5).std() - 2.0) < 0.05 and abs((noisy - 5).mean()) < 0.05
    scaled, _ = release_matrix(counts, 2.0, gen, sensitivity=3.0)
    assert abs((scaled - 5).std() - 6.0) < 0.15
    secure, _ = release_matrix(counts, 2.0, CsprngSource())        # the deployment source
    assert abs((secure - 5).std() - 2.0) < 0.05
    again = release_matrix(counts, 2.0, torch.Generator().manual_seed(7))[0]
    assert np.array_equal(noisy, again)                             # seeded: reproducible


def test_confusion_counts_follow_the_metric_rules_and_derive_the_same_numbers():
    rng = np.random.default_rng(0)
    for kind, k in (("binary", 2), ("multiclass", 4)):
        y = np.concatenate([np.arange(k), rng.integers(0, k, 200)])
        probs = rng.dirichlet(np.ones(k), size=len(y))
        counts = confusion_counts(kind, y, probs)
        assert counts.sum() == len(y) and matrix_sensitivity(kind, counts) == 1.0
        exact = classification_metrics(kind, y, probs)
        derived = derived_metrics(kind, counts)          # no noise: the exact metrics
        for key in ("accuracy", "balanced_accuracy", "sensitivity", "specificity"):
            assert derived[key] == pytest.approx(exact[key], abs=1e-12), (kind, key)
        assert len([key for key in derived if key.startswith("recall_")]) == k
    y = rng.integers(0, 2, (50, 3))
    counts = confusion_counts("multilabel", y, rng.random((50, 3)))
    assert counts.shape == (3, 2, 2) and matrix_sensitivity("multilabel", counts) == math.sqrt(3)


def test_derived_metrics_of_a_very_noisy_matrix_stay_in_range():
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        noisy, _ = release_matrix(np.array([[3, 1], [0, 2]]), 50.0, gen)
        for value in derived_metrics("binary", noisy).values():
            assert 0.0 <= value <= 1.0
    assert derived_metrics("multiclass", -np.ones((3, 3)))["accuracy"] == 0.0


# --------------------------------------------------------------------------- planning

EXTRA = ((10.0, 1.0, 1), (10.0, 1.0, 1))


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_calibration_with_releases_hits_the_target_like_without(target):
    alone = plan(1000, 16, local_epochs=1, rounds=3, target_epsilon=target)
    both = plan(1000, 16, local_epochs=1, rounds=3, target_epsilon=target, extra=EXTRA)
    for p in (alone, both):
        assert 0.995 * target <= p.epsilon <= target
    assert both.extra == EXTRA and alone.extra == ()
    assert both.noise_multiplier > alone.noise_multiplier     # the releases take their share
    history = [(both.noise_multiplier, both.sample_rate, both.total_steps), *EXTRA]
    assert both.epsilon == epsilon_of_history(history, both.delta, "rdp")
    assert both.epsilon_after(0) == 0.0 and both.epsilon_after(3) == both.epsilon
    ledger = PrivacyLedger()                 # what the site's ledger holds after the run
    ledger.record(both.noise_multiplier, both.sample_rate, both.total_steps)
    for entry in EXTRA:
        ledger.record(*entry)
    assert ledger.epsilon(both.delta) == pytest.approx(both.epsilon, rel=1e-9)


def test_fixed_sigma_plan_reports_epsilon_with_its_releases():
    p = plan(1000, 16, 2, 5, noise_multiplier=1.0, delta=1e-4, extra=EXTRA)
    bare = plan(1000, 16, 2, 5, noise_multiplier=1.0, delta=1e-4)
    assert p.epsilon > bare.epsilon
    cfg = RunConfig(dp="sample", batch_size=16, local_epochs=2, rounds=5, target_epsilon=2.0)
    assert plan_from_config(cfg, 1000, extra=EXTRA).epsilon <= 2.0


def test_releases_that_alone_spend_the_target_are_refused():
    with pytest.raises(ConfigError, match="fixed releases .* alone spend"):
        plan(1000, 16, 1, 3, target_epsilon=0.5, extra=((1.0, 1.0, 5),))


# --------------------------------------------------------------------------- count and reports

class FakeLedger:
    """Enough of client.ledger.SiteLedger for releases: entries, released values, run history."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    @property
    def entries(self):
        from types import SimpleNamespace
        return tuple(SimpleNamespace(**row) for row in self.rows)

    def append(self, **row) -> None:
        self.rows.append({"run": row.pop("run_key"), **row})

    def released(self, run_key, kind):
        values = [r["value"] for r in self.rows if r["run"] == run_key and r["kind"] == kind
                  and r["value"] is not None]
        return values[-1] if values else None

    def released_values(self, run_key, kind):
        vectors = [r["values"] for r in self.rows if r["run"] == run_key and r["kind"] == kind
                   and r.get("values") is not None]
        return vectors[-1] if vectors else None

    def _ledger(self, rows) -> PrivacyLedger:
        ledger = PrivacyLedger()
        for r in rows:
            ledger.record(r["noise_multiplier"], r["sample_rate"], r["steps"])
        return ledger

    def run(self, run_key):
        return self._ledger([r for r in self.rows if r["run"] == run_key])

    def lifetime(self):
        return self._ledger(self.rows)


def _releases(policy: SitePolicy, ledger=None, server_round=2, report=None, dp=True):
    return Releases(policy=policy, dp=dp, run_key="run-a", server_round=server_round,
                    ledger=ledger, delta=1e-5, seed=11, report=report)


def test_noised_count_is_charged_once_per_run_and_reused():
    ledger = FakeLedger()
    rel = _releases(SitePolicy(), ledger)
    first = sample_count(rel, 500)
    assert first.noised and first.value >= 1 and first.value != 500
    assert [(r["kind"], r["noise_multiplier"], r["steps"]) for r in ledger.rows] == [
        ("count", 10.0, 1)]
    assert sample_count(_releases(SitePolicy(), ledger, server_round=3), 500) == first
    assert len(ledger.rows) == 1
    assert sample_count(_releases(SitePolicy(sample_count="equal"), ledger), 500) == \
        SampleCount(1.0, False)
    plain = _releases(SIMULATION_POLICY, dp=False)
    assert sample_count(plain, 500) == SampleCount(500.0, False)


def test_the_local_report_is_private_and_only_in_deployment(tmp_path):
    state = tmp_path / "state"
    assert local_report_path({"ledger-dir": str(state / "ledgers"), "data-path": "x"}) == \
        state / "local-report.jsonl"
    assert local_report_path({"ledger-dir": str(state), "partition-id": 0}) is None
    rel = _releases(SitePolicy(), report=state / "local-report.jsonl")
    keep_local(rel, "train", {"train_loss": 0.25}, {"num-examples": 1.0})
    keep_local(rel, "train", {"train_loss": 0.125}, {"num-examples": 1.0})
    path = state / "local-report.jsonl"
    assert path.stat().st_mode & 0o777 == 0o600
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["exact"]["train_loss"] for r in rows] == [0.25, 0.125]
    assert rows[0]["run"] == "run-a" and rows[0]["round"] == 2


# --------------------------------------------------------------------------- replies on the wire

def _request(cfg: RunConfig, kind: str, server_round: int, weights: torch.Tensor,
             **extra) -> Message:
    config = ConfigRecord({**cfg.to_dict(), "server-round": server_round,
                           "fedclinic-run": "run-a", **extra})
    content = RecordDict({"config": config, "arrays": ArrayRecord({PACKED_KEY: weights})})
    return Message(content, dst_node_id=1, message_type=kind)


def _setup(cfg: RunConfig):
    task = load_dataset(cfg).task
    model = build_model(cfg.model, spatial_dims=task.spatial_dims, in_channels=task.channels,
                        num_classes=task.num_classes, norm=cfg.norm, width=cfg.width)
    part = site_data(cfg, 0)
    site = LocalSite(part.site, part.train, part.test, task)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                  state=RecordDict(), run_config={})
    return model, site, ctx


def _serialized(reply: Message) -> tuple[bytes, dict[str, float]]:
    """Every byte Flower ships for the reply's content, and its metrics read back from them."""
    objects = get_all_nested_objects(reply.content)
    wire = b"".join(obj.deflate() for obj in objects.values())
    metrics = {}
    for obj in objects.values():
        if isinstance(obj, MetricRecord):
            back = MetricRecord.inflate(obj.deflate())
            metrics.update(dict(back.items()))
    return wire, metrics


def _assert_absent(wire: bytes, sent: dict[str, float], values: dict[str, float]) -> None:
    """No exact value appears in the shipped bytes (as the double Flower serializes a float)
    nor among the metrics read back from them (an int travels as a varint); 0 and 1 are left
    out (a public constant may equal them)."""
    for key, value in values.items():
        if value == value and value not in (0.0, 1.0):
            assert struct.pack("<d", float(value)) not in wire, key
            assert float(value) not in {float(v) for v in sent.values()}, key


def test_dp_train_reply_on_the_wire_has_no_loss_and_no_exact_count(task_identity):
    from client.app import train

    cfg = RunConfig(**BASE)
    model, site, ctx = _setup(cfg)
    reply = train(_request(cfg, "train", 1, pack_state(model.state_dict())), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    wire, metrics = _serialized(reply)
    assert b"train_loss" not in wire and b"seconds" not in wire and b"skipped" not in wire
    assert set(metrics) <= allowed_metric_keys(TRAIN, dp=True)
    assert metrics["count_noised"] == 1.0
    _assert_absent(wire, metrics, {"n": len(site.train)})
    assert check_outgoing(reply, _request(cfg, "train", 1, torch.zeros(1))) == ""


def test_dp_evaluate_reply_on_the_wire_has_no_exact_test_metric(task_identity):
    from client.app import evaluate_site

    cfg = RunConfig(**BASE)
    model, site, ctx = _setup(cfg)
    weights = pack_state(model.state_dict())
    exact = evaluate(model, site.test, site.task, batch_size=128)
    local = SitePolicy(test_metrics="local", require_dp=False, secure_randomness=False)
    reply = evaluate_site(_request(cfg, "evaluate", 2, weights,
                                   **{"site-policy": local.to_toml()}), ctx)
    wire, metrics = _serialized(reply)
    assert metrics == {"site": 0, "num-examples": 1.0, "dp-weight": 1.0, "withheld": 1.0}
    _assert_absent(wire, metrics, exact)
    noised = SitePolicy(test_metrics="noised", require_dp=False, secure_randomness=False)
    toml = noised.to_toml()
    early = evaluate_site(_request(cfg, "evaluate", 1, weights, **{"site-policy": toml}), ctx)
    assert _serialized(early)[1]["withheld"] == 1.0          # not the run's last round
    last = evaluate_site(_request(cfg, "evaluate", 2, weights, **{"site-policy": toml}), ctx)
    wire, metrics = _serialized(last)
    assert metrics["withheld"] == 0.0 and 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics) <= allowed_metric_keys(EVALUATE, dp=True)
    assert "loss" not in metrics and "auc" not in metrics
    _assert_absent(wire, metrics, exact)
    assert metrics["num-examples"] == 1.0
    again = evaluate_site(_request(cfg, "evaluate", 2, weights, **{"site-policy": toml}), ctx)
    assert _serialized(again)[1]["withheld"] == 1.0          # the run's one release is made
    assert check_outgoing(last, _request(cfg, "evaluate", 2, torch.zeros(1))) == ""


def test_noised_metrics_are_charged_and_never_past_the_run_budget():
    cfg = RunConfig(**BASE)
    model, site, _ = _setup(cfg)
    policy = SitePolicy(test_metrics="noised", secure_randomness=False)
    ledger = FakeLedger()
    metrics = evaluate_metrics(_releases(policy, ledger), model, site, cfg)
    assert metrics["withheld"] == 0.0
    assert [(r["kind"], r["noise_multiplier"], r["sample_rate"], r["steps"])
            for r in ledger.rows] == [("metrics", 10.0, 1.0, 1)]
    spent = FakeLedger()
    spent.append(run_key="run-a", server_round=1, kind="dp-sgd", noise_multiplier=0.6,
                 sample_rate=0.2, steps=200, delta=1e-5, value=None)
    assert spent.run("run-a").epsilon(1e-5) > cfg.target_epsilon
    metrics = evaluate_metrics(_releases(policy, spent), model, site, cfg)
    assert metrics == {"site": 0, "num-examples": 1.0, "dp-weight": 1.0, "withheld": 1.0}
    assert len(spent.rows) == 1                               # nothing charged


def test_dp_train_metrics_keep_the_exact_values_local(tmp_path):
    from common.training.dp_local import DPTrainResult

    cfg = RunConfig(**BASE)
    _, site, _ = _setup(cfg)
    result = DPTrainResult(loss=0.6931, num_samples=len(site.train), steps=4, seconds=1.5,
                           noise_multiplier=1.1, sample_rate=0.25, grad_sample_mode="hooks")
    report = tmp_path / "local-report.jsonl"
    rel = _releases(SitePolicy(), FakeLedger(), report=report)
    metrics = train_metrics(rel, result, site, SampleCount(57.0, True), proximal_mu=0.0,
                            client_seconds=2.5)
    assert not {"train_loss", "train_seconds", "client_seconds", "skipped_files"} & set(metrics)
    assert metrics["num-examples"] == 57.0 and metrics["count_noised"] == 1.0
    kept = json.loads(report.read_text())["exact"]
    assert kept["train_loss"] == 0.6931 and kept["num-examples"] == len(site.train)
    plain = train_metrics(_releases(SIMULATION_POLICY, dp=False), result, site,
                          SampleCount(float(len(site.train)), False), proximal_mu=0.0,
                          client_seconds=2.5)
    assert plain["train_loss"] == 0.6931 and plain["client_seconds"] == 2.5


# --------------------------------------------------------------------------- the executor's check

def test_check_outgoing_refuses_a_key_the_table_does_not_list(task_identity):
    cfg = RunConfig(**BASE)
    dp_request = _request(cfg, "train", 1, torch.zeros(1))
    plain_request = _request(cfg.replace(dp="off"), "train", 1, torch.zeros(1))

    def reply(request: Message, metrics: dict) -> Message:
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=request)

    leaky = {"num-examples": 1.0, "train_loss": 0.3}
    assert "train_loss" in check_outgoing(reply(dp_request, leaky), dp_request)
    assert check_outgoing(reply(plain_request, leaky), plain_request) == ""
    odd = {"num-examples": 1.0, "patient_age_mean": 61.0}
    assert "patient_age_mean" in check_outgoing(reply(plain_request, odd), plain_request)
    evaluate_request = _request(cfg, "evaluate", 1, torch.zeros(1))
    assert "loss" in check_outgoing(reply(evaluate_request, {"loss": 0.4}), evaluate_request)


# --------------------------------------------------------------------------- the server copes

def _train_reply(node: int, count: float, noised: float) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type="train")
    metrics = MetricRecord({"num-examples": count, "count_noised": noised, "site": node})
    return Message(RecordDict({"arrays": ArrayRecord([np.full(2, float(node), np.float32)]),
                               "metrics": metrics}), reply_to=sent)


def _evaluate_reply(node: int, metrics: dict) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type="evaluate")
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=sent)


def test_server_weights_equally_when_sites_mix_noised_and_equal_counts(task_identity):
    from server.strategies import build_strategy

    replies = [_train_reply(1, 300.0, 1.0), _train_reply(3, 1.0, 0.0)]
    assert equal_weights_if_mixed(replies, "num-examples")
    assert [r.content["metrics"]["num-examples"] for r in replies] == [1.0, 1.0]
    arrays, _ = build_strategy(RunConfig(sites=2), 2).aggregate_train(1, replies)
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 2.0)      # (1 + 3) / 2
    same = [_train_reply(1, 300.0, 1.0), _train_reply(3, 100.0, 1.0)]
    assert not equal_weights_if_mixed(same, "num-examples")
    from flwr.serverapp.strategy import FedAvg       # Flower's client-level DP wrapper needs it
    client_dp = build_strategy(RunConfig(sites=2, dp="client"), 2)
    assert type(client_dp).aggregate_train is FedAvg.aggregate_train


def test_server_aggregates_only_comparable_evaluate_replies(task_identity):
    from server.strategies import build_strategy

    kept = {"site": 1, "num-examples": 1.0, "dp-weight": 1.0, "withheld": 1.0}
    noised = {"site": 2, "num-examples": 1.0, "dp-weight": 1.0, "withheld": 0.0,
              "accuracy": 0.75}
    replies = [_evaluate_reply(1, kept), _evaluate_reply(2, noised),
               _evaluate_reply(3, {**noised, "site": 3, "accuracy": 0.25})]
    assert len(comparable_evaluate_replies(replies)) == 2
    aggregated = build_strategy(RunConfig(sites=3), 3).aggregate_evaluate(1, replies)
    assert aggregated["accuracy"] == pytest.approx(0.5)
    assert build_strategy(RunConfig(sites=3), 3).aggregate_evaluate(
        1, [_evaluate_reply(1, kept)]) is None


def test_progress_line_without_train_loss_or_site_metrics():
    line = {"round": 2, "seconds": 3.5, "global": {"accuracy": 0.75, "auc": 0.8},
            "sites": {"0": {"train": {"epsilon": 1.5}, "test": {"withheld": 1.0}},
                      "1": {"train": {"epsilon": 2.0}, "test": {"withheld": 1.0}}},
            "failures": {}}
    assert progress_line(line, 5) == ("[round 2/5] global acc 0.750 auc 0.800 | test metrics "
                                      "kept local at 2 sites | epsilon max 2.000 | 3.5s")


def test_class_counts_are_the_count_release_itself_one_charge_summing_to_the_weight(
        task_identity):
    """Single-label classification: the noised count release is the per-class vector (L2
    sensitivity 1, like the total), charged once; the weight is its sum; later rounds re-send
    the vector the ledger kept, never a new draw."""
    from client.release import train_class_counts
    from common.class_prior import class_counts_of

    ledger = FakeLedger()
    first = sample_count(_releases(SitePolicy(), ledger), 500, np.array([380, 120]))
    assert first.noised and len(first.classes) == 2
    assert first.classes != (380.0, 120.0) and all(c >= 0 for c in first.classes)
    assert abs(sum(first.classes) - first.value) <= 1.0          # rounding of each part
    assert [(r["kind"], r["noise_multiplier"], r["steps"]) for r in ledger.rows] == [
        ("count", 10.0, 1)]                                      # the total's single charge
    again = sample_count(_releases(SitePolicy(), ledger, server_round=3), 500,
                         np.array([380, 120]))
    assert again == first and len(ledger.rows) == 1     # the one release, re-sent
    with pytest.raises(ValueError, match="do not sum"):
        sample_count(_releases(SitePolicy(), FakeLedger()), 500, np.array([1, 2]))
    assert sample_count(_releases(SIMULATION_POLICY, dp=False), 500,
                        np.array([380, 120])).classes == ()      # no DP: the exact n only

    cfg = RunConfig(**BASE)
    part = site_data(cfg, 0)
    task = load_dataset(cfg).task
    site = LocalSite(0, part.train, part.test, task)
    counts = train_class_counts(site)
    assert counts.sum() == len(part.train) and len(counts) == task.num_classes
    rel = _releases(SitePolicy(), FakeLedger())
    count = sample_count(rel, len(part.train), counts)
    result = type("R", (), {"loss": 0.5, "steps": 3, "seconds": 1.0})()
    metrics = train_metrics(rel, result, site, count, proximal_mu=0.0, client_seconds=1.0)
    assert set(metrics) <= allowed_metric_keys(TRAIN, dp=True)   # check_outgoing's table
    assert [k for k in metrics if k.startswith("train_class_count_")] == [
        f"train_class_count_{c}" for c in range(task.num_classes)]
    assert tuple(class_counts_of(task.num_classes, metrics)) == count.classes
    multilabel = LocalSite(0, part.train, part.test,
                           type(task)("multilabel", 3, 1, 1, 28))
    assert train_class_counts(multilabel) is None               # one case, several counts
