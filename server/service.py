"""`fedclinic server` (a SuperLink with TLS, persistent state, site authentication and the
operator gate) and `fedclinic run` (submit the federation to it as the operator and stream its
progress)."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import ConfigError
from common.private_files import private_dir
from runtime.environment import flower_env
from runtime.ports import PortInUse, check_port_free, free_port, wait_for_port
from runtime.processes import child_env, stop_process
from server.flower_contract import GRPC_SWITCHES
from server.run_events import (EVENTS_ENV, EVENTS_FILE, GLOBAL_TEST_ENV, MANIFESTS_ENV,
                               SITE_NAMES_ENV, SITE_NAMES_FILE)

if TYPE_CHECKING:             # the CLI imports this module for its defaults: Flower lazily
    from server.events import ServerEvents
    from server.loopback_tls import LoopbackTLS
    from server.operator_gate import Gate

LOOPBACK_HOST = "127.0.0.1"   # = server.loopback_tls.LOOPBACK_HOST

DEFAULT_ADDRESS = "0.0.0.0:8000"
DEFAULT_STATE = "fedclinic-server"


def split_address(address: str, what: str = "--address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}={address!r}: expected HOST:PORT, e.g. 0.0.0.0:8000")
    return host.strip("[]"), int(port)


def address_free(host: str, port: int) -> None:
    """PortInUse (exit 2) naming the port if something already listens on --address: checked
    before the SuperLink starts or a site key is registered."""
    try:
        check_port_free(host or "0.0.0.0", port, "--address")
    except PortInUse:
        raise PortInUse(f"--address {host}:{port}: port {port} is already in use on this host "
                        f"(another `fedclinic server`, or another service, listens there); stop "
                        f"it or give another --address HOST:PORT") from None


def _local_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _certs(certs: Path) -> tuple[Path, Path, Path]:
    certs = certs.resolve()
    files = (certs / "ca.crt", certs / "server.crt", certs / "server.key")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"--certs {certs}: missing {', '.join(missing)}; create them with "
                          f"`fedclinic certs init` (its server/ folder)")
    return files


@dataclass
class RunningServer:
    """What `start_server` started: the SuperLink process, its log, and (with TLS) the gate."""

    process: subprocess.Popen
    log_file: Path
    gate: Gate | None = None
    events: ServerEvents | None = None

    def stop(self) -> None:
        stop_process(self.process)
        if self.gate is not None:
            self.gate.stop()
        if self.events is not None:
            self.events.stop()


def _superlink_command(state: Path, host: str, port: int, tls: LoopbackTLS | None,
                       site_auth: bool) -> list[str]:
    # Flower's `flower-superlink`, through server/superlink_child.py: it ends with this process
    # and takes the SuperExec and every flwr-serverapp with it
    command = [sys.executable, "-m", "server.superlink_child",
               "--database", str(state / "superlink.db"),
               "--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    if tls is None:
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.cert),
                    "--ssl-keyfile", str(tls.key)]
    if site_auth:
        command.append("--enable-supernode-auth")
    return command


def _spawn_superlink(command: list[str], state: Path, extra: dict[str, str] | None = None
                     ) -> tuple[subprocess.Popen, Path]:
    env = {**flower_env(state / "flwr-home"), **(extra or {})}
    env["FEDCLINIC_RUNS_DIR"] = str((state / "runs").resolve())
    env[EVENTS_ENV] = str((state / EVENTS_FILE).resolve())         # ServerApp -> console
    env[SITE_NAMES_ENV] = str((state / SITE_NAMES_FILE).resolve())  # node id -> site name
    for switch in GRPC_SWITCHES:      # no extra gRPC Control/Fleet server past the gate
        env.pop(switch, None)
    log_file = state / "superlink.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=child_env(env), cwd=state)
    return process, log_file


def _check_report_inputs(global_test: Path | None, manifests: Path | None) -> None:
    if global_test is not None and not (global_test.is_dir() or global_test.suffix == ".npz"
                                        and global_test.is_file()):
        raise ConfigError(f"--global-test {global_test}: not a .npz file or a data folder")
    if manifests is not None and not manifests.is_dir():
        raise ConfigError(f"--manifests {manifests}: not a folder")


def start_server(certs: Path | None, site_keys: Path | None, state: Path, address: str,
                 echo=print, *, global_test: Path | None = None,
                 manifests: Path | None = None) -> RunningServer:
    """Start the SuperLink and, with `certs`, the operator gate in front of it (server/
    operator_gate.py: the SuperLink on 127.0.0.1 only, the public `address` for sites and the
    operator certificate); register the site keys. No `certs`: the SuperLink itself on
    `address`, without TLS (local tests only)."""
    host, port = split_address(address)
    address_free(host, port)
    extra = {name: str(path.resolve()) for name, path in
             ((GLOBAL_TEST_ENV, global_test), (MANIFESTS_ENV, manifests)) if path is not None}
    # the SuperLink's database, the runs (models, reports, privacy ledgers): the owner's only
    state = private_dir(state.resolve(), tighten=True)
    private_dir(state / "runs", tighten=True)
    if certs is None:
        process, log_file = _spawn_superlink(
            _superlink_command(state, host, port, None, site_keys is not None), state, extra)
        try:
            wait_for_port(_local_host(host), port, 120, process, log_file)
        except BaseException:
            stop_process(process)
            raise
        return RunningServer(process, log_file)
    return _start_gated(certs, site_keys, state, host, port, echo, extra)


def _start_gated(certs: Path, site_keys: Path | None, state: Path, host: str, port: int,
                 echo, extra: dict[str, str] | None = None) -> RunningServer:
    from server.control import connect
    from server.enrollment import sync_sites
    from server.events import ServerEvents
    from server.flower_contract import check_flower
    from server.loopback_tls import make_loopback_tls
    from server.operator_gate import Gate, GateConfig

    check_flower()
    ca, crt, key = _certs(certs)
    loopback = make_loopback_tls(state / "loopback-tls")
    inner = free_port()
    process, log_file = _spawn_superlink(
        _superlink_command(state, LOOPBACK_HOST, inner, loopback, site_keys is not None), state,
        extra)
    running = RunningServer(process, log_file)
    try:
        wait_for_port(LOOPBACK_HOST, inner, 120, process, log_file)
        if site_keys is not None:
            control = connect(f"{LOOPBACK_HOST}:{inner}", loopback.ca_cert, operator=False)
            try:
                sync_sites(control, site_keys, echo)
            finally:
                control.close()
        running.events = ServerEvents(
            state, lambda: connect(f"{LOOPBACK_HOST}:{inner}", loopback.ca_cert, operator=False),
            echo)
        running.events.start()
        running.gate = Gate(GateConfig(host, port, crt, key, ca, inner, loopback.ca_cert), echo)
        running.gate.on_operator_request = running.events.operator_request
        running.gate.start()
    except BaseException:
        running.stop()
        raise
    return running


def serve(certs: Path | None, site_keys: Path | None, state: Path, address: str, *,
          global_test: Path | None = None, manifests: Path | None = None) -> int:
    """Run the server until the SuperLink exits or it is stopped; no `certs` = insecure (no TLS,
    no site or operator authentication). `global_test`, `manifests`: what the deployed runs'
    reports use (server/run_events.py). Returns the exit code for the shell."""
    _check_report_inputs(global_test, manifests)
    if certs is None:
        print("fedclinic server: WARNING --insecure: no TLS, no site or operator "
              "authentication; for local tests only", file=sys.stderr)
    echo = lambda line: print(line, flush=True)  # noqa: E731
    running = start_server(certs, site_keys, state, address, echo, global_test=global_test,
                           manifests=manifests)
    mode = ("TLS; sites by their keys; the Control API for the operator certificate only"
            if certs else "INSECURE")
    print(f"fedclinic server: SuperLink up on {address} ({mode}); state {state.resolve()}; "
          f"runs in {(state / 'runs').resolve()}; log {running.log_file.resolve()}", flush=True)
    # The handler only forwards the signal: waiting inside it would deadlock on Popen's lock.
    signal.signal(signal.SIGTERM, lambda *_: running.process.terminate())
    try:
        code = _wait(running)
    except KeyboardInterrupt:
        running.stop()
        return 130
    if running.gate is not None:
        running.gate.stop()
    if running.events is not None:
        running.events.stop()
    return 0 if code in (0, -signal.SIGTERM) else code


def _wait(running: RunningServer) -> int:
    """The SuperLink's exit code; if the gate dies first, stop the SuperLink and return 1."""
    while True:
        try:
            return running.process.wait(1.0)
        except subprocess.TimeoutExpired:
            if running.gate is not None and not running.gate.alive():
                print("fedclinic server: the gate stopped; stopping the SuperLink",
                      file=sys.stderr, flush=True)
                stop_process(running.process)
                return 1


# ----------------------------------------------------------------------------- fedclinic run


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"^\s*(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s*:\s*")
_RUN_DIR = re.compile(r"^fedclinic: run directory (.+)$")
_RESUMING = re.compile(r"^fedclinic: resuming (\S+) after round")
_FAILURE = re.compile(r"^\w*(?:Error|Exception)\b")


def run_line(line: str) -> str | None:
    """What `fedclinic run` shows of one log line of its run: fedclinic's own lines (the round
    lines, which name sites by their registered names, and its notes) and a Python error, without
    Flower's colour codes and level prefix; None for Flower's own lines (they name nodes by id;
    --verbose shows them). Flower's strategy loop logs the run config it sends ("ConfigRecord
    (train): {... 'fedclinic-run': ...}"): not shown, though it names us."""
    text = _LEVEL.sub("", _COLOUR.sub("", line)).strip()
    if not text or "ConfigRecord (" in text:
        return None
    if text.startswith(("[round", "fedclinic:", "fedclinic ")) or _FAILURE.match(text):
        return text
    return None


@dataclass(frozen=True)
class OperatorLogin:
    """How `fedclinic run` reaches the server: the consortium CA (to verify the server) and the
    operator's client certificate and key (what lets it use the Control API)."""

    ca_cert: Path
    cert: Path
    key: Path


def submit_run(server: str, login: OperatorLogin | None, overrides: dict[str, object], *,
               detach: bool = False, verbose: bool = False) -> int:
    """Submit a run with these run-config `overrides` to the server at `server` as the operator
    (`login`; None = without TLS, an --insecure server) and, unless `detach`, follow it; 0 only
    if the run completed. Losing the server while following says the run's name and the exact
    command that resumes it (exit code 1)."""
    from server.control import ServerUnreachable, follow, operator_session, start_run

    ca, operator = (None, None) if login is None else (login.ca_cert, (login.cert, login.key))
    seen = _RunSeen(str(overrides.get("resume") or ""))
    run_id = None
    try:
        with operator_session(server, ca, operator, "start a run") as control:
            run_id = start_run(control, overrides)
            print(f"fedclinic run: submitted run {run_id} to {server}", flush=True)
            if detach:
                return 0
            state = follow(control, run_id, lambda line: seen.show(line, verbose))
    except ServerUnreachable as exc:
        if run_id is None:
            raise
        print(lost_server(server, login, run_id, seen.name, exc.reason or str(exc)),
              file=sys.stderr, flush=True)
        return 1
    if state.sub_status != "completed":
        print(f"fedclinic run: run {run_id} ({seen.name or 'no run name yet'}) "
              f"{state.sub_status}: {state.details}", file=sys.stderr)
        if seen.name and seen.rounds_done:
            print(f"fedclinic run: to continue it from its last complete round: "
                  f"{resume_command(server, login, seen.name)}", file=sys.stderr)
        return 1
    print(f"fedclinic run: run {run_id} ({seen.name}) completed", flush=True)
    return 0


class _RunSeen:
    """What `fedclinic run` learnt from its run's log: the run name, whether a round finished."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.rounds_done = False

    def show(self, line: str, verbose: bool) -> None:
        text = run_line(line)
        if verbose:
            print(line, flush=True)
        if text is None:
            return
        found = _RUN_DIR.match(text) or _RESUMING.match(text)
        if found and not self.name:
            self.name = Path(found[1].strip()).name
            if not verbose:
                print(f"fedclinic run: run name {self.name} (the run's folder in the server's "
                      f"runs/; `--resume {self.name}` continues it)", flush=True)
            return
        self.rounds_done = self.rounds_done or (text.startswith("[round")
                                                and not text.startswith("[round 0/"))
        if not verbose:
            print(text, flush=True)


def resume_command(server: str, login: OperatorLogin | None, run_name: str) -> str:
    """The exact `fedclinic run` command that resumes `run_name` with the same credentials."""
    words = ["fedclinic", "run", "--server", server]
    if login is None:
        words.append("--insecure")
    else:
        words += ["--ca-cert", str(login.ca_cert), "--operator-cert", str(login.cert),
                  "--operator-key", str(login.key)]
    return shlex.join(words + ["--resume", run_name])


def lost_server(server: str, login: OperatorLogin | None, run_id: int, run_name: str,
                reason: str) -> str:
    """What `fedclinic run` says when the server stops answering while it follows a run."""
    if not run_name:
        return (f"fedclinic run: lost the server at {server} before run {run_id} had a run "
                f"name ({reason}); nothing was trained: once the server is back, submit the "
                f"run again")
    return (f"fedclinic run: lost the server at {server} while following run {run_id} "
            f"({run_name}): {reason}. The completed rounds are checkpointed on the server; "
            f"once it is back (same --state), continue from the last complete round with:\n"
            f"  {resume_command(server, login, run_name)}")
