"""`fedclinic server` (a SuperLink with TLS, persistent state and site authentication) and
`fedclinic run` (submit the federation to it and stream its progress)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from common.config import ConfigError
from common.private_files import private_dir
from runtime.environment import flower_env
from runtime.ports import wait_for_port
from runtime.processes import stop_process

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
    # the SuperLink's database, the runs (models, reports, privacy ledgers): the owner's only
    state = private_dir(state.resolve(), tighten=True)
    private_dir(state / "runs", tighten=True)
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


def serve(certs: Path | None, site_keys: Path | None, state: Path, address: str) -> int:
    """Run the SuperLink until it exits or is stopped; no `certs` = insecure (no TLS, no site
    authentication). Returns the exit code for the shell."""
    if certs is None:
        print("fedclinic server: WARNING --insecure: no TLS, no site authentication; for local "
              "tests only", file=sys.stderr)
    process, log_file = start_server(certs, site_keys, state, address)
    print(f"fedclinic server: SuperLink up on {address} "
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


# ----------------------------------------------------------------------------- fedclinic run


def _is_progress(line: str) -> bool:
    """fedclinic's own lines and errors. Flower's strategy loop logs the run config it sends
    ("ConfigRecord (train): {... 'fedclinic-run': ...}"): not progress, though it names us."""
    text = line.strip()
    if "ConfigRecord (" in text:
        return False
    return text.startswith("[round") or "fedclinic" in text or "Error" in text


def submit_run(server: str, ca: Path | None, overrides: dict[str, object], *, detach: bool = False,
               verbose: bool = False) -> int:
    """Submit a run with these run-config `overrides` to the server at `server` (no `ca` =
    without TLS) and, unless `detach`, follow it; 0 only if the run completed."""
    from server.control import connect, follow, start_run

    if ca is not None and not ca.is_file():
        raise ConfigError(f"--ca-cert {ca}: file not found; it is the consortium's ca.crt")
    control = connect(server, ca)
    try:
        run_id = start_run(control, overrides)
        print(f"fedclinic run: submitted run {run_id} to {server}", flush=True)
        if detach:
            return 0
        echo = (lambda line: print(line, flush=True)) if verbose else (
            lambda line: _is_progress(line) and print(line.strip(), flush=True))
        state = follow(control, run_id, echo)
    finally:
        control.close()
    if state.sub_status != "completed":
        print(f"fedclinic run: run {run_id} {state.sub_status}: {state.details}", file=sys.stderr)
        return 1
    print(f"fedclinic run: run {run_id} completed", flush=True)
    return 0
