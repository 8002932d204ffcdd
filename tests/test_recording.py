"""Per-round records: failures are named, a round where every site fails stops the run."""

import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict

from common import rundir
from common.packing import pack_state
from common.datasets import TaskInfo
from server.recording import RoundLog, progress_line


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
