"""Per-round records: failures are named, a round where every site fails stops the run."""

import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import rundir
from common.packing import PACKED_KEY, pack_state
from common.datasets import TaskInfo
from common.wire import BUDGET_EXHAUSTED_REASON, ReplyCode
from server.progress import progress_line
from server.recording_strategy import PrivacyBudgetSpent, QuorumLost, RecordingStrategy
from server.round_log import RoundLog


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _sent(node: int) -> Message:
    return Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)


def _ok(node: int, site: int) -> Message:
    metrics = MetricRecord({"num-examples": 10, "train_loss": 0.5, "site": site})
    return Message(RecordDict({"metrics": metrics}), reply_to=_sent(node))


def _failed(node: int, reason: str) -> Message:
    return Message(Error(code=1, reason=reason), reply_to=_sent(node))


def _log(tmp_path, lines):
    task = TaskInfo("binary", 2, 2, 1, 28)
    return RoundLog(run_dir=tmp_path, num_rounds=3, task=task,
                    make_model=lambda: torch.nn.Linear(2, 2), global_test=None,
                    echo=lines.append)


def test_partial_failure_is_recorded_and_the_round_goes_on(tmp_path):
    lines: list[str] = []
    log = _log(tmp_path, lines)
    log.record_train(1, [_ok(11, 0), _failed(12, "ValueError: disk full")])
    log.evaluate(1, ArrayRecord({"model": pack_state(torch.nn.Linear(2, 2).state_dict())}))
    record = rundir.read_jsonl(tmp_path / rundir.METRICS)[0]
    assert record["round"] == 1 and list(record["sites"]) == ["0"]
    assert record["failures"] == {"node 12 (train)": "ValueError: disk full"}
    assert "excluded: node 12" in lines[0]
    saved = torch.load(tmp_path / rundir.CHECKPOINT, weights_only=False)
    assert saved["round"] == 1


def test_every_site_failing_stops_with_the_reasons(tmp_path):
    log = _log(tmp_path, [])
    with pytest.raises(RuntimeError, match=r"round 2: every site failed to train: .*boom"):
        log.record_train(2, [_failed(11, "boom"), _failed(12, "boom too")])


def test_progress_line_reads_like_a_sentence():
    line = {"round": 2, "seconds": 3.5, "global": {"accuracy": 0.75, "auc": float("nan")},
            "sites": {"0": {"train": {"train_loss": 0.4}, "test": {"accuracy": 0.5}},
                      "1": {"train": {"train_loss": 0.2}, "test": {"accuracy": 0.7}}},
            "failures": {}}
    assert progress_line(line, 5) == ("[round 2/5] global acc 0.750 auc n/a | sites acc mean "
                                      "0.600 min 0.500 | train loss 0.300 | 3.5s")


def test_a_budget_code_is_read_whatever_the_reason_says(tmp_path):
    log = _log(tmp_path, [])
    refusal = Message(Error(code=int(ReplyCode.BUDGET_EXHAUSTED),
                            reason="site 1 is out of epsilon"), reply_to=_sent(12))
    log.record_train(1, [_ok(11, 0), refusal])
    assert log.exhausted == {12: {"round": 1, "reason": "site 1 is out of epsilon"}}
    other = Message(Error(code=1, reason=f"{BUDGET_EXHAUSTED_REASON}: but not the code"),
                    reply_to=_sent(13))
    log.record_train(2, [_ok(11, 0), other])
    assert 13 not in log.exhausted


def test_every_site_refusing_for_its_budget_is_not_a_failure(tmp_path):
    log = _log(tmp_path, [])
    refusals = [Message(Error(code=int(ReplyCode.BUDGET_EXHAUSTED), reason="spent"),
                        reply_to=_sent(node)) for node in (11, 12)]
    log.record_train(3, refusals)                       # no RuntimeError: the run ends cleanly
    assert set(log.exhausted) == {11, 12}


class _Grid(Grid):
    """Nodes 11, 12, 13 (sites 0, 1, 2) answer at once, except those in `silent`."""

    def __init__(self, silent=(), refuse=()) -> None:
        self.silent, self.refuse = set(silent), set(refuse)
        self.inbox: dict[str, Message] = {}
        self.count = 0

    def set_run(self, run) -> None: ...

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def get_node_ids(self):
        return [11, 12, 13]

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            self.count += 1
            msg.metadata.__dict__["_message_id"] = f"m{self.count}"
            self.inbox[f"m{self.count}"] = msg
            ids.append(f"m{self.count}")
        return ids

    def pull_messages(self, message_ids):
        replies = []
        for mid in list(message_ids):
            msg = self.inbox.pop(mid, None)
            node = None if msg is None else msg.metadata.dst_node_id
            if msg is None or node in self.silent:
                continue
            if node in self.refuse and msg.metadata.message_type == MessageType.TRAIN:
                replies.append(Message(Error(code=int(ReplyCode.BUDGET_EXHAUSTED),
                                             reason="spent"), reply_to=msg))
                continue
            score = ("train_loss" if msg.metadata.message_type == MessageType.TRAIN
                     else "accuracy")
            metrics = MetricRecord({"num-examples": 1, score: 0.5, "site": node - 11})
            replies.append(Message(RecordDict({"metrics": metrics}), reply_to=msg))
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("fedclinic pulls replies itself (it polls faster)")


class _Inner(Strategy):
    """Asks every node, keeps the model, and remembers the rounds it was called for."""

    def __init__(self) -> None:
        self.rounds: list[int] = []

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds.append(server_round)
        return [Message(RecordDict({"arrays": arrays}), dst_node_id=n,
                        message_type=MessageType.TRAIN) for n in grid.get_node_ids()]

    def aggregate_train(self, server_round, replies):
        return None, MetricRecord({"round": server_round})

    def configure_evaluate(self, server_round, arrays, config, grid):
        return [Message(RecordDict({"arrays": arrays}), dst_node_id=n,
                        message_type=MessageType.EVALUATE) for n in grid.get_node_ids()]

    def aggregate_evaluate(self, server_round, replies):
        return MetricRecord({"round": server_round})

    def summary(self) -> None: ...


def _start(tmp_path, grid, num_rounds, first_round=1, quorum=lambda asked: 1):
    log = _log(tmp_path, [])
    log.quorum = quorum
    inner = _Inner()
    strategy = RecordingStrategy(inner, log)
    arrays = ArrayRecord({PACKED_KEY: pack_state(torch.nn.Linear(2, 2).state_dict())})
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=num_rounds,
                            timeout=0.5, evaluate_fn=log.evaluate, first_round=first_round)
    return result, log, inner


def test_a_run_evaluates_the_initial_model_then_each_round_with_its_timing(tmp_path):
    result, log, inner = _start(tmp_path, _Grid(), 2)
    assert [line["round"] for line in log.history] == [0, 1, 2] and inner.rounds == [1, 2]
    assert set(log.history[1]["timing"]) == {"train_wall", "aggregate", "evaluate_wall"}
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]
    assert PACKED_KEY in result.arrays                 # no round aggregated: the initial model


def test_a_resumed_run_continues_its_round_numbers(tmp_path):
    result, log, inner = _start(tmp_path, _Grid(), 4, first_round=3)
    assert [line["round"] for line in log.history] == [3, 4] and inner.rounds == [3, 4]
    assert sorted(result.train_metrics_clientapp) == [3, 4]
    assert result.train_metrics_clientapp[3]["round"] == 3


def test_a_site_that_never_answers_is_named_in_both_phases(tmp_path):
    _, log, _ = _start(tmp_path, _Grid(silent={13}), 1)
    failures = log.history[1]["failures"]
    assert set(failures) == {"node 13 (train)", "node 13 (evaluate)"}
    assert "no reply within the round timeout of 0.5 s" in failures["node 13 (train)"]


def test_three_rounds_without_quorum_stop_the_run(tmp_path):
    with pytest.raises(QuorumLost, match="3 rounds in a row missed the quorum"):
        _start(tmp_path, _Grid(silent={13}), 5, quorum=lambda asked: asked)
    rounds = rundir.read_jsonl(tmp_path / rundir.METRICS)
    assert [line["round"] for line in rounds] == [0, 1, 2, 3]
    assert all("quorum not met: 2 of 3" in line["skipped"] for line in rounds[1:])


def test_sites_out_of_budget_are_not_asked_again_and_the_run_stops(tmp_path):
    with pytest.raises(PrivacyBudgetSpent, match="after round 1"):
        _start(tmp_path, _Grid(refuse={11, 12, 13}), 3)
