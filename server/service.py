"""`fedclinic server` (a SuperLink with TLS, persistent state, site authentication and the
operator gate) and `fedclinic run` (submit the federation to it as the operator and stream its
progress)."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import ConfigError
from common.private_files import private_dir
from runtime.environment import flower_env
from runtime.ports import free_port, wait_for_port
from runtime.processes import stop_process
from server.flower_contract import GRPC_SWITCHES

if TYPE_CHECKING:             # the CLI imports this module for its defaults: Flower lazily
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

    def stop(self) -> None:
        stop_process(self.process)
        if self.gate is not None:
            self.gate.stop()


def _superlink_command(state: Path, host: str, port: int, tls: LoopbackTLS | None,
                       site_auth: bool) -> list[str]:
    command = [str(Path(sys.executable).with_name("flower-superlink")),
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


def _spawn_superlink(command: list[str], state: Path) -> tuple[subprocess.Popen, Path]:
    env = flower_env(state / "flwr-home")
    env["FEDCLINIC_RUNS_DIR"] = str((state / "runs").resolve())
    for switch in GRPC_SWITCHES:      # no extra gRPC Control/Fleet server past the gate
        env.pop(switch, None)
    log_file = state / "superlink.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=state)
    return process, log_file


def start_server(certs: Path | None, site_keys: Path | None, state: Path, address: str,
                 echo=print) -> RunningServer:
    """Start the SuperLink and, with `certs`, the operator gate in front of it (server/
    operator_gate.py: the SuperLink on 127.0.0.1 only, the public `address` for sites and the
    operator certificate); register the site keys. No `certs`: the SuperLink itself on
    `address`, without TLS (local tests only)."""
    host, port = split_address(address)
    # the SuperLink's database, the runs (models, reports, privacy ledgers): the owner's only
    state = private_dir(state.resolve(), tighten=True)
    private_dir(state / "runs", tighten=True)
    if certs is None:
        process, log_file = _spawn_superlink(
            _superlink_command(state, host, port, None, site_keys is not None), state)
        try:
            wait_for_port(_local_host(host), port, 120, process, log_file)
        except BaseException:
            stop_process(process)
            raise
        return RunningServer(process, log_file)
    return _start_gated(certs, site_keys, state, host, port, echo)


def _start_gated(certs: Path, site_keys: Path | None, state: Path, host: str, port: int,
                 echo) -> RunningServer:
    from server.control import connect
    from server.enrollment import sync_sites
    from server.flower_contract import check_flower
    from server.loopback_tls import make_loopback_tls
    from server.operator_gate import Gate, GateConfig

    check_flower()
    ca, crt, key = _certs(certs)
    loopback = make_loopback_tls(state / "loopback-tls")
    inner = free_port()
    process, log_file = _spawn_superlink(
        _superlink_command(state, LOOPBACK_HOST, inner, loopback, site_keys is not None), state)
    running = RunningServer(process, log_file)
    try:
        wait_for_port(LOOPBACK_HOST, inner, 120, process, log_file)
        if site_keys is not None:
            control = connect(f"{LOOPBACK_HOST}:{inner}", loopback.ca_cert, operator=False)
            try:
                sync_sites(control, site_keys, echo)
            finally:
                control.close()
        running.gate = Gate(GateConfig(host, port, crt, key, ca, inner, loopback.ca_cert), echo)
        running.gate.start()
    except BaseException:
        running.stop()
        raise
    return running


def serve(certs: Path | None, site_keys: Path | None, state: Path, address: str) -> int:
    """Run the server until the SuperLink exits or it is stopped; no `certs` = insecure (no TLS,
    no site or operator authentication). Returns the exit code for the shell."""
    if certs is None:
        print("fedclinic server: WARNING --insecure: no TLS, no site or operator "
              "authentication; for local tests only", file=sys.stderr)
    echo = lambda line: print(line, flush=True)  # noqa: E731
    running = start_server(certs, site_keys, state, address, echo)
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


def _is_progress(line: str) -> bool:
    """fedclinic's own lines and errors. Flower's strategy loop logs the run config it sends
    ("ConfigRecord (train): {... 'fedclinic-run': ...}"): not progress, though it names us."""
    text = line.strip()
    if "ConfigRecord (" in text:
        return False
    return text.startswith("[round") or "fedclinic" in text or "Error" in text


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
    if the run completed."""
    from server.control import follow, operator_session, start_run

    ca, operator = (None, None) if login is None else (login.ca_cert, (login.cert, login.key))
    with operator_session(server, ca, operator, "start a run") as control:
        run_id = start_run(control, overrides)
        print(f"fedclinic run: submitted run {run_id} to {server}", flush=True)
        if detach:
            return 0
        echo = (lambda line: print(line, flush=True)) if verbose else (
            lambda line: _is_progress(line) and print(line.strip(), flush=True))
        state = follow(control, run_id, echo)
    if state.sub_status != "completed":
        print(f"fedclinic run: run {run_id} {state.sub_status}: {state.details}", file=sys.stderr)
        return 1
    print(f"fedclinic run: run {run_id} completed", flush=True)
    return 0
