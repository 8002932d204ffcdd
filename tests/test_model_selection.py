"""Model selection without peeking: the sites' validation statistics choose the global model
(sample-weighted validation loss, else AUC from noised histograms), patience stops the run,
the baselines select on their val splits the same way, under DP with the simulation policy
nothing is selected (and the report says so), and no exact validation value leaves a DP site.
The test splits never choose anything: the tests assert on what is passed where."""

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

import client.release as release
import simulations.baselines as baselines
from client.policy import SIMULATION_POLICY, SitePolicy
from client.release import Releases, evaluate_metrics, exact_validation
from client.site import LocalSite
from common import rundir
from common.config import RunConfig
from common.datasets import Split, TaskInfo, load_dataset
from common.models import build_model
from common.operating_point import HIST_BINS, NOISED_HIST_BINS, THRESHOLD, coarsened
from common.packing import PACKED_KEY, pack_state
from common.partitions.federation import build_federation
from common.partitions.loader import site_data
from common.releases import EVALUATE, allowed_metric_keys
from common.report.operating import operating_section
from common.validation_stats import (VAL_EXAMPLES, VAL_LOSS, VAL_NOISE_SD, counts_metrics,
                                     counts_of, hist_key)
from fedclinic.cli import main
from server.model_selection import (BEST_MODEL, NOT_SENT, EarlyStopped, ModelSelection)
from server.round_log import RoundLog

BINARY = TaskInfo("binary", 2, 2, 1, 28, class_names=("normal", "pneumonia"))


def breast_npz(path: Path, sizes=(160, 40, 60), seed: int = 0) -> Path:
    """A tiny learnable file named after breastmnist (label 0 'malignant': a bright blob)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        labels = rng.integers(0, 2, (n, 1)).astype(np.uint8)
        images = rng.integers(0, 90, (n, 28, 28)).astype(np.uint8)
        images[labels[:, 0] == 0, 8:20, 8:20] += 120
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez_compressed(path, **arrays)
    return path


def _site(val_loss: float, n: float, test_loss: float = 0.5) -> dict:
    return {"test": {"loss": test_loss, "accuracy": 0.5, VAL_LOSS: val_loss, VAL_EXAMPLES: n}}


# --------------------------------------------------------------------------- the server

def test_best_round_is_the_lowest_sample_weighted_val_loss_not_a_test_score():
    """Round 1: 0.9 x 10 + 0.3 x 90 -> 0.36; round 2: 0.2/0.5 -> 0.47 (unweighted 0.35, the
    lowest); round 3: 0.8/0.35 -> 0.395. The sites' test loss favours round 3 throughout."""
    history = [
        {"round": 0, "sites": {}},
        {"round": 1, "sites": {"0": _site(0.9, 10, 0.9), "1": _site(0.3, 90, 0.9)}},
        {"round": 2, "sites": {"0": _site(0.2, 10, 0.8), "1": _site(0.5, 90, 0.8)}},
        {"round": 3, "sites": {"0": _site(0.8, 10, 0.1), "1": _site(0.35, 90, 0.1)}},
    ]
    selection = ModelSelection(BINARY)
    selection.replay(history)
    assert selection.criterion == "val_loss" and selection.best_round == 1
    assert selection.scores == pytest.approx({1: 0.36, 2: 0.47, 3: 0.395})
    outcome = selection.outcome(3)
    assert outcome.selected and outcome.chosen == 1 and "round 1 of 3" in outcome.describe()


def test_noised_counts_select_by_validation_auc():
    h = np.zeros((2, HIST_BINS))
    good, bad = h.copy(), h.copy()
    good[0, 5], good[1, 45] = 10.3, 9.6               # separable: AUC 1
    bad[0, 30], bad[1, 20] = 9.8, 10.1                # reversed: AUC 0
    selection = ModelSelection(BINARY)
    assert selection.observe(4, {"0": {"test": {"withheld": 0.0, **counts_metrics("binary", bad)}}})
    assert selection.observe(5, {"0": {"test": counts_metrics("binary", good)}})
    assert selection.criterion == "val_auc" and selection.best_round == 5 and selection.noised
    point = selection.operating_point()
    assert point.kind == THRESHOLD and 5 / 50 < point.threshold <= 45 / 50


def _log(tmp_path: Path, patience: int, lines: list) -> RoundLog:
    log = RoundLog(run_dir=tmp_path, num_rounds=6, task=BINARY,
                   make_model=lambda: torch.nn.Linear(2, 2), global_test=None,
                   echo=lines.append)
    log.selection = ModelSelection(BINARY, patience=patience)
    return log


def _round(log: RoundLog, server_round: int, val_loss: float) -> None:
    weights = torch.nn.Linear(2, 2).state_dict()
    weights["bias"] = torch.full((2,), float(server_round))     # tells the rounds apart
    log.test = {0: {"accuracy": 0.5, VAL_LOSS: val_loss, VAL_EXAMPLES: 20.0}}
    log.evaluate(server_round, ArrayRecord({PACKED_KEY: pack_state(weights)}))


def test_patience_stops_the_run_and_best_model_is_the_best_round(tmp_path):
    lines: list[str] = []
    log = _log(tmp_path, patience=2, lines=lines)
    _round(log, 1, 0.7)
    _round(log, 2, 0.5)                                  # best
    _round(log, 3, 0.6)
    with pytest.raises(EarlyStopped, match=r"2 rounds without a better .*round 2.*patience 2"):
        _round(log, 4, 0.55)
    best = torch.load(tmp_path / BEST_MODEL, weights_only=False)
    assert best["round"] == 2 and float(best["state_dict"]["bias"][0]) == 2.0
    assert best["selection"] == {"criterion": "val_loss", "value": 0.5, "best_round": 2}
    written = rundir.read_jsonl(tmp_path / rundir.METRICS)
    assert [line["validation"]["best_round"] for line in written] == [1, 2, 2, 2]
    assert "val loss 0.550 (best r2)" in lines[-1]
    off = _log(tmp_path / "off", patience=0, lines=[])
    for r, v in enumerate((0.5, 0.6, 0.7, 0.8, 0.9, 1.0), start=1):
        _round(off, r, v)                                # patience 0: never stops
    assert off.selection.best_round == 1


# --------------------------------------------------------------------------- the site

def _local_site(cfg: RunConfig) -> tuple[torch.nn.Module, LocalSite]:
    task = load_dataset(cfg).task
    model = build_model(cfg.model, spatial_dims=task.spatial_dims, in_channels=task.channels,
                        num_classes=task.num_classes, norm=cfg.norm, width=cfg.width)
    part = site_data(cfg, 0)
    return model, LocalSite(part.site, part.train, part.test, task, val=part.val)


@pytest.fixture
def breast_cfg(tmp_path) -> RunConfig:
    path = breast_npz(tmp_path / "breastmnist.npz")
    return RunConfig(dataset="medmnist", data_path=str(path), sites=2, model="cnn", width=4,
                     batch_size=16, local_epochs=1, rounds=2, baselines="")


def test_the_site_scores_only_its_val_split_for_selection(breast_cfg, monkeypatch):
    model, site = _local_site(breast_cfg)
    seen: list[int] = []
    real = release.classification_logits

    def spy(model, images, task, batch_size):
        seen.append(id(images))
        return real(model, images, task, batch_size)

    monkeypatch.setattr(release, "classification_logits", spy)
    stats = exact_validation(model, site, 128)
    assert seen == [id(site.val.images)]                 # the val split, and only it
    assert stats[VAL_EXAMPLES] == len(site.val) != len(site.test)
    hist = sum(v for k, v in stats.items() if k.startswith("val_hist_"))
    assert hist == len(site.val)
    rel = Releases(policy=SIMULATION_POLICY, dp=False, run_key="r", server_round=1)
    reply = evaluate_metrics(rel, model, site, breast_cfg)
    assert reply[VAL_EXAMPLES] == len(site.val) and reply["num-examples"] == len(site.test)
    assert set(reply) <= allowed_metric_keys(EVALUATE, dp=False)


@pytest.fixture
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _evaluate(cfg: RunConfig, model, server_round: int, **extra) -> Message:
    from client.app import evaluate_site

    config = ConfigRecord({**cfg.to_dict(), "server-round": server_round,
                           "fedclinic-run": "run-a", **extra})
    content = RecordDict({"config": config,
                          "arrays": ArrayRecord({PACKED_KEY: pack_state(model.state_dict())})})
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                  state=RecordDict(), run_config={})
    return evaluate_site(Message(content, dst_node_id=1, message_type="evaluate"), ctx)


def _wire(reply: Message) -> tuple[bytes, dict]:
    objects = get_all_nested_objects(reply.content)
    metrics = {}
    for obj in objects.values():
        if isinstance(obj, MetricRecord):
            metrics.update(dict(MetricRecord.inflate(obj.deflate()).items()))
    return b"".join(o.deflate() for o in objects.values()), metrics


LOCAL_POLICY = SitePolicy(test_metrics="local", require_dp=False, secure_randomness=False)


def test_under_dp_a_local_policy_keeps_validation_local_and_selection_is_skipped(
        breast_cfg, task_identity):
    cfg = breast_cfg.replace(dp="sample")
    model, site = _local_site(cfg)
    exact = exact_validation(model, site, 128)
    wire, metrics = _wire(_evaluate(cfg, model, 2, **{"site-policy": LOCAL_POLICY.to_toml()}))
    assert metrics == {"site": 0, "num-examples": 1.0, "dp-weight": 1.0, "withheld": 1.0}
    assert b"val_" not in wire
    assert struct.pack("<d", exact[VAL_LOSS]) not in wire
    selection = ModelSelection(BINARY)
    assert not selection.observe(2, {"0": {"test": metrics}})
    outcome = selection.outcome(2)
    assert not outcome.selected and outcome.skipped == NOT_SENT
    assert outcome.operating_point.kind == "argmax"
    text = "\n".join(operating_section(outcome, {}, None, {}))
    assert "the last model (round 2): no selection, no site sent validation statistics" in text


def test_a_dp_evaluate_reply_carries_no_exact_validation_value(breast_cfg, task_identity):
    """A noised policy: in the run's last round the val histograms leave noised, in the same
    charged release as the test confusion matrix; no exact count and no val loss leaves."""
    cfg = breast_cfg.replace(dp="sample")
    model, site = _local_site(cfg)
    exact = exact_validation(model, site, 128)
    policy = SitePolicy(test_metrics="noised", require_dp=False, secure_randomness=False)
    early = _wire(_evaluate(cfg, model, 1, **{"site-policy": policy.to_toml()}))[1]
    assert early["withheld"] == 1.0 and not any(k.startswith("val_") for k in early)
    wire, metrics = _wire(_evaluate(cfg, model, 2, **{"site-policy": policy.to_toml()}))
    assert metrics["withheld"] == 0.0
    assert set(metrics) <= allowed_metric_keys(EVALUATE, dp=True)
    assert VAL_LOSS not in metrics and VAL_EXAMPLES not in metrics
    assert metrics[VAL_NOISE_SD] == policy.metric_noise_multiplier       # public: the policy's
    assert struct.pack("<d", exact[VAL_LOSS]) not in wire
    hists = {k: v for k, v in metrics.items() if k.startswith("val_hist_")}
    assert len(hists) == 2 * NOISED_HIST_BINS                    # fewer, fuller bins under noise
    coarse = coarsened(counts_of("binary", 2, exact), NOISED_HIST_BINS)
    assert all(v != coarse[y, b] for (y, b), v in
               ((tuple(map(int, k.split("_")[2:])), v) for k, v in hists.items()))  # all noised
    selection = ModelSelection(BINARY)
    assert selection.observe(2, {"0": {"test": metrics}})
    assert selection.criterion == "val_auc" and selection.noised


def test_a_noised_release_is_one_charge_for_test_and_validation(breast_cfg):
    from tests.test_releases import FakeLedger

    cfg = breast_cfg.replace(dp="sample")
    model, site = _local_site(cfg)
    ledger = FakeLedger()
    policy = SitePolicy(test_metrics="noised", secure_randomness=False)
    rel = Releases(policy=policy, dp=True, run_key="run-a", server_round=2, ledger=ledger,
                   delta=1e-5, seed=3)
    metrics = evaluate_metrics(rel, model, site, cfg)
    assert hist_key(1, NOISED_HIST_BINS - 1) in metrics and "accuracy" in metrics
    assert hist_key(1, NOISED_HIST_BINS) not in metrics
    assert [(r["kind"], r["noise_multiplier"], r["steps"]) for r in ledger.rows] == [
        ("metrics", 10.0, 1)]


# --------------------------------------------------------------------------- the baselines

def test_baselines_select_their_round_on_val_splits_and_show_progress(monkeypatch):
    cfg = RunConfig(num_samples=160, sites=2, rounds=3, local_epochs=1, model="cnn", width=4,
                    batch_size=16, patience=0, baselines="local,pooled")
    fed = build_federation(load_dataset(cfg), cfg)
    vals = [s.val for s in fed.sites]
    tests = [s.test for s in fed.sites] + [fed.global_test]
    scored, counted = [], []
    real_loss, real_counts = baselines._val_loss, baselines.validation_counts

    def loss_spy(model, val, fed_):
        scored.append(val)
        return real_loss(model, val, fed_)

    def counts_spy(kind, labels, probs):
        counted.append(np.asarray(labels))
        return real_counts(kind, labels, probs)

    monkeypatch.setattr(baselines, "_val_loss", loss_spy)
    monkeypatch.setattr(baselines, "validation_counts", counts_spy)
    lines: list[str] = []
    pooled = baselines.run_pooled(cfg, fed, lines.append)
    pooled_val = Split.concat(vals)
    assert len(scored) == 3 and all(np.array_equal(v.images, pooled_val.images) for v in scored)
    assert len(counted) == 1 and np.array_equal(counted[0], pooled_val.labels)
    for split in scored:
        assert not any(len(split) == len(t) and np.array_equal(split.images, t.images)
                       for t in tests)
    assert [line.split(":")[0] for line in lines[:3]] == [
        f"[baseline pooled] round {r}/3" for r in (1, 2, 3)]
    assert all("val loss" in line for line in lines[:3])
    sel = pooled.selection
    assert sel.criterion == "val_loss" and sel.chosen == min(sel.scores, key=sel.scores.get)
    assert sel.operating_point.kind == "logit-adjustment"
    assert set(pooled.at_operating_point) >= {"auc", "balanced_accuracy", "sensitivity"}
    scored.clear()
    local = baselines.run_local(cfg, fed, lines.append)
    assert [len(v) for v in scored] == [len(vals[0])] * 3 + [len(vals[1])] * 3
    assert sorted(local.site_selection) == ["0", "1"]
    assert set(local.to_json()["selection"]["sites"]) == {"0", "1"}


# --------------------------------------------------------------------------- end to end

def test_simulate_keeps_the_best_model_and_reports_the_operating_point(tmp_path):
    """A tiny breastmnist-named file (label 0 is the finding) through `fedclinic simulate`."""
    path = breast_npz(tmp_path / "breastmnist.npz")
    argv = ["simulate", "--output-dir", str(tmp_path / "runs"), "--run-name", "sel",
            "--dataset", "medmnist", "--data-path", str(path), "--sites", "2", "--rounds", "2",
            "--local-epochs", "1", "--model", "cnn", "--width", "8", "--batch-size", "16",
            "--optimizer", "adam", "--lr", "0.003", "--target-sensitivity", "0.9"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "sel"
    summary = json.loads((run / rundir.SUMMARY).read_text())
    sel = summary["selection"]
    assert sel["criterion"] == "val_loss" and sel["chosen_round"] in (1, 2)
    best = torch.load(run / BEST_MODEL, weights_only=False)
    assert best["round"] == sel["chosen_round"] and (run / rundir.FINAL_MODEL).exists()
    point = sel["operating_point"]
    assert point["positive"]["index"] == 0 and point["positive"]["name"] == "malignant"
    assert point["kind"] in ("threshold", "argmax")
    ops = summary["operating_point"]
    assert sorted(ops) == ["federated", "local", "pooled"]
    for model in ops.values():
        glob = model["global"]
        assert {"auc", "balanced_accuracy", "sensitivity", "specificity", "threshold"} <= set(glob)
    assert ops["federated"]["global"]["threshold"] == pytest.approx(point["positive_threshold"])
    assert sorted(ops["federated"]["sites"]) == ["0", "1"]
    assert not any(k.startswith("val_") for k in summary["federated"]["sites"]["0"])
    report = (run / rundir.REPORT).read_text()
    assert "## Model selection and operating point (validation data only)" in report
    assert "**malignant** (label 0) as the positive class" in report
    assert "| federated | global test |" in report and "| pooled | global test |" in report
    assert "val_hist_0_<b>" in report                    # the coverage table, one row a family


def test_the_report_says_why_nothing_was_selected_under_dp():
    from common.report.markdown import report_markdown
    from common.report.record import RunRecord
    from simulations.simulate import with_selection_note

    lines = [{"round": r, "global": {"accuracy": 0.5}, "sites": {"0": {"train": {},
              "test": {"withheld": 1.0}}}, "failures": {}, "seconds": 1.0} for r in (0, 1, 2)]
    record = RunRecord(config=RunConfig(dp="sample", baselines=""), history=lines,
                       wall_seconds=1.0, selection=ModelSelection(BINARY).outcome(2))
    noted = with_selection_note(record, LOCAL_POLICY.to_toml())
    assert "simulate --site-policy: test_metrics = 'local'" in noted.selection.skipped
    report = report_markdown(noted, "", partition=False)
    assert "federated: the last model (round 2): no selection, under DP the sites' policy" in \
        report
    assert "argmax of the probabilities (threshold 0.5)" in report
    noised = SitePolicy(test_metrics="noised", require_dp=False).to_toml()
    assert with_selection_note(record, noised).selection.skipped == NOT_SENT
    assert with_selection_note(record, "").selection.skipped == NOT_SENT   # simulation: noised


def test_under_dp_without_validation_the_threshold_is_the_sites_noised_class_prior():
    """The sites' train replies carry their noised class counts (each site's first copy
    counts). No validation statistics: nothing is selected, and the threshold is the summed
    prior (Laplace-smoothed) - not 0.5, which calls the majority class of an imbalanced set."""
    from common.operating_point import positive_class

    selection = ModelSelection(BINARY, positive=positive_class(BINARY))
    withheld = {"site": 0, "num-examples": 1.0, "dp-weight": 1.0, "withheld": 1.0}
    r1 = {"0": {"train": {"train_class_count_0": 40.0, "train_class_count_1": 160.0},
                "test": withheld},
          "1": {"train": {"train_class_count_0": 59.0, "train_class_count_1": 139.0},
                "test": withheld}}
    r2 = {"0": {"train": {"num-examples": 200.0}, "test": withheld},
          "1": {"train": {"train_class_count_0": 500.0, "train_class_count_1": 0.0},
                "test": withheld}}                       # a later copy changes nothing
    assert not selection.observe(1, r1) and not selection.observe(2, r2)
    outcome = selection.outcome(2)
    assert not outcome.selected and outcome.skipped == NOT_SENT
    point = outcome.operating_point
    assert point.kind == THRESHOLD and point.threshold == pytest.approx(300 / 400)
    assert "noised counts of 2 site(s)" in point.rule
    text = "\n".join(operating_section(outcome, {}, None, {}))
    assert "P(pneumonia) >= 0.75" in text and "class prior of 398 training cases" in text


@pytest.mark.parametrize("loss,policy", [("ce", "local"), ("logit_adjusted", "local"),
                                         ("logit_adjusted", "simulation"),
                                         ("logit_adjusted", "sigma1")])
def test_a_dp_simulation_sets_its_operating_point_from_noised_statistics(tmp_path, loss, policy):
    """Under DP the simulation policy releases the validation histograms noised in the last
    round (sigma 10): on 20 val cases per site they are mostly noise, and the threshold is the
    sites' noised class prior, as when a policy keeps them local (for CE and the logit-adjusted
    loss alike). At sigma 1 ("sigma1") they stand out of the noise and Youden's J on them sets
    it. Every release fits the run's epsilon."""
    path = breast_npz(tmp_path / "breastmnist.npz", sizes=(200, 40, 60))
    argv = ["simulate", "--output-dir", str(tmp_path / "runs"), "--run-name", "dp",
            "--dataset", "medmnist", "--data-path", str(path), "--sites", "2", "--rounds", "1",
            "--local-epochs", "1", "--model", "cnn", "--width", "4", "--batch-size", "16",
            "--dp", "sample", "--target-epsilon", "8", "--baselines", "pooled", "--loss", loss]
    if policy in ("local", "sigma1"):
        chosen = LOCAL_POLICY if policy == "local" else dataclasses.replace(
            LOCAL_POLICY, test_metrics="noised", metric_noise_multiplier=1.0)
        (tmp_path / "policy.toml").write_text(chosen.to_toml())
        argv += ["--site-policy", str(tmp_path / "policy.toml")]
    assert main(argv) == 0
    run = tmp_path / "runs" / "dp"
    summary = json.loads((run / rundir.SUMMARY).read_text())
    (line,) = [json.loads(x) for x in (run / rundir.METRICS).read_text().splitlines()][1:]
    counts = [[site["train"][f"train_class_count_{c}"] for c in (0, 1)]
              for site in line["sites"].values()]
    assert len(counts) == 2 and all(c >= 0 for pair in counts for c in pair)
    for site in line["sites"].values():          # the weight is the noised counts' sum
        assert abs(site["train"]["num-examples"] - sum(
            site["train"][f"train_class_count_{c}"] for c in (0, 1))) <= 1.0
    point = summary["selection"]["operating_point"]
    assert point["kind"] == "threshold"
    if policy == "sigma1":
        assert "Youden's J" in point["rule"] and "noised" in point["rule"]
        assert summary["selection"]["criterion"] == "val_auc"
    else:
        total = np.sum(counts, axis=0)
        assert point["threshold"] == pytest.approx((total[1] + 1) / (total.sum() + 2))
        assert "noised counts of 2 site(s)" in point["rule"]
        assert ("mostly noise" in point["rule"]) == (policy == "simulation")
    assert summary["privacy"]["max_epsilon"] <= 8.0 + 1e-6       # every release included
    assert summary["pooled"]["privacy"]["epsilon"] <= 8.0 + 1e-6   # its prior release too


def _noised_site(hist: np.ndarray, sd: float, prior: tuple[float, float]) -> dict:
    return {"train": {"train_class_count_0": prior[0], "train_class_count_1": prior[1]},
            "test": {"withheld": 0.0, **counts_metrics("binary", hist), VAL_NOISE_SD: sd}}


@pytest.mark.parametrize("prior_adjusted", [False, True])
def test_noised_histograms_that_are_mostly_noise_leave_the_threshold_to_the_class_prior(
        prior_adjusted):
    """Two sites, each with 40 val cases of label 0 (bin 3) and 10 of label 1 (bin 6): the
    smaller class totals 20. At a per-site sigma that puts 20 at half of MIN_HISTOGRAM_SIGNAL
    sds of its noise (sigma sqrt(2 x 10) on a total), the histograms are not read: the threshold
    is the sites' noised training prior, (2 x 99 + 1) / (2 x 399 + 2), for a logit-adjusted
    model too, and a target sensitivity is said to be unused. With a sigma 10 times smaller
    the same counts set the threshold (the target's)."""
    from common.operating_point import MIN_HISTOGRAM_SIGNAL, positive_class

    h = np.zeros((2, NOISED_HIST_BINS))
    h[0, 3], h[1, 6] = 40.0, 10.0
    weak = 20.0 / (0.5 * MIN_HISTOGRAM_SIGNAL * np.sqrt(2 * NOISED_HIST_BINS))
    for sd, reads in ((weak, False), (weak / 10, True)):
        selection = ModelSelection(BINARY, positive=positive_class(BINARY),
                                   prior_adjusted=prior_adjusted, target_sensitivity=0.9)
        assert selection.observe(1, {s: _noised_site(h, sd, (300.0, 99.0)) for s in "01"})
        point = selection.outcome(1).operating_point
        assert point.kind == THRESHOLD
        if reads:
            assert "sensitivity >= 0.9" in point.rule and 0.4 <= point.threshold <= 0.6
        else:
            assert point.threshold == pytest.approx(199 / 800)
            assert "mostly noise" in point.rule
            assert f"{0.5 * MIN_HISTOGRAM_SIGNAL:.2f} sd of its noise" in point.rule
            assert "noised counts of 2 site(s)" in point.rule
            assert "--target-sensitivity 0.9 not applied" in point.rule
