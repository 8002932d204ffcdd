"""`fedclinic simulate` on an existing Ray cluster (issue 12 items 1-2): a real two-node cluster
on this machine (a head and a second node started with `ray start`, each with its own
--temp-dir, both at --node-ip-address 127.0.0.1), sites placed on both nodes, a clear error when
no node fits a site, and a crash (no cluster, a site that raises) ending the command at once.

The cluster is torn down by its processes' group ids (and any process left that names its
temp dir, by pid): never `ray stop`, which stops every Ray on the machine."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from common import rundir
from simulations.engine import (PLACEMENT_PREFIX, CrashAwareGrid, RayResources,
                                SimulationCrashed, crash_of, ray_init_args, sites_at_once)
from common.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))
TINY = ["--dataset", "synthetic", "--num-samples", "240", "--sites", "3", "--rounds", "2",
        "--local-epochs", "1", "--model", "cnn", "--width", "4", "--batch-size", "32",
        "--baselines", "", "--seed", "0"]
STARTED = "Ray runtime started"
COMMAND_LIMIT = 420          # far below the 3600 s round timeout a hung run would wait out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", RAY_DEDUP_LOGS="0",
               RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0", PYTHONPATH=str(ROOT), **extra)
    return env


def _ray_start(temp_dir: Path, log: Path, *head_or_address: str) -> subprocess.Popen:
    """One Ray node in the foreground (--block) in a process group of its own; ports of its
    own so that two nodes (and any other Ray here) do not collide."""
    argv = [RAY, "start", *head_or_address, "--block", "--node-ip-address", "127.0.0.1",
            "--temp-dir", str(temp_dir), "--num-cpus", "1", "--num-gpus", "0",
            "--object-store-memory", str(80 * 2**20), "--disable-usage-stats",
            "--dashboard-agent-listen-port", str(_free_port()),
            "--dashboard-agent-grpc-port", str(_free_port()),
            "--runtime-env-agent-port", str(_free_port()),
            "--metrics-export-port", str(_free_port())]
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env(),
                            start_new_session=True)


def _wait_started(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while STARTED not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start did not start: {log.read_text(errors='replace')}")
        time.sleep(0.5)


def _teardown(procs: list[subprocess.Popen], temp_dirs: list[Path]) -> None:
    """SIGTERM each node's process group, SIGKILL what is left; then any process whose command
    line names one of our temp dirs (a Ray daemon that left the group), by pid."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in _processes_naming(temp_dirs):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _processes_naming(temp_dirs: list[Path]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(str(d) in cmdline for d in temp_dirs):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (1 CPU) and a second node (1 CPU) joined to it; yields the head's address and
    each node's temp dir."""
    base = tmp_path_factory.mktemp("ray")
    head_dir, worker_dir = base / "head", base / "worker"
    port = _free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_ray_start(head_dir, base / "head.log", "--head", "--port", str(port),
                                "--include-dashboard", "false"))
        _wait_started(procs[0], base / "head.log")
        procs.append(_ray_start(worker_dir, base / "worker.log",
                                "--address", f"127.0.0.1:{port}"))
        _wait_started(procs[1], base / "worker.log")
        yield {"address": f"127.0.0.1:{port}", "head": head_dir, "worker": worker_dir}
    finally:
        _teardown(procs, [head_dir, worker_dir])
        assert not _processes_naming([head_dir, worker_dir])


def _simulate(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "fedclinic.cli", "simulate", *argv], cwd=ROOT,
                          env=env or _env(), capture_output=True, text=True,
                          timeout=COMMAND_LIMIT)


def _placements(temp_dir: Path) -> set[tuple[int, str, int, str]]:
    """(site, phase, round, ray node) of every task a worker of this node ran (its logs)."""
    pattern = re.compile(re.escape(PLACEMENT_PREFIX)
                         + r" site (\d+) (\w+) round (\d+) on ray node (\w+)")
    found = set()
    for path in temp_dir.rglob("worker-*"):
        if path.is_file():
            for m in pattern.finditer(path.read_text(errors="replace")):
                found.add((int(m[1]), m[2], int(m[3]), m[4]))
    return found


@pytest.mark.slow
def test_sites_run_on_both_nodes_of_a_cluster(cluster, tmp_path):
    done = _simulate([*TINY, "--ray-address", cluster["address"], "--cpus-per-site", "1",
                      "--output-dir", str(tmp_path), "--run-name", "cluster"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Ray cluster at {cluster['address']}: 2 site(s) at once" in done.stdout
    on_head, on_worker = _placements(cluster["head"]), _placements(cluster["worker"])
    print("head:", sorted(on_head), "\nworker:", sorted(on_worker))
    assert on_head and on_worker                      # both nodes ran sites
    assert len({node for *_, node in on_head}) == 1   # one Ray node id per node
    assert {node for *_, node in on_head}.isdisjoint({node for *_, node in on_worker})
    tasks = [t[:3] for t in on_head | on_worker]
    assert sorted(tasks) == sorted({(s, p, r) for s in range(3) for p in ("train", "evaluate")
                                    for r in (1, 2)})   # every task ran once, somewhere
    lines = rundir.read_jsonl(tmp_path / "cluster" / rundir.METRICS)
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert all(sorted(line["sites"]) == ["0", "1", "2"] for line in lines[1:])


@pytest.mark.slow
def test_no_node_fits_is_a_clear_error_with_ray_address_from_the_environment(cluster,
                                                                            tmp_path):
    env = _env(RAY_ADDRESS=cluster["address"])       # honoured; num_cpus never passed
    done = _simulate([*TINY, "--cpus-per-site", "2", "--output-dir", str(tmp_path)], env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"no node of the Ray cluster at {cluster['address']} fits one site" in done.stderr
    assert "--cpus-per-site 2" in done.stderr and "1 CPU, 0 GPU" in done.stderr
    assert "num_cpus and num_gpus must not be provided" not in done.stdout + done.stderr


def test_no_cluster_at_the_address_ends_at_once(tmp_path):
    done = _simulate([*TINY, "--ray-address", f"127.0.0.1:{_free_port()}",
                      "--output-dir", str(tmp_path)])
    assert done.returncode == 2
    assert "no Ray cluster answers at 127.0.0.1:" in done.stderr


RAISING_SITE = """
import sys
from flwr.clientapp import ClientApp
import simulations.simulate as simulate
from simulations.engine import run_placed

def fails_at_site_1(msg, context):
    from client.train_task import train_reply
    if context.node_config["partition-id"] == 1:
        raise ValueError("cannot read the scanner export")
    return train_reply(msg, context)

def evaluate(msg, context):
    from client.evaluate_task import evaluate_reply
    return evaluate_reply(msg, context)

app = ClientApp()
app.train()(lambda msg, context: run_placed(fails_at_site_1, "train", msg, context))
app.evaluate()(lambda msg, context: run_placed(evaluate, "evaluate", msg, context))
simulate.simulated_site_app = app
from fedclinic.cli import main
sys.exit(main(["simulate", *sys.argv[1:]]))
"""


def test_a_site_that_raises_ends_the_command_with_its_message(tmp_path):
    script = tmp_path / "raising.py"
    script.write_text(RAISING_SITE)
    done = subprocess.run([PYTHON, str(script), *TINY, "--rounds", "3", "--output-dir",
                           str(tmp_path / "runs")], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=COMMAND_LIMIT)
    assert done.returncode == 1, done.stderr[-3000:]
    assert ("the simulation crashed: site 1 (train, round 1): ValueError: cannot read the "
            "scanner export") in done.stderr
    assert "round 2" not in done.stdout


# --------------------------------------------------------------------------- units, no Ray

def _node(cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    res = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"Alive": alive, "Resources": res, "NodeManagerAddress": "10.0.0.1", "NodeID": "ab" * 8}


def test_sites_at_once_counts_per_node_and_names_what_each_node_has():
    assert sites_at_once([_node(4), _node(3)], RayResources(cpus_per_site=2)) == 3
    assert sites_at_once([_node(8, 2)], RayResources(cpus_per_site=1, gpus_per_site=0.5)) == 4
    with pytest.raises(ConfigError, match=r"no node of the Ray cluster at h:1 fits one site.*"
                                          r"--gpus-per-site 1.*10.0.0.1 \(abababab\): 8 CPU, "
                                          r"0 GPU"):
        sites_at_once([_node(8), _node(8, alive=False)], RayResources(gpus_per_site=1), "h:1")


def test_joining_a_cluster_passes_no_resources_to_ray_init(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_init_args(RayResources(), False)["num_cpus"] >= 1
    joined = ray_init_args(RayResources(address="auto"), False)
    assert joined["address"] == "auto" and "num_cpus" not in joined and "num_gpus" not in joined
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    from_env = ray_init_args(RayResources(), False)
    assert from_env["address"] == "10.1.2.3:6379" and "num_cpus" not in from_env


class _Grid:
    def __init__(self, replies): self.replies = replies
    def pull_messages(self, ids): return self.replies
    def push_messages(self, messages): return ["m"]
    def get_node_ids(self): return [1, 2]


@pytest.fixture
def task_identity(monkeypatch):
    """Flower's messages need a task identity (set by its runtime; here by hand)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _error(code: int, reason: str) -> Message:
    request = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
    return Message(Error(code=code, reason=reason), reply_to=request)


def test_a_crash_reply_or_a_stopped_engine_ends_the_server_at_its_next_call(task_identity):
    flower = ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException "
              "ClientAppException occurred. Message: site 2 (train, round 1): OSError: gone'>")
    assert crash_of(_error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, flower)) == \
        "site 2 (train, round 1): OSError: gone"
    assert crash_of(_error(4033, "policy-refused: require_dp")) == ""     # an answer
    stopped = threading.Event()
    grid = CrashAwareGrid(_Grid([_error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, flower)]),
                          stopped)
    with pytest.raises(SimulationCrashed, match="site 2 .*OSError: gone"):
        grid.pull_messages(["q1"])
    assert stopped.is_set() and grid.first_error.startswith("site 2")
    quiet = CrashAwareGrid(_Grid([]), threading.Event())
    assert list(quiet.get_node_ids()) == [1, 2]
    quiet.stopped.set()                              # the engine crashed
    with pytest.raises(SimulationCrashed, match="engine stopped"):
        quiet.get_node_ids()
