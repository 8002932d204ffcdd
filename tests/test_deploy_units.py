"""The pieces of a deployment that need no processes: app approval, the audit log and its
outgoing check, the app bundle, resumable checkpoints, resumed configs and the quorum."""

from __future__ import annotations

import json
import random
import zipfile
import io

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam

from client.approval import AppRefused, installed_bundle_hash, review_app
from client.audit import AuditLog, check_outgoing, payload_digest
from common import rundir
from common.config import ConfigError, RunConfig
from common.version import __version__
from deploy.loopback import Loopback
from server.app import resumed_config
from runtime.bundle import CLIENT_SHIM, SERVER_SHIM, build_bundle
from server.checkpoint import (load_resume_point, restore_strategy_state, rng_state,
                               set_rng_state, strategy_state)
from server.strategies import build_strategy, quorum


@pytest.fixture(autouse=True)
def _inside_a_task(monkeypatch):
    """Messages are built inside a Flower task (run and node known), as on a real site."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _reply(content: RecordDict) -> Message:
    request = Message(RecordDict({"config": ConfigRecord({"server-round": 3})}),
                      dst_node_id=1, message_type="train")
    return Message(content, reply_to=request)


def _weights(seed: int) -> ArrayRecord:
    gen = torch.Generator().manual_seed(seed)
    return ArrayRecord({"w": torch.randn(4, 3, generator=gen), "b": torch.zeros(3)})


# --------------------------------------------------------------------------- approval, bundle


def test_the_bundle_is_reproducible_and_carries_no_code_of_its_own():
    fab, sha = build_bundle()
    again, sha_again = build_bundle()
    assert fab == again and sha == sha_again == installed_bundle_hash()
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        py = {n: archive.read(n).decode() for n in archive.namelist() if n.endswith(".py")}
        pyproject = archive.read("pyproject.toml").decode()
    assert sorted(py.values()) == sorted([SERVER_SHIM, CLIENT_SHIM])
    assert f'version = "{__version__}"' in pyproject
    assert build_bundle("9.9.9")[1] != sha          # another release, another hash


def test_a_site_runs_its_installed_bundle_or_an_allowed_hash_and_refuses_the_rest():
    mine = installed_bundle_hash()
    assert review_app(mine).kind == "installed"
    other = "ab" * 32
    assert review_app(other, frozenset({other})).kind == "allowed-hash"
    with pytest.raises(AppRefused) as refused:
        review_app(other, frozenset({"cd" * 32}))
    text = str(refused.value)
    assert other in text and mine in text and "cdcdcdcdcdcd" in text
    assert "--allow-app-hash" in text


# --------------------------------------------------------------------------- audit


def test_only_weights_and_scalar_metrics_may_leave():
    ok = _reply(RecordDict({"arrays": _weights(0), "metrics": MetricRecord({"train_loss": 0.5})}))
    assert check_outgoing(ok) == ""
    leaky = _reply(RecordDict({"arrays": _weights(0),
                               "notes": ConfigRecord({"patient": "Doe^John"})}))
    assert "ConfigRecord" in check_outgoing(leaky)
    vector = _reply(RecordDict({"metrics": MetricRecord({"per_patient_loss": [0.1, 0.9]})}))
    assert "per_patient_loss" in check_outgoing(vector)


def test_payload_digest_is_exact_and_content_sensitive():
    a = _reply(RecordDict({"arrays": _weights(0), "metrics": MetricRecord({"loss": 0.5})}))
    b = _reply(RecordDict({"arrays": _weights(0), "metrics": MetricRecord({"loss": 0.5})}))
    c = _reply(RecordDict({"arrays": _weights(1), "metrics": MetricRecord({"loss": 0.5})}))
    size, sha = payload_digest(a)
    assert (size, sha) == payload_digest(b) and sha != payload_digest(c)[1]
    assert size > 4 * 3 * 4 + 3 * 4                # at least the float32 weights themselves


def test_audit_log_appends_one_line_per_reply_with_round_bytes_hash_and_epsilon(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    metrics = MetricRecord({"loss": 0.5, "epsilon": 1.25, "delta": 1e-4})
    reply = _reply(RecordDict({"arrays": _weights(0), "metrics": metrics}))
    request = Message(RecordDict({"config": ConfigRecord({"server-round": 3})}),
                      dst_node_id=1, message_type="train")
    size, sha = log.record_reply(request, reply, run_id=7, code="installed")
    log.record_refusal(request, 7, "not approved", "offered X")
    first = (tmp_path / "audit.jsonl").read_text()
    log.record_reply(request, reply, run_id=7, code="installed")
    assert (tmp_path / "audit.jsonl").read_text().startswith(first)      # append-only
    entries = log.entries()
    assert [e["event"] for e in entries] == ["reply", "refused", "reply"]
    assert entries[0]["round"] == 3 and entries[0]["bytes"] == size
    assert entries[0]["sha256"] == sha and entries[0]["epsilon"] == 1.25
    assert entries[1]["reason"] == "offered X"
    assert oct((tmp_path / "audit.jsonl").stat().st_mode & 0o777) == "0o600"


class _Claimer:
    """The SuperNode's Runtime API as the executor sees it: hands out queued tasks, then none."""

    def __init__(self, tokens, stop):
        self.tokens, self.stop = list(tokens), stop

    def AcquireTask(self, request):  # noqa: N802 - the proto method's name
        from flwr.proto.runtime_pb2 import AcquireTaskResponse

        if not self.tokens:
            self.stop.set()
            return AcquireTaskResponse()
        res = AcquireTaskResponse(token=self.tokens.pop(0))
        res.task.fab_hash = "abc"
        return res

    def close(self):
        pass


def test_a_failed_task_is_audited_and_the_site_goes_on_serving(tmp_path):
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError

    from client.executor import SiteExecutor

    ran = []

    class Executor(SiteExecutor):
        def _client(self, component, token=None, invoker=None):
            return _Claimer(["t1", "t2"], self.stop_event)

        def run_task(self, token, fab_hash):
            if token == "t1":      # e.g. the SuperLink restarted and the message's objects are gone
                raise ObjectPullError("92579b", "timeout or retry limit reached")
            ran.append(token)

    executor = Executor(runtime_address="127.0.0.1:1", audit=AuditLog(tmp_path / "audit.jsonl"),
                        client_app=lambda message, context: message, poll_interval=0.01)
    executor.serve()                                   # returns: the claimer ran out of tasks
    assert ran == ["t2"] and executor.tasks_failed == 1
    failed = [e for e in executor.audit.entries() if e["event"] == "task-failed"]
    assert len(failed) == 1 and "92579b" in failed[0]["detail"]


# --------------------------------------------------------------------------- checkpoint, resume


def test_fedadam_moments_and_rngs_survive_a_checkpoint(tmp_path):
    strategy = FedAdam(eta=0.1, eta_l=0.1)
    strategy.current_arrays = {"w": np.ones(3)}
    strategy.m_t = {"w": np.full(3, 0.25)}
    strategy.v_t = {"w": np.full(3, 0.5)}
    saved = strategy_state(strategy)
    random.seed(3)
    rng = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    fresh = FedAdam(eta=0.1, eta_l=0.1)
    restore_strategy_state(fresh, saved)
    set_rng_state(rng)
    assert np.array_equal(fresh.m_t["w"], strategy.m_t["w"])
    assert np.array_equal(fresh.v_t["w"], strategy.v_t["w"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    with pytest.raises(ConfigError, match="strategy layers"):
        restore_strategy_state(build_strategy(RunConfig(), 4), saved)


def test_resume_point_trims_rounds_written_after_the_checkpoint(tmp_path):
    state = {"w": torch.ones(2)}
    rundir.save_model(tmp_path / rundir.CHECKPOINT, state,
                      {"round": 2, "strategy": [], "rng": rng_state()})
    for r in range(4):                                  # round 3 outlived the checkpoint
        rundir.append_jsonl(tmp_path / rundir.METRICS, {"round": r})
    point = load_resume_point(tmp_path)
    assert point.round == 2 and torch.equal(point.state_dict["w"], state["w"])
    assert [line["round"] for line in rundir.read_jsonl(tmp_path / rundir.METRICS)] == [0, 1, 2]
    with pytest.raises(ConfigError, match="no checkpoint"):
        load_resume_point(tmp_path / "nowhere")


def test_a_resumed_run_keeps_its_config_and_may_only_extend_it(tmp_path):
    started = RunConfig(sites=3, rounds=5, dp="sample", lr=0.05)
    started.save(tmp_path / rundir.CONFIG)
    resumed = resumed_config(RunConfig(resume="run-a", rounds=8, min_sites=2), tmp_path)
    assert resumed == started.replace(resume="run-a", rounds=8, min_sites=2)
    with pytest.raises(ConfigError, match="lr=0.1 differs"):
        resumed_config(RunConfig(resume="run-a", lr=0.1), tmp_path)


def test_quorum_is_the_larger_of_count_and_fraction():
    assert quorum(RunConfig(min_sites=2), 10) == 2
    assert quorum(RunConfig(min_sites=2, min_site_fraction=0.5), 10) == 5
    assert quorum(RunConfig(min_sites=1, min_site_fraction=0.34), 3) == 2
    with pytest.raises(ConfigError, match="min_sites=5"):
        build_strategy(RunConfig(sites=4, min_sites=5), 4)


def test_config_files_stay_json(tmp_path):
    RunConfig(resume="x").save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["resume"] == "x"


def test_a_train_message_counts_as_received_only_once_its_pull_completed(tmp_path):
    """The resume fault test kills the server once every site *received* round 2; a pull cut off
    by the kill (Flower then keeps the task's reply and sends it in place of the next one) must
    not count."""
    lb = Loopback(root=tmp_path, certs=tmp_path / "certs", data=[], port=1)
    (tmp_path / "site-0").mkdir()
    info = "\x1b[92mINFO \x1b[0m:      "
    (tmp_path / "site-0" / "supernode.log").write_text("\n".join([
        info, info + "[RUN 1, ROUND 1]", info + "Receiving: train message (ID: a1)",
        info + "Received successfully", info + "Sending: train message (ID: b1)",
        info + "Receiving: evaluate message (ID: c1)", info + "Received successfully",
        info + "Receiving: train message (ID: a2)",
        "\x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying in 0.89 seconds",
        info + "Run ID 1 is not in `RUNNING` status. Ignoring message a2."]) + "\n")
    assert lb.train_messages_received(0) == 1


def test_a_failed_task_tells_the_server_the_error_type_not_its_text(caplog):
    from client.executor import failure_reason

    secret = "/data/export/DOE_JOHN_1931/IM0001.dcm: the site has 57 training samples"
    with caplog.at_level("ERROR"):
        reason = failure_reason(ValueError(secret))
    assert reason.startswith("ValueError at the site") and "reference" in reason
    ref = reason.rsplit("reference ", 1)[1].rstrip(")")
    told = reason.replace(ref, "")       # the random hex reference may hold "57" by chance
    assert "DOE_JOHN" not in told and "57" not in told and "/data" not in told
    assert any(ref in r.getMessage() and secret in str(r.exc_info[1]) for r in caplog.records)
