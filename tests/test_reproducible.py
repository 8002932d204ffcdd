"""Same config, same seed: the same federation (issue 12 item 3). A tiny simulated federation
run twice gives identical metrics.jsonl but for its timings (`common.reproducible`) and a
bitwise-identical final model: the server aggregates in site order, not arrival order
(`server.recording_strategy.in_site_order`), and every site's randomness comes from the seed,
the round and the site id (`client.train_task.local_seed`), whichever Ray worker runs it."""

from __future__ import annotations

import random

import pytest
import torch
from flwr.app import Error, Message, MessageType, MetricRecord, RecordDict

from common import rundir
from common.reproducible import SITE_TIMING_KEYS, without_timings
from fedclinic.cli import main
from server.recording_strategy import in_site_order

TINY = dict(dataset="synthetic", num_samples=300, sites=3, rounds=2, local_epochs=1,
            model="cnn", width=8, batch_size=16, seed=7, baselines="")


def _run(out, name: str, seed: int = 7) -> list[dict]:
    argv = ["simulate", "--output-dir", str(out), "--run-name", name]
    for key, value in {**TINY, "seed": seed}.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    assert main(argv) == 0
    return rundir.read_jsonl(out / name / rundir.METRICS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return out, _run(out, "first"), _run(out, "second")


def test_same_seed_gives_the_same_metrics_but_for_timings(runs):
    _, first, second = runs
    assert [line["round"] for line in first] == [0, 1, 2]
    assert [without_timings(line) for line in first] == [without_timings(line)
                                                         for line in second]
    # what was left out are the timings, and they are there
    assert all("seconds" in line for line in first)
    trained = first[1]["sites"]["0"]["train"]
    assert set(SITE_TIMING_KEYS) <= set(trained)
    assert trained["num-examples"] > 0 and "train_loss" in trained
    assert first[-1]["global"] == second[-1]["global"]


def test_same_seed_gives_a_bitwise_identical_final_model(runs):
    out, _, _ = runs
    one = torch.load(out / "first" / rundir.FINAL_MODEL, weights_only=False)["state_dict"]
    two = torch.load(out / "second" / rundir.FINAL_MODEL, weights_only=False)["state_dict"]
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)


@pytest.fixture
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _reply(node: int, site: int | None) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    if site is None:
        return Message(Error(code=2, reason="boom"), reply_to=request)
    metrics = MetricRecord({"num-examples": 10.0, "site": site})
    return Message(RecordDict({"metrics": metrics}), reply_to=request)


def test_replies_are_aggregated_in_site_order_whatever_their_arrival(task_identity):
    replies = [_reply(node, site) for node, site in ((90, 2), (17, 0), (55, None), (33, 1))]
    for _ in range(5):
        random.shuffle(replies)
        ordered = in_site_order(replies)
        sites = [None if m.has_error() else m.content["metrics"]["site"] for m in ordered]
        assert sites == [0, 1, 2, None]


def test_without_timings_keeps_everything_else():
    line = {"round": 1, "seconds": 3.2, "timing": {"train_wall": 1.0}, "global": {"auc": 0.7},
            "failures": {}, "sites": {"0": {"train": {"train_seconds": 1.0,
                                                      "client_seconds": 1.2, "steps": 4.0},
                                            "test": {"accuracy": 0.5}}}}
    assert without_timings(line) == {"round": 1, "global": {"auc": 0.7}, "failures": {},
                                     "sites": {"0": {"train": {"steps": 4.0},
                                                     "test": {"accuracy": 0.5}}}}
