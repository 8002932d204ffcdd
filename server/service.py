"""`fedclinic server` (a SuperLink with TLS, persistent state and site authentication) and
`fedclinic run` (submit the federation to it and stream its progress)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common.config import ConfigError, RunConfig, given_options

DEFAULT_ADDRESS = "0.0.0.0:8000"
DEFAULT_STATE = "fedclinic-server"


def split_address(address: str, what: str = "--address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}={address!r}: expected HOST:PORT, e.g. 0.0.0.0:8000")
    return host.strip("[]"), int(port)


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's processes: its console scripts on PATH (the SuperLink starts
    `flower-superexec` and `flwr-serverapp` by name), its own home, and no `uv sync` at run time."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    return env


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None,
                  log_file: Path | None = None) -> None:
    """Readiness polling: return once host:port accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            tail = log_file.read_text()[-2000:] if log_file and log_file.exists() else ""
            raise RuntimeError(f"the process exited with code {process.returncode} before "
                               f"{host}:{port} came up; log tail:\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} did not accept connections within "
                                   f"{timeout:.0f} s") from None
            time.sleep(0.1)


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


def _already_registered(exc: Exception) -> bool:
    """Flower answers a known public key with HTTP 412 'Public key already in use'."""
    response = getattr(exc, "response", None)
    body = getattr(response, "text", "") if response is not None else ""
    return (getattr(response, "status_code", None) == 412 or "already" in str(exc).lower()
            or "already in use" in body.lower())


def register_sites(control, site_keys: Path, echo) -> dict[str, int]:
    """Register every <name>.pub in `site_keys` (idempotent: known keys are skipped)."""
    from server.control import register_site_key

    keys = sorted(site_keys.glob("*.pub"))
    if not keys:
        raise ConfigError(f"--site-keys {site_keys}: no <site>.pub files; each hospital's public "
                          f"key goes there (`fedclinic certs init` or `fedclinic certs add-site`)")
    nodes = {}
    for key in keys:
        try:
            nodes[key.stem] = register_site_key(control, key, key.stem)
            echo(f"fedclinic server: registered site {key.stem} as node {nodes[key.stem]}")
        except Exception as exc:  # noqa: BLE001 - Flower reports a known key as an error
            if not _already_registered(exc):
                raise ConfigError(f"{key}: the SuperLink refused this site key ({exc})") from None
            echo(f"fedclinic server: site {key.stem} was registered before (kept in the "
                 f"server's database)")
    return nodes


def start_server(certs: Path | None, site_keys: Path | None, state: Path, address: str,
                 echo=print) -> tuple[subprocess.Popen, Path]:
    """Start the SuperLink (returns its process and log file) and register the site keys."""
    host, port = split_address(address)
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    (state / "runs").mkdir(exist_ok=True)
    command = [str(Path(sys.executable).with_name("flower-superlink")),
               "--database", str(state / "superlink.db"),
               "--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    ca = None
    if certs is None:
        command.append("--insecure")
    else:
        ca, crt, key = _certs(certs)
        command += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(crt),
                    "--ssl-keyfile", str(key)]
    if site_keys is not None:
        command.append("--enable-supernode-auth")
    env = flower_env(state / "flwr-home")
    env["FEDCLINIC_RUNS_DIR"] = str((state / "runs").resolve())
    log_file = state / "superlink.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=state)
    try:
        wait_for_port(_local_host(host), port, 120, process, log_file)
        if site_keys is not None:
            from server.control import connect

            control = connect(f"{_local_host(host)}:{port}", ca)
            try:
                register_sites(control, site_keys, echo)
            finally:
                control.close()
    except BaseException:
        stop_process(process)
        raise
    return process, log_file


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _serve(args: argparse.Namespace) -> int:
    certs = None if args.insecure else Path(args.certs)
    if args.insecure:
        print("fedclinic server: WARNING --insecure: no TLS, no site authentication; for local "
              "tests only", file=sys.stderr)
    site_keys = None if args.insecure else Path(args.site_keys)
    state = Path(args.state)
    process, log_file = start_server(certs, site_keys, state, args.address)
    print(f"fedclinic server: SuperLink up on {args.address} "
          f"({'TLS, site authentication' if certs else 'INSECURE'}); state {state.resolve()}; "
          f"runs in {(state / 'runs').resolve()}; log {log_file.resolve()}", flush=True)
    # The handler only forwards the signal: waiting inside it would deadlock on Popen's lock.
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        code = process.wait()
    except KeyboardInterrupt:
        stop_process(process)
        return 130
    return 0 if code in (0, -signal.SIGTERM) else code


def add_server_parser(sub) -> None:
    p = sub.add_parser(
        "server", help="run the consortium's coordinator (a Flower SuperLink with TLS)",
        description="Start the coordinator: a Flower SuperLink serving TLS on one port, keeping "
                    "its state in a database under --state (runs survive a restart), accepting "
                    "only the sites whose public keys are in --site-keys. Sites connect out to "
                    "this port; `fedclinic run` submits runs to it.")
    p.add_argument("--certs", default="fedclinic-certs/server",
                   help="folder with ca.crt, server.crt and server.key from `fedclinic certs "
                        "init` (default: fedclinic-certs/server)")
    p.add_argument("--site-keys", default="fedclinic-certs/site-keys",
                   help="folder of <site>.pub public keys; only these sites may join "
                        "(default: fedclinic-certs/site-keys)")
    p.add_argument("--state", default=DEFAULT_STATE,
                   help="folder for the SuperLink database (superlink.db), run directories "
                        f"(runs/) and the log (default: {DEFAULT_STATE})")
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help="HOST:PORT to serve; the one port sites and `fedclinic run` reach "
                        f"(default: {DEFAULT_ADDRESS})")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no site authentication, for a local test only (default: off)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")
    p.set_defaults(func=_serve)


# ----------------------------------------------------------------------------- fedclinic run


def overrides_from_args(args: argparse.Namespace) -> dict[str, object]:
    """Run-config values given on the command line (validated), dash-named for Flower."""
    given = given_options(args)
    cfg = RunConfig.from_dict(given)          # validates every value before anything is sent
    return {name.replace("_", "-"): getattr(cfg, name) for name in given}


def _is_progress(line: str) -> bool:
    text = line.strip()
    return text.startswith("[round") or "fedclinic" in text or "Error" in text


def _run(args: argparse.Namespace) -> int:
    from server.control import connect, follow, start_run

    overrides = overrides_from_args(args)
    ca = None if args.insecure else Path(args.ca_cert)
    if ca is not None and not ca.is_file():
        raise ConfigError(f"--ca-cert {ca}: file not found; it is the consortium's ca.crt")
    control = connect(args.server, ca)
    try:
        run_id = start_run(control, overrides)
        print(f"fedclinic run: submitted run {run_id} to {args.server}", flush=True)
        if args.detach:
            return 0
        echo = (lambda line: print(line, flush=True)) if args.verbose else (
            lambda line: _is_progress(line) and print(line.strip(), flush=True))
        state = follow(control, run_id, echo)
    finally:
        control.close()
    if state.sub_status != "completed":
        print(f"fedclinic run: run {run_id} {state.sub_status}: {state.details}", file=sys.stderr)
        return 1
    print(f"fedclinic run: run {run_id} completed", flush=True)
    return 0


def add_run_parser(sub, add_run_options) -> None:
    p = sub.add_parser(
        "run", help="submit a federated run to a fedclinic server and stream its progress",
        description="Submit the federation (the same ServerApp as `simulate`) to the server. "
                    "Only the options you give are sent; the rest keep their defaults. Sites run "
                    "the fedclinic installed at each site. Exits 0 only if the run completed.")
    p.add_argument("--server", default="127.0.0.1:8000",
                   help="the server's HOST:PORT (default: 127.0.0.1:8000)")
    p.add_argument("--ca-cert", default="fedclinic-certs/ca/ca.crt",
                   help="the consortium CA certificate that signed the server's certificate "
                        "(default: fedclinic-certs/ca/ca.crt)")
    p.add_argument("--insecure", action="store_true",
                   help="connect without TLS (only to a server started with --insecure) "
                        "(default: off)")
    p.add_argument("--detach", action="store_true",
                   help="submit and return without following the run (default: off)")
    p.add_argument("--verbose", action="store_true",
                   help="show every log line of the run, not only progress (default: off)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")
    add_run_options(p)
    p.set_defaults(func=_run)
