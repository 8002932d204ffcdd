"""`fedclinic site`: one hospital's SuperNode plus its resident executor, next to the data.

The site validates its data first and refuses to start on errors. It then starts a Flower
SuperNode that dials out to the server over TLS, authenticated with the site's key, and runs the
ClientApp tasks itself (`client.executor`): only approved code runs, every reply is audited, and
its privacy ledgers live under --state, so they survive restarts of the site or of the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common.config import ConfigError

DEFAULT_STATE = "fedclinic-site"
ACTIVATION_REFUSED = "Failed to activate SuperNode"   # the SuperNode's log line when refused
DEFAULT_RUNTIME_PORT = 9094


def node_config(data: Path, site_id: int, state: Path) -> str:
    """Flower --node-config string: where the data and the per-run privacy ledgers are."""
    return (f'data-path="{data.resolve()}" site-id={site_id} '
            f'ledger-dir="{(state / "ledgers").resolve()}"')


def start_supernode(server: str, ca_cert: Path | None, site_key: Path | None, data: Path,
                    site_id: int, state: Path, runtime_port: int) -> tuple[subprocess.Popen, Path]:
    from server.service import flower_env

    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    ca_cert = ca_cert.resolve() if ca_cert else None
    site_key = site_key.resolve() if site_key else None
    command = [sys.executable, "-m", "client.supernode",
               "--superlink", server, "--isolation", "process",
               "--host", "127.0.0.1", "--port", str(runtime_port),
               "--node-config", node_config(data, site_id, state)]
    if ca_cert is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(ca_cert)]
    if site_key is not None:
        command += ["--auth-supernode-private-key", str(site_key)]
    log_file = state / "supernode.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=flower_env(state / "flwr-home"), cwd=state)
    return process, log_file


def check_files(args: argparse.Namespace) -> None:
    wanted = [("--data", Path(args.data))]
    if not args.insecure:
        wanted += [("--ca-cert", Path(args.ca_cert)), ("--site-key", Path(args.site_key))]
    for flag, path in wanted:
        if not path.exists():
            raise ConfigError(f"{flag} {path}: not found")


def validate_before_joining(data: Path, echo) -> None:
    from client.validate import validate_site_data

    report = validate_site_data(data)
    if not report.ok:
        raise ConfigError(f"{data}: the site's data failed validation, so the site does not "
                          f"join:\n{report.render()}")
    echo(f"fedclinic site: data {data} validated ({report.layout}, "
         f"{len(report.warnings)} warning(s))")


def run_site(args: argparse.Namespace) -> int:
    from client.audit import AuditLog
    from client.executor import SiteExecutor
    from server.service import stop_process

    check_files(args)
    data, state = Path(args.data), Path(args.state)
    if not args.skip_validation:
        validate_before_joining(data, print)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    threads = args.threads or int(os.environ.get("FEDCLINIC_CLIENT_THREADS") or 0) or os.cpu_count()
    os.environ["FEDCLINIC_CLIENT_THREADS"] = str(threads)   # read by the ClientApp per task
    ca = None if args.insecure else Path(args.ca_cert)
    key = None if args.insecure else Path(args.site_key)
    executor = SiteExecutor(f"127.0.0.1:{args.runtime_port}", AuditLog(state / "audit.jsonl"),
                            allowed_hashes=frozenset(args.allow_app_hash),
                            flwr_home=state / "flwr-home")
    stopping = threading.Event()

    def on_term(*_) -> None:
        stopping.set()
        executor.stop()

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + args.activation_wait
    log_file = state / "supernode.log"
    while True:
        offset = log_file.stat().st_size if log_file.exists() else 0
        process, log_file = start_supernode(args.server, ca, key, data, args.site_id, state,
                                            args.runtime_port)
        try:
            _serve(process, executor, args, ca, state, log_file)
        except KeyboardInterrupt:
            return 130
        finally:
            stop_process(process)
        if stopping.is_set() or process.returncode in (0, -signal.SIGTERM) or \
                not executor.supernode_died:
            return 0
        left = deadline - time.monotonic()
        if not _activation_refused(log_file, offset) or left <= 0:
            break
        print(f"fedclinic site: the server did not activate this site yet: after a restart the "
              f"server counts its previous session as online until two heartbeats are missed "
              f"(up to 60 s). Retrying for another {left:.0f} s (--activation-wait)", flush=True)
        if stopping.wait(min(5.0, left)):
            return 0
        executor.stop_event.clear()
        executor.supernode_died = False
    print(f"fedclinic site: error: {explain_supernode_exit(log_file, args, offset)}",
          file=sys.stderr)
    return 1


def _serve(process: subprocess.Popen, executor, args: argparse.Namespace, ca: Path | None,
           state: Path, log_file: Path) -> None:
    """Run the executor while this SuperNode lives (the watchdog stops it when it exits)."""
    if not _started(process, args.runtime_port, log_file):
        executor.supernode_died = True
        return
    print(f"fedclinic site {args.site_id}: started, connecting to {args.server} "
          f"({'TLS' if ca else 'INSECURE'}); audit log {state / 'audit.jsonl'}; "
          f"SuperNode log {log_file}", flush=True)
    watchdog = threading.Thread(target=_stop_when_exits, args=(process, executor), daemon=True)
    watchdog.start()
    executor.serve()


def _activation_refused(log_file: Path, offset: int) -> bool:
    return ACTIVATION_REFUSED in _log_since(log_file, offset)


def _log_since(log_file: Path, offset: int) -> str:
    if not log_file.exists():
        return ""
    with open(log_file, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def explain_supernode_exit(log_file: Path, args: argparse.Namespace, offset: int = 0) -> str:
    """What went wrong, from the SuperNode's log (from `offset`: this start's lines), in terms of
    this command's flags."""
    text = _log_since(log_file, offset)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"the server at {args.server} presented a certificate that --ca-cert "
                f"{args.ca_cert} does not verify; use the consortium's ca.crt (and check "
                f"`fedclinic site doctor`). The connection was refused, nothing was sent")
    if ACTIVATION_REFUSED in text or "2004" in text:
        return (f"the server at {args.server} refused this site's key {args.site_key}: its public "
                f"key is not registered there (the consortium registers it with `fedclinic certs "
                f"add-site`, then restarts or re-registers at `fedclinic server`), or another "
                f"SuperNode with this key is still connected (waited --activation-wait "
                f"{args.activation_wait:g} s)")
    tail = "\n".join(text.strip().splitlines()[-8:])
    return f"the SuperNode stopped; last lines of {log_file}:\n{tail}"


def _started(process: subprocess.Popen, port: int, log_file: Path) -> bool:
    """True once the SuperNode's local Runtime API is up; False if the SuperNode died first."""
    from server.service import wait_for_port

    try:
        wait_for_port("127.0.0.1", port, 120, process, log_file)
    except RuntimeError:
        return False
    return True


def _stop_when_exits(process: subprocess.Popen, executor) -> None:
    process.wait()
    executor.supernode_died = True
    executor.stop()


def add_site_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="127.0.0.1:8000",
                   help="the consortium server's HOST:PORT; the site dials out to it, no inbound "
                        "port is opened (default: 127.0.0.1:8000)")
    p.add_argument("--ca-cert", default="ca.crt",
                   help="the consortium CA certificate that signed the server's (default: ca.crt)")
    p.add_argument("--site-key", default="site.key",
                   help="this site's private key (OpenSSH, EC P-384); its .pub is registered at "
                        "the server (default: site.key)")
    p.add_argument("--site-id", type=int, default=0,
                   help="this site's number in reports (default: 0)")
    p.add_argument("--data", default="data",
                   help="the site's data: a MedMNIST .npz, a DICOM folder with labels.csv, or an "
                        "MSD NIfTI folder (default: data)")
    p.add_argument("--state", default=DEFAULT_STATE,
                   help="folder for the privacy ledgers, audit.jsonl and logs; keep it across "
                        f"restarts (default: {DEFAULT_STATE})")
    p.add_argument("--allow-app-hash", action="append", default=[], metavar="SHA256",
                   help="also run the app bundle with this sha256 (repeatable); by default only "
                        "the installed fedclinic's own bundle runs (default: none)")
    p.add_argument("--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT,
                   help="local port (127.0.0.1 only) between the SuperNode and the executor "
                        f"(default: {DEFAULT_RUNTIME_PORT})")
    p.add_argument("--activation-wait", type=float, default=75.0, metavar="SECONDS",
                   help="how long to keep retrying when the server refuses to activate this site: "
                        "after a restart it counts the previous session as online until two "
                        "heartbeats are missed (up to 60 s); an unregistered key fails after "
                        "this too (default: 75)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for training at this site; 0 = $FEDCLINIC_CLIENT_THREADS if "
                        "set, else all cores (default: 0)")
    p.add_argument("--skip-validation", action="store_true",
                   help="join without validating the data first (default: off)")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no key, only against a server started with --insecure "
                        "(default: off)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (default: off)")
