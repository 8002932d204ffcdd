"""A whole consortium on one machine, as real processes on loopback: for tests and benchmarks.

Every process is started through the real console command (`fedclinic server`, `fedclinic
site`), with TLS and site keys from `fedclinic certs`, on free ports, with its own FLWR_HOME
under a temporary folder; `run`/`submit` present the operator certificate `certs init` wrote
(`operator=False`: only ca.crt, which the server refuses). Readiness is polled (ports, log
lines, files), never slept for, and every process is torn down by its process group id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.ports import free_port
from runtime.process_table import process_table
from runtime.processes import kill_group


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = 0.2) -> object:
    """Poll `predicate` until it returns something truthy; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"^\s*(?:DEBUG|INFO|WARNING|ERROR)\s*:")


def _log_text(line: str) -> str:
    """What a Flower log line says, without its colour codes and level."""
    return _LEVEL.sub("", _COLOUR.sub("", line)).strip()


def _process_table() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live, non-zombie process (Linux /proc)."""
    return [(p.pid, p.ppid, p.pgrp) for p in process_table()]


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for child, parent, _ in _process_table():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


@dataclass
class Loopback:
    """A server and sites under `root`, driven through the `fedclinic` command."""

    root: Path
    certs: Path                       # output of `fedclinic certs init`
    data: list[Path]                  # one data path per site
    port: int = field(default_factory=free_port)
    policy: Path | None = None        # every site's --policy file unless start_site names one
    auto_runtime_port: bool = False   # sites pick their own --runtime-port (none is passed)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)   # output length when each was started

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def server_state(self) -> Path:
        return self.root / "server"

    def site_state(self, i: int) -> Path:
        return self.root / f"site-{i}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env["FEDCLINIC_CLIENT_THREADS"] = env.get("FEDCLINIC_CLIENT_THREADS", "1")
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self._seen[name] = len(self.output(name))     # a restart appends to the same file
        with open(self.root / f"{name}.out", "ab") as log:   # the child keeps its own handle
            process = subprocess.Popen([sys.executable, "-m", "fedclinic.cli", *args],
                                       stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                       cwd=self.root, start_new_session=True)
        self.processes[name] = process
        return process

    def output(self, name: str) -> str:
        path = self.root / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def latest_output(self, name: str) -> str:
        """Output of the latest start of `name` only."""
        return self.output(name)[self._seen.get(name, 0):]

    def start_server(self, timeout: float = 180) -> None:
        self._spawn("server", ["server", "--certs", str(self.certs / "server"),
                               "--site-keys", str(self.certs / "site-keys"),
                               "--state", str(self.server_state), "--address", self.address])
        wait_until(lambda: "SuperLink up" in self.latest_output("server") or self._dead("server"),
                   timeout, "the server to come up")
        if self._dead("server"):
            raise RuntimeError(f"the server exited:\n{self.output('server')}")

    def start_site(self, i: int, *, ca_cert: Path | None = None, key: Path | None = None,
                   extra: list[str] | None = None, name: str | None = None,
                   policy: Path | None = None) -> subprocess.Popen:
        """`fedclinic site` for site i; `policy` is its --policy file (default: `self.policy`,
        else none, i.e. fedclinic's default policy: DP required)."""
        site_dir = self.certs / "sites" / f"site-{i}"
        policy = policy or self.policy
        args = ["site", "--server", self.address,
                "--ca-cert", str(ca_cert or site_dir / "ca.crt"),
                "--site-key", str(key or site_dir / f"site-{i}.key"),
                "--site-id", str(i), "--data", str(self.data[i]),
                "--state", str(self.site_state(i)),
                *([] if self.auto_runtime_port else ["--runtime-port", str(free_port())]),
                *(["--policy", str(policy)] if policy else []), *(extra or [])]
        return self._spawn(name or f"site-{i}", args)

    def wait_site_connected(self, i: int, timeout: float = 180) -> None:
        wait_until(lambda: "connecting to" in self.latest_output(f"site-{i}")
                   or self._dead(f"site-{i}"),
                   timeout, f"site {i} to start")
        if self._dead(f"site-{i}"):
            raise RuntimeError(f"site {i} exited:\n{self.output(f'site-{i}')}")

    def _dead(self, name: str) -> bool:
        return self.processes[name].poll() is not None

    def alive(self, name: str) -> bool:
        return not self._dead(name)

    def train_messages_received(self, i: int) -> int:
        """How many train messages site i's SuperNode has received so far (from its log): a
        "Receiving: train message" line counts once the next line says the receipt completed.

        Counting the "Receiving" line alone let a test kill the server while a pull was still
        under way; Flower 1.41's SuperNode then keeps that task's reply and sends it in place of
        the next run's reply (it pairs one pull with one push), so a resumed round waits for a
        reply that never comes."""
        path = self.site_state(i) / "supernode.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = [said for said in map(_log_text, text.splitlines()) if said]
        return sum(1 for line, after in zip(lines, lines[1:])
                   if line.startswith("Receiving: train message")
                   and after == "Received successfully")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        kill_group(self.processes[name], sig)

    def signal_only(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the `fedclinic` process itself, not its group: what its children do then is
        theirs to do (`kill` takes the whole group down)."""
        self.processes[name].send_signal(sig)

    def child_pids(self, name: str) -> list[int]:
        """Pids of every live descendant of the `fedclinic` process `name` (Linux /proc)."""
        return descendants(self.processes[name].pid)

    def group_pids(self, name: str) -> list[int]:
        """Pids of every live process in the process group `name` was started in (its children
        stay there after it died, reparented: the orphans a test looks for)."""
        return [pid for pid, _, group in _process_table() if group == self.processes[name].pid]

    @property
    def operator_cert(self) -> tuple[Path, Path]:
        """The operator's credential that `certs init` wrote (certificate, key)."""
        return (self.certs / "operator" / "operator.crt",
                self.certs / "operator" / "operator.key")

    def ca_only(self) -> Path:
        """A folder holding nothing but a copy of ca.crt: what any party may have."""
        folder = self.root / "ca-only"
        folder.mkdir(exist_ok=True)
        (folder / "ca.crt").write_bytes((self.certs / "ca" / "ca.crt").read_bytes())
        return folder / "ca.crt"

    def _login(self, operator: bool) -> list[str]:
        """`fedclinic run`'s credential flags: the operator's (default), or only ca.crt."""
        if not operator:
            return ["--ca-cert", str(self.ca_only())]
        cert, key = self.operator_cert
        return ["--ca-cert", str(self.certs / "ca" / "ca.crt"), "--operator-cert", str(cert),
                "--operator-key", str(key)]

    def run(self, *options: str, timeout: float = 600, operator: bool = True
            ) -> subprocess.CompletedProcess:
        """`fedclinic run` against this server, followed to the end; as the operator unless
        `operator` is False (then with only ca.crt, which the server refuses)."""
        return self.fedclinic("run", "--server", self.address, *self._login(operator),
                              *options, timeout=timeout)

    def submit(self, *options: str, operator: bool = True) -> subprocess.Popen:
        """`fedclinic run` in the background (for killing things while it runs)."""
        return self._spawn("run", ["run", "--server", self.address, *self._login(operator),
                                   *options])

    def fedclinic(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Any `fedclinic` command, run to the end in this consortium's folder."""
        return subprocess.run([sys.executable, "-m", "fedclinic.cli", *args],
                              capture_output=True, text=True, env=self._env(), cwd=self.root,
                              timeout=timeout)

    def run_dirs(self) -> list[Path]:
        runs = self.server_state / "runs"
        return sorted(p for p in runs.glob("*") if p.is_dir()) if runs.exists() else []

    def rounds_done(self, run_dir: Path) -> list[int]:
        path = run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["round"] for line in path.read_text().splitlines() if line]

    def close(self) -> None:
        for process in self.processes.values():
            kill_group(process, signal.SIGTERM)
