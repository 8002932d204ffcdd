"""A site's processes live and die together, restart cleanly and say why they stop (issue 15,
items 3 and 4): real `fedclinic server` and `fedclinic site` processes on loopback.

* SIGKILL of `fedclinic site` (its process alone, not its group) takes its SuperNode with it;
  the same start command brings the site back and it trains again within two rounds;
* SIGTERM while a task runs ends the site (exit 0) with no child left;
* three sites on one host start without --runtime-port;
* a refused activation of a known key whose old session is online is retried for
  --activation-wait (exit 1 after it), an unknown key fails at once (exit 2: tests/test_deploy.py,
  with the wrong CA); a taken --runtime-port and a bad policy file are exit 2 (tests/test_cli.py).

The unit tests at the top check the parent-death mechanism itself in plain processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import RunConfig
from deploy.certs import init_consortium, new_site_key
from deploy.loopback import Loopback, descendants, wait_until
from simulations.export import export_sites

ROOT = Path(__file__).resolve().parents[1]
RUN = ("--sites", "3", "--model", "cnn", "--width", "4", "--num-samples", "240",
       "--batch-size", "32")
TEST_POLICY = """\
require_dp = false
max_epsilon_per_run = 8.0
lifetime_epsilon = 1000.0
train_loss = "exact"      # without DP only; under DP the loss and test metrics stay local
test_metrics = "exact"
"""     # the same permissive policy as tests/test_deploy.py: these runs are dp=off


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


# ------------------------------------------------------- the mechanism, in plain processes

CHILD = """
import sys, time
import runtime.processes as processes
if sys.argv[1] == "thread-only":
    processes._set_parent_death_signal = lambda sig: False    # the portable fallback alone
processes.die_with_parent()
print("armed", flush=True)
time.sleep(600)
"""

PARENT = """
import subprocess, sys, os, time
from runtime.processes import child_env
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                         env=child_env(dict(os.environ)), stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["prctl", "thread-only"])
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_a_child_dies_when_its_parent_is_sigkilled(mode):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, mode], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.kill()                                   # SIGKILL: the parent runs no code
        parent.wait()
        wait_until(lambda: not _alive(child), 30, f"the child ({mode}) to end with its parent")
    finally:
        parent.kill()


def test_a_taken_port_is_named_and_a_foreign_listener_is_told_apart():
    import socket

    from runtime.ports import PortInUse, check_port_free, free_port, listens_on

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUse, match=f"--runtime-port {port}: 127.0.0.1:{port} is already"):
            check_port_free("127.0.0.1", port, "--runtime-port")
        if Path("/proc/net/tcp").exists():
            assert listens_on(os.getpid(), port) is True
            assert listens_on(os.getppid(), port) is False
    check_port_free("127.0.0.1", free_port(), "--runtime-port")    # free: no error


def test_the_node_id_kept_belongs_to_one_key_at_one_server(tmp_path):
    from client.activation import node_id_in, record_node, recorded_node

    key, _ = new_site_key(tmp_path / "keys", "site-a")
    other, _ = new_site_key(tmp_path / "keys", "site-b")
    assert node_id_in("INFO : SuperNode ID: 12\n...\nINFO : SuperNode ID: 345\n") == 345
    assert recorded_node(tmp_path, "h:1", key, "SuperNode ID: 7") == 7   # no node.json: the log
    record_node(tmp_path, "h:1", key, 99)
    assert (tmp_path / "node.json").stat().st_mode & 0o777 == 0o600
    assert recorded_node(tmp_path, "h:1", key) == 99
    assert recorded_node(tmp_path, "h:2", key) is None                  # another server
    assert recorded_node(tmp_path, "h:1", other, "SuperNode ID: 7") is None   # another key


# ---------------------------------------------------------------- a consortium on loopback

@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    init_consortium(root / "certs", ["localhost"], ["127.0.0.1"], ["site-0", "site-1", "site-2"])
    data = export_sites(RunConfig(sites=3, num_samples=240), root / "data")
    lb = Loopback(root / "run", root / "certs", data, policy=root / "test-policy.toml",
                  auto_runtime_port=True)
    lb.policy.write_text(TEST_POLICY)
    lb.root.mkdir()
    lb.start_server()
    for i in range(3):
        lb.start_site(i)
    for i in range(3):
        _wait_joined(lb, i)
    yield lb
    lb.close()


@pytest.fixture(autouse=True)
def _sites_up(request):
    """Each consortium test starts with its three sites up and no run being followed, whatever
    the previous one left (a failed assertion there must not fail every later test)."""
    if "consortium" not in request.fixturenames:
        yield
        return
    lb = request.getfixturevalue("consortium")
    run = lb.processes.get("run")
    if run is not None and run.poll() is None:
        run.kill()
        run.wait()
    for i in range(3):
        if not lb.alive(f"site-{i}"):
            lb.start_site(i)
            _wait_joined(lb, i)
    yield


def _wait_joined(lb: Loopback, i: int, name: str | None = None) -> int:
    """Wait until site i's latest start says it joined; its node id."""
    name = name or f"site-{i}"
    found = wait_until(lambda: re.search(r"joined \S+ as node (\d+)", lb.latest_output(name))
                       or lb._dead(name), 240, f"{name} to join")
    assert lb.alive(name), lb.latest_output(name)
    return int(found[1])


def _new_run_dir(lb: Loopback, before: set[Path]) -> Path:
    return wait_until(lambda: next(iter(set(lb.run_dirs()) - before), None), 300,
                      "the new run directory")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _no_process_left(lb: Loopback, name: str, pids: list[int]) -> bool:
    return not any(map(_alive, pids)) and not lb.group_pids(name)


def test_three_sites_on_one_host_start_without_runtime_port(consortium):
    lb = consortium
    ports = set()
    for i in range(3):
        assert "--runtime-port" not in lb.processes[f"site-{i}"].args
        ports |= set(re.findall(r"runtime port 127\.0\.0\.1:(\d+)", lb.latest_output(f"site-{i}")))
        assert lb.child_pids(f"site-{i}"), "its SuperNode runs as its child"
    assert len(ports) == 3, ports                     # each chose its own


@pytest.mark.slow   # ~50 s on 2 cores: a fault test (CI runs it, `-m slow`)
def test_sigterm_during_a_task_ends_the_site_and_its_supernode(consortium):
    lb = consortium
    before = set(lb.run_dirs())
    received = lb.train_messages_received(1)
    # A long local training, so that SIGTERM lands inside it: 60 epochs took 1.7 s of ClientApp
    # time here and finished before the signal on a faster CI host; 600 take ~15 s.
    lb.submit(*RUN, "--rounds", "1", "--local-epochs", "600", "--min-sites", "2")
    run_dir = _new_run_dir(lb, before)
    site = lb.processes["site-1"]
    wait_until(lambda: lb.train_messages_received(1) > received, 300, "site 1's train task")
    cpu = _cpu_seconds(site.pid)
    wait_until(lambda: _cpu_seconds(site.pid) > cpu + 0.5, 120, "site 1 to be training")
    audit_path = lb.site_state(1) / "audit.jsonl"      # written with the first reply
    replied = [e for e in _lines(audit_path)
               if e["event"] == "reply"] if audit_path.exists() else []
    assert not replied, f"site 1 finished its task before the signal: {replied}"
    children = lb.child_pids("site-1")
    stopped_at = time.monotonic()
    lb.signal_only("site-1", signal.SIGTERM)
    assert site.wait(60) == 0, lb.latest_output("site-1")
    took = time.monotonic() - stopped_at
    wait_until(lambda: _no_process_left(lb, "site-1", children), 30, "site 1's SuperNode to end")
    audit = _lines(lb.site_state(1) / "audit.jsonl")
    assert [e for e in audit if e["event"] == "task-interrupted"], audit[-3:]
    print(f"\nSIGTERM during a task: the site exited after {took:.1f} s")
    assert lb.processes["run"].wait(600) == 0, lb.latest_output("run")
    (line,) = _lines(run_dir / "metrics.jsonl")[1:]
    assert "1" not in line["sites"] and sorted(line["sites"]) == ["0", "2"]
    lb.start_site(1)                                  # back for the next tests: it signed off,
    _wait_joined(lb, 1)                               # so it is activated at once


@pytest.mark.slow   # ~80 s on 2 cores: a fault test (CI runs it, `-m slow`)
def test_sigkill_of_a_site_takes_its_supernode_and_the_same_command_brings_it_back(consortium):
    lb = consortium
    rounds = 12              # room for the restart (imports, validation) on a busy host
    before = set(lb.run_dirs())
    lb.submit(*RUN, "--rounds", str(rounds), "--local-epochs", "1", "--min-sites", "2",
              "--round-timeout", "120")
    run_dir = _new_run_dir(lb, before)
    wait_until(lambda: 1 in lb.rounds_done(run_dir), 600, "round 1")
    received = lb.train_messages_received(2)
    audit_path = lb.site_state(2) / "audit.jsonl"
    audited = len(_lines(audit_path)) if audit_path.exists() else 0
    wait_until(lambda: lb.train_messages_received(2) > received, 120,
               "site 2 to receive the next round")          # so the kill lands mid-round
    children = lb.child_pids("site-2")
    assert children
    under_way = max(lb.rounds_done(run_dir)) + 1
    killed_at = time.monotonic()
    lb.signal_only("site-2", signal.SIGKILL)          # the site's process alone, no clean-up
    # On a fast host site 2 can finish the round's 2 training steps and reply before the
    # signal; the round then holds its train reply but no evaluation from it.
    replied = [e for e in (_lines(audit_path) if audit_path.exists() else [])[audited:]
               if e["event"] == "reply" and e.get("round") == under_way
               and str(e.get("type", "")).startswith("train")]
    wait_until(lambda: _no_process_left(lb, "site-2", children), 60,
               "site 2's SuperNode to end with it (no orphan)")
    orphan_gone = time.monotonic() - killed_at
    wait_until(lambda: under_way in lb.rounds_done(run_dir), 600, f"round {under_way}")
    round_wait = time.monotonic() - killed_at
    restarted_at = time.monotonic()
    lb.start_site(2)                                  # the same command, nothing cleaned up
    node = _wait_joined(lb, 2)
    rejoin = time.monotonic() - restarted_at
    back = max(lb.rounds_done(run_dir))
    assert back + 2 <= rounds, f"site 2 took until round {back} to rejoin; no round left"
    assert lb.processes["run"].wait(900) == 0, lb.latest_output("run")
    lines = _lines(run_dir / "metrics.jsonl")
    assert [line["round"] for line in lines] == list(range(rounds + 1))
    assert "skipped" not in lines[under_way]
    if replied:                                       # audited before it is pushed
        assert not lines[under_way]["sites"].get("2", {}).get("test"), lines[under_way]
    else:
        assert "2" not in lines[under_way]["sites"]
    for line in lines[back + 2:]:                     # within two rounds it trains again
        assert sorted(line["sites"]) == ["0", "1", "2"], line["round"]
    record = json.loads((lb.site_state(2) / "node.json").read_text())
    assert record["node_id"] == node
    print(f"\nSIGKILL of a site: its SuperNode gone after {orphan_gone:.1f} s; round "
          f"{under_way} done {round_wait:.1f} s after the kill; the restarted site joined "
          f"{rejoin:.1f} s after its start and trained from round {back + 1} or {back + 2}")


def test_a_key_the_server_does_not_know_fails_at_once_with_exit_2(consortium):
    """The server's 401 to a signed request for the node id the site kept (here: a key that
    was never registered, with a node record as a revoked site's state folder would hold)."""
    from client.activation import record_node

    lb = consortium
    state = lb.root / "revoked-state"
    state.mkdir()
    key, _ = new_site_key(lb.root / "revoked", "revoked")
    record_node(state, lb.address, key, _wait_joined(lb, 1))
    site = lb.start_site(1, key=key, extra=["--state", str(state)], name="revoked")
    assert site.wait(240) == 2
    out = lb.output("revoked")
    assert "does not know this site's key" in out and "answers 401" in out
    assert "Retrying" not in out


def test_a_known_key_whose_session_is_online_is_retried_for_the_activation_wait(consortium):
    lb = consortium
    twin = lb.root / "twin-of-site-0"
    twin.mkdir()
    shutil.copy(lb.site_state(0) / "node.json", twin / "node.json")   # site 0 joined from it
    site = lb.start_site(0, extra=["--state", str(twin), "--activation-wait", "6"],
                         name="twin")
    assert site.wait(240) == 1                        # worth a restart, not a credential error
    out = lb.output("twin")
    assert "still counts its previous session as online" in out
    assert "another SuperNode with this key is still connected" in out
    assert lb.alive("site-0")                          # the live session was not disturbed
    assert not descendants(site.pid)


def test_a_taken_server_address_is_exit_2_naming_the_port(consortium):
    lb = consortium
    done = lb.fedclinic("server", "--certs", str(lb.certs / "server"),
                        "--site-keys", str(lb.certs / "site-keys"),
                        "--state", str(lb.root / "second-server"), "--address", lb.address,
                        timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"port {lb.port} is already in use" in done.stderr, done.stderr
    assert not (lb.root / "second-server" / "superlink.db").exists()   # nothing was started


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow   # ~40 s on 2 cores: a fault test (CI runs it, `-m slow`)
def test_killing_the_server_mid_run_leaves_no_serverapp_and_run_says_how_to_resume(consortium):
    """Last in this module: it kills the module's server. SIGKILL of `fedclinic server` alone
    takes the SuperLink, its SuperExec and the run's flwr-serverapp with it; `fedclinic run`
    then names the run and prints the exact command that resumes it (exit 1)."""
    lb = consortium
    before = set(lb.run_dirs())
    lb.submit(*RUN, "--rounds", "30", "--local-epochs", "1", "--min-sites", "2")
    run_dir = _new_run_dir(lb, before)
    wait_until(lambda: 1 in lb.rounds_done(run_dir), 600, "round 1")
    flower = [pid for pid in lb.child_pids("server")
              if "flwr-serverapp" in _cmdline(pid) or "flower-superexec" in _cmdline(pid)]
    assert any("flwr-serverapp" in _cmdline(pid) for pid in flower), flower
    tree = lb.child_pids("server")
    lb.signal_only("server", signal.SIGKILL)
    wait_until(lambda: not any(map(_alive, tree)), 60,
               "the SuperLink, SuperExec and flwr-serverapp to end with the server")
    assert lb.processes["run"].wait(120) == 1
    said = lb.latest_output("run")
    assert f"lost the server at {lb.address} while following run" in said, said
    assert f"--resume {run_dir.name}" in said and "--operator-cert" in said, said
