"""`fedclinic site`: one hospital's SuperNode plus its resident executor, next to the data.

The site loads its privacy policy (`--policy`, client.policy) and validates its data first, and
refuses to start on errors. It then starts a Flower
SuperNode that dials out to the server over TLS, authenticated with the site's key, and runs the
ClientApp tasks itself (`client.executor`): only approved code runs, every reply is audited, and
its privacy ledgers live under --state, so they survive restarts of the site or of the server.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from client.policy import POLICY_PATH, SitePolicy, load_policy
from common.config import ConfigError
from common.private_files import private_dir
from runtime.environment import flower_env
from runtime.ports import wait_for_port
from runtime.processes import stop_process

if TYPE_CHECKING:
    from client.executor import SiteExecutor

DEFAULT_STATE = "fedclinic-site"
ACTIVATION_REFUSED = "Failed to activate SuperNode"   # the SuperNode's log line when refused
DEFAULT_RUNTIME_PORT = 9094
DEFAULT_ACTIVATION_WAIT = 75.0
LEDGERS = "ledgers"          # <state>/ledgers: the site's lifetime privacy ledgers


@dataclass(frozen=True)
class SiteOptions:
    """What `fedclinic site` runs with; the CLI's flags of the same names fill it in."""

    server: str = "127.0.0.1:8000"        # the consortium server's HOST:PORT
    ca_cert: Path = Path("ca.crt")        # the consortium CA certificate
    site_key: Path = Path("site.key")     # this site's private key (its .pub is registered)
    site_id: int = 0                      # this site's number in reports
    data: Path = Path("data")
    state: Path = Path(DEFAULT_STATE)     # privacy ledgers, audit.jsonl, logs
    policy: Path | None = None            # the site's privacy policy (None: the default one)
    allow_app_hash: tuple[str, ...] = ()  # bundle hashes allowed besides the installed one
    runtime_port: int = DEFAULT_RUNTIME_PORT
    activation_wait: float = DEFAULT_ACTIVATION_WAIT   # seconds to retry a refused activation
    threads: int = 0                      # 0 = $FEDCLINIC_CLIENT_THREADS, else all cores
    skip_validation: bool = False
    insecure: bool = False                # no TLS, no key


def node_config(data: Path, site_id: int, state: Path, policy: Path | None = None) -> str:
    """Flower --node-config string: where the data, the privacy ledgers and the site's policy
    are (no policy: fedclinic's default, DP required)."""
    text = (f'data-path="{data.resolve()}" site-id={site_id} '
            f'ledger-dir="{(state / LEDGERS).resolve()}"')
    return text + (f' {POLICY_PATH}="{Path(policy).resolve()}"' if policy else "")


def start_supernode(server: str, ca_cert: Path | None, site_key: Path | None, data: Path,
                    site_id: int, state: Path, runtime_port: int, policy: Path | None = None
                    ) -> tuple[subprocess.Popen, Path]:
    state = private_dir(state.resolve(), tighten=True)   # ledgers, audit log, logs: 0700
    ca_cert = ca_cert.resolve() if ca_cert else None
    site_key = site_key.resolve() if site_key else None
    command = [sys.executable, "-m", "client.supernode",
               "--superlink", server, "--isolation", "process",
               "--host", "127.0.0.1", "--port", str(runtime_port),
               "--node-config", node_config(data, site_id, state, policy)]
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


def check_files(options: SiteOptions) -> None:
    wanted = [("--data", Path(options.data))]
    if not options.insecure:
        wanted += [("--ca-cert", Path(options.ca_cert)), ("--site-key", Path(options.site_key))]
    for flag, path in wanted:
        if not path.exists():
            raise ConfigError(f"{flag} {path}: not found")


def check_policy(options: SiteOptions, echo) -> SitePolicy:
    """The site's policy, loaded before joining: a missing or invalid file is a ConfigError
    (the site does not start), not a refusal of every task later."""
    try:
        policy = load_policy(options.policy)
    except ConfigError as exc:
        raise ConfigError(f"--policy: {exc}") from None
    echo(f"fedclinic site: {policy.render()}")
    return policy


def validate_before_joining(data: Path, echo) -> None:
    from client.validate import validate_site_data

    report = validate_site_data(data)
    if not report.ok:
        raise ConfigError(f"{data}: the site's data failed validation, so the site does not "
                          f"join:\n{report.render()}")
    echo(f"fedclinic site: data {data} validated ({report.layout}, "
         f"{len(report.warnings)} warning(s))")


def run_site(options: SiteOptions) -> int:
    """Validate the data, then serve the consortium's tasks until stopped: 0 when stopped or the
    SuperNode ended cleanly, 130 on Ctrl-C, 1 when the SuperNode failed. A SuperNode the server
    did not activate (yet) is restarted until --activation-wait runs out."""
    check_files(options)
    check_policy(options, print)
    if not options.skip_validation:
        validate_before_joining(Path(options.data), print)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _set_client_threads(options.threads)
    executor = _executor(options)
    stopping = _stop_on_sigterm(executor)
    deadline = time.monotonic() + options.activation_wait
    log_file = Path(options.state).resolve() / "supernode.log"   # as start_supernode writes it
    while True:
        offset = log_file.stat().st_size if log_file.exists() else 0
        code = _serve_once(options, executor, stopping)
        if code is not None:
            return code
        left = deadline - time.monotonic()
        if not _activation_refused(log_file, offset) or left <= 0:
            break
        if _wait_to_retry(left, stopping):
            return 0
        executor.stop_event.clear()
        executor.supernode_died = False
    print(f"fedclinic site: error: {explain_supernode_exit(log_file, options, offset)}",
          file=sys.stderr)
    return 1


def _set_client_threads(threads: int) -> None:
    """$FEDCLINIC_CLIENT_THREADS, which the ClientApp reads per task: --threads, else the value
    already set, else all cores."""
    threads = threads or int(os.environ.get("FEDCLINIC_CLIENT_THREADS") or 0) or os.cpu_count()
    os.environ["FEDCLINIC_CLIENT_THREADS"] = str(threads)


def _credentials(options: SiteOptions) -> tuple[Path | None, Path | None]:
    """(CA certificate, site key), both None with --insecure."""
    if options.insecure:
        return None, None
    return Path(options.ca_cert), Path(options.site_key)


def _executor(options: SiteOptions) -> SiteExecutor:
    """The resident executor: approved bundles only, every reply audited to audit.jsonl."""
    from client.audit import AuditLog
    from client.executor import SiteExecutor

    state = Path(options.state)
    return SiteExecutor(f"127.0.0.1:{options.runtime_port}", AuditLog(state / "audit.jsonl"),
                        allowed_hashes=frozenset(options.allow_app_hash),
                        flwr_home=state / "flwr-home")


def _stop_on_sigterm(executor: SiteExecutor) -> threading.Event:
    """SIGTERM stops the executor; the event it sets tells the restart loop not to go on."""
    stopping = threading.Event()

    def on_term(*_) -> None:
        stopping.set()
        executor.stop()

    signal.signal(signal.SIGTERM, on_term)
    return stopping


def _serve_once(options: SiteOptions, executor: SiteExecutor,
                stopping: threading.Event) -> int | None:
    """Start a SuperNode and serve its tasks until it exits; the exit code when the site is done
    (stopped, Ctrl-C, or the SuperNode ended cleanly), None when the SuperNode died."""
    ca, key = _credentials(options)
    state = Path(options.state)
    process, log_file = start_supernode(options.server, ca, key, Path(options.data),
                                        options.site_id, state, options.runtime_port,
                                        options.policy)
    try:
        _serve(process, executor, options, ca, state, log_file)
    except KeyboardInterrupt:
        return 130
    finally:
        stop_process(process)
    if stopping.is_set() or process.returncode in (0, -signal.SIGTERM) or \
            not executor.supernode_died:
        return 0
    return None


def _wait_to_retry(left: float, stopping: threading.Event) -> bool:
    """Say why the site retries and wait up to 5 s; True if the site was stopped meanwhile."""
    print(f"fedclinic site: the server did not activate this site yet: after a restart the "
          f"server counts its previous session as online until two heartbeats are missed "
          f"(up to 60 s). Retrying for another {left:.0f} s (--activation-wait)", flush=True)
    return stopping.wait(min(5.0, left))


def _serve(process: subprocess.Popen, executor, options: SiteOptions, ca: Path | None,
           state: Path, log_file: Path) -> None:
    """Run the executor while this SuperNode lives (the watchdog stops it when it exits)."""
    if not _started(process, options.runtime_port, log_file):
        executor.supernode_died = True
        return
    print(f"fedclinic site {options.site_id}: started, connecting to {options.server} "
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


def explain_supernode_exit(log_file: Path, options: SiteOptions, offset: int = 0) -> str:
    """What went wrong, from the SuperNode's log (from `offset`: this start's lines), in terms of
    this command's flags."""
    text = _log_since(log_file, offset)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"the server at {options.server} presented a certificate that --ca-cert "
                f"{options.ca_cert} does not verify; use the consortium's ca.crt (and check "
                f"`fedclinic site doctor`). The connection was refused, nothing was sent")
    if ACTIVATION_REFUSED in text or "2004" in text:
        return (f"the server at {options.server} refused this site's key {options.site_key}: "
                f"its public key is not registered there (the consortium registers it with "
                f"`fedclinic certs add-site`, then restarts or re-registers at `fedclinic "
                f"server`), or another "
                f"SuperNode with this key is still connected (waited --activation-wait "
                f"{options.activation_wait:g} s)")
    tail = "\n".join(text.strip().splitlines()[-8:])
    return f"the SuperNode stopped; last lines of {log_file}:\n{tail}"


def _started(process: subprocess.Popen, port: int, log_file: Path) -> bool:
    """True once the SuperNode's local Runtime API is up; False if the SuperNode died first."""
    try:
        wait_for_port("127.0.0.1", port, 120, process, log_file)
    except RuntimeError:
        return False
    return True


def _stop_when_exits(process: subprocess.Popen, executor) -> None:
    process.wait()
    executor.supernode_died = True
    executor.stop()
