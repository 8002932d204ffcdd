"""Strategy registry: each name builds its Flower strategy; aggregation weights by samples."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from common.config import ConfigError, RunConfig
from server.strategies import build_strategy



@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages need a run/task identity; a SuperLink or the simulation engine sets it."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


NAMES = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg", "krum"]


def _reply(node: int, weights: np.ndarray, samples: int) -> Message:
    sent = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    metrics = MetricRecord({"num-examples": samples, "train_loss": 1.0, "site": node})
    return Message(RecordDict({"arrays": ArrayRecord([weights]), "metrics": metrics}),
                   reply_to=sent)


def _aggregate(name: str, sites: list[tuple[float, int]]) -> np.ndarray:
    strategy = build_strategy(RunConfig(strategy=name, sites=len(sites)), len(sites))
    replies = [_reply(i + 1, np.full(3, value, dtype=np.float32), n)
               for i, (value, n) in enumerate(sites)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays.to_numpy_ndarrays()[0]


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_builds(name):
    strategy = build_strategy(RunConfig(strategy=name, sites=5), 5)
    assert type(strategy).__name__.lower() == name


def test_fedavg_weights_by_training_samples_not_batches():
    # 1.0 with 30 samples, 4.0 with 10 samples -> (30*1 + 10*4) / 40 = 1.75
    assert np.allclose(_aggregate("fedavg", [(1.0, 30), (4.0, 10)]), 1.75)


def test_fedmedian_is_elementwise_median():
    assert np.allclose(_aggregate("fedmedian", [(1.0, 1), (2.0, 1), (100.0, 1)]), 2.0)


def test_fedtrimmedavg_drops_the_extremes():
    # beta 0.2 of 5 sites trims one from each end: mean of 2, 3, 4 = 3
    values = [(-100.0, 1), (2.0, 1), (3.0, 1), (4.0, 1), (500.0, 1)]
    assert np.allclose(_aggregate("fedtrimmedavg", values), 3.0)


def test_krum_ignores_an_outlier():
    values = [(1.0, 1), (1.1, 1), (0.9, 1), (1.05, 1), (50.0, 1)]
    result = _aggregate("krum", values)
    assert abs(float(result[0]) - 1.0) <= 0.1


def test_fedprox_sends_mu_to_sites():
    strategy = build_strategy(RunConfig(strategy="fedprox", proximal_mu=0.5, sites=2), 2)
    assert strategy.proximal_mu == 0.5


def test_krum_needs_enough_sites():
    with pytest.raises(ConfigError, match="krum_malicious=1 needs at least 5 sampled sites; got 3"):
        build_strategy(RunConfig(strategy="krum", krum_malicious=1, sites=3), 3)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_server_tau_sets_the_adaptive_step(name):
    """One round from zero with every site at 1.0: m = 0.1, v = 0.01 (FedAdam) and the step is
    eta_norm * 0.1 / (0.1 + tau); a larger tau damps it."""
    steps = []
    for tau in (1e-3, 1.0):
        strategy = build_strategy(RunConfig(strategy=name, sites=2, server_lr=0.1,
                                            server_tau=tau), 2)
        assert strategy.tau == tau
        strategy.current_arrays = {"0": np.zeros(3, dtype=np.float32)}
        replies = [_reply(i + 1, np.ones(3, dtype=np.float32), 10) for i in range(2)]
        arrays, _ = strategy.aggregate_train(1, replies)
        steps.append(float(arrays.to_numpy_ndarrays()[0][0]))
    eta_norm = 0.1 * np.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2)
    if name == "fedadam":
        assert steps == pytest.approx([eta_norm * 0.1 / (0.1 + t) for t in (1e-3, 1.0)], rel=1e-4)
    assert steps[1] < steps[0] / 5
