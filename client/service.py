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

from client.activation import (CredentialError, KeyStatus, key_status, node_id_in,
                               record_node, recorded_node)
from client.policy import POLICY_PATH, SitePolicy, load_policy
from common.config import ConfigError
from common.private_files import private_dir
from runtime.environment import flower_env
from runtime.ports import (PortInUse, check_port_free, free_port, listens_on,
                           said_address_in_use, wait_for_port)
from runtime.processes import child_env, stop_process

if TYPE_CHECKING:
    from client.executor import SiteExecutor

DEFAULT_STATE = "fedclinic-site"
ACTIVATION_REFUSED = "Failed to activate SuperNode"   # the SuperNode's log line when refused
DEFAULT_RUNTIME_PORT = 0     # 0: a free 127.0.0.1 port, chosen at each start
DEFAULT_ACTIVATION_WAIT = 75.0
PORT_TRIES = 3               # free ports tried when the chosen one is taken as the node starts
LEDGERS = "ledgers"          # <state>/ledgers: the site's lifetime privacy ledgers
SUPERNODE_LOG = "supernode.log"


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
    runtime_port: int = DEFAULT_RUNTIME_PORT  # 0: a free port on 127.0.0.1
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
    log_file = state / SUPERNODE_LOG
    with open(log_file, "ab") as log:    # the child ends when this process does, however
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=state,
                                   env=child_env(flower_env(state / "flwr-home")))
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
    """Validate the data, then serve the consortium's tasks until stopped. Returns 0 when
    stopped (SIGTERM: a task under way is abandoned, the site ends within seconds), 130 on
    Ctrl-C, 1 when the SuperNode failed in a way a restart may fix; raises ConfigError (exit 2)
    for what a restart will not fix: bad data or policy, a taken --runtime-port, a CA that does
    not verify the server, a key the server does not know. A refused activation of a key the
    server knows (its previous session still counts as online) is retried for
    --activation-wait seconds."""
    check_files(options)
    check_policy(options, print)
    if not options.skip_validation:
        validate_before_joining(Path(options.data), print)
    if options.runtime_port:
        check_port_free("127.0.0.1", options.runtime_port, "--runtime-port")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _set_client_threads(options.threads)
    executor = _executor(options)
    stopping = _stop_on_sigterm(executor)
    started = time.monotonic()
    deadline = started + options.activation_wait
    port_clashes = 0
    while True:
        port = options.runtime_port or free_port()
        served = _serve_once(options, executor, stopping, port, started)
        if served.code is not None:
            return served.code
        executor.stop_event.clear()
        executor.supernode_died = False
        if served.port_taken or said_address_in_use(served.log):
            port_clashes += 1
            if options.runtime_port:
                raise PortInUse(f"--runtime-port {port}: 127.0.0.1:{port} was taken by another "
                                f"process as the SuperNode started; give this site a port "
                                f"nothing else uses, or leave --runtime-port out")
            if port_clashes >= PORT_TRIES:
                print(f"fedclinic site: error: {port_clashes} free runtime ports in a row were "
                      f"taken by other processes as the SuperNode started (last: {port})",
                      file=sys.stderr)
                return 1
            continue                           # a port of its own choice: take another one
        left = deadline - time.monotonic()
        if not _activation_to_retry(options, served.log, left):
            return _failed(options, served.log)
        if _wait_to_retry(left, stopping) or stopping.is_set():
            return 0


@dataclass(frozen=True)
class Served:
    """How one SuperNode's life ended: `code` when the site is done (stopped, Ctrl-C), else None
    with what its log said this time, and whether its runtime port was someone else's."""

    code: int | None
    log: str = ""
    port_taken: bool = False


def _activation_to_retry(options: SiteOptions, text: str, left: float) -> bool:
    """After a refused activation: True to retry; CredentialError (exit 2) when the server does
    not know the key or the CA does not verify it; False when there is nothing left to wait
    for."""
    if "CERTIFICATE_VERIFY_FAILED" in text:
        raise CredentialError(explain_supernode_exit(text, options))
    if ACTIVATION_REFUSED not in text:
        return False
    if options.insecure:
        return left > 0
    status, node_id = _key_status(options)
    if status is KeyStatus.UNKNOWN or node_id is None:
        raise CredentialError(_unknown_key(options, node_id))
    return left > 0


def _key_status(options: SiteOptions) -> tuple[KeyStatus, int | None]:
    state = Path(options.state).resolve()
    log_file = state / SUPERNODE_LOG
    node_id = recorded_node(state, options.server, Path(options.site_key),
                            log_file.read_text(errors="replace") if log_file.exists() else "")
    return key_status(options.server, Path(options.ca_cert), Path(options.site_key),
                      node_id), node_id


def _unknown_key(options: SiteOptions, node_id: int | None) -> str:
    if node_id is None:
        return (f"the server at {options.server} refused to activate this site's key "
                f"{options.site_key}, and this state folder ({options.state}) never joined "
                f"with it, so the server cannot be asked whether it knows the key: most likely "
                f"its public key is not registered there (the consortium registers it with "
                f"`fedclinic certs add-site`); else another SuperNode started with this key "
                f"from another host or state folder is connected")
    return (f"the server at {options.server} does not know this site's key {options.site_key} "
            f"(it answers 401 to a request signed with it for node {node_id}): the key is not "
            f"registered there, or it was revoked; the consortium registers it with "
            f"`fedclinic certs add-site`. Nothing was sent")


def _failed(options: SiteOptions, text: str) -> int:
    """The SuperNode ended without being asked: 1 (a restart may fix it), or CredentialError
    when the server no longer knows the key (e.g. revoked while the site ran)."""
    if not options.insecure and node_id_in(text) is not None and ACTIVATION_REFUSED not in text:
        status, node_id = _key_status(options)
        if status is KeyStatus.UNKNOWN:
            raise CredentialError(_unknown_key(options, node_id))
    print(f"fedclinic site: error: {explain_supernode_exit(text, options)}", file=sys.stderr)
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
    """SIGTERM stops the executor; the event it sets tells the restart loop not to go on. A task
    under way is abandoned at once (TaskInterrupted, raised in the main thread that runs it):
    the server does not wait for an update that a stopping site would send minutes later, and
    the privacy ledger is written crash-safely whatever point the task had reached."""
    from client.executor import TaskInterrupted

    stopping = threading.Event()

    def on_term(*_) -> None:
        first = not stopping.is_set()
        stopping.set()
        executor.stop()
        if first and executor.in_task:
            raise TaskInterrupted("the site was stopped (SIGTERM) during the task")

    signal.signal(signal.SIGTERM, on_term)
    return stopping


def _serve_once(options: SiteOptions, executor: SiteExecutor, stopping: threading.Event,
                port: int, started: float) -> Served:
    """Start a SuperNode on runtime `port` and serve its tasks until it exits or the site is
    stopped."""
    from client.executor import TaskInterrupted

    ca, key = _credentials(options)
    state = Path(options.state)
    log_file = state.resolve() / SUPERNODE_LOG
    offset = log_file.stat().st_size if log_file.exists() else 0
    executor.runtime_address = f"127.0.0.1:{port}"
    process, log_file = start_supernode(options.server, ca, key, Path(options.data),
                                        options.site_id, state, port, options.policy)
    port_taken = False
    try:
        port_taken = _serve(process, executor, options, port, log_file, offset, started)
    except KeyboardInterrupt:
        return Served(130)
    except TaskInterrupted:
        return Served(0)
    finally:
        stop_process(process)
    if stopping.is_set():
        return Served(0)
    return Served(None, _log_since(log_file, offset), port_taken)


def _wait_to_retry(left: float, stopping: threading.Event) -> bool:
    """Say why the site retries and wait up to 5 s; True if the site was stopped meanwhile."""
    print(f"fedclinic site: the server knows this site's key but still counts its previous "
          f"session as online (until two heartbeats are missed, up to 60 s after that session "
          f"ended uncleanly, e.g. a power cut). Retrying for another {left:.0f} s "
          f"(--activation-wait)", flush=True)
    return stopping.wait(min(5.0, left))


def _serve(process: subprocess.Popen, executor, options: SiteOptions, port: int,
           log_file: Path, offset: int, started: float) -> bool:
    """Run the executor while this SuperNode lives (the watchdog stops it when it exits);
    True if it never ran because its runtime port turned out to be another process's."""
    up = _started(process, port, log_file)
    if up is not True:
        executor.supernode_died = True
        return up is None
    print(f"fedclinic site {options.site_id}: started, connecting to {options.server} "
          f"({'TLS' if not options.insecure else 'INSECURE'}); runtime port 127.0.0.1:{port}; "
          f"audit log {Path(options.state) / 'audit.jsonl'}; SuperNode log {log_file}",
          flush=True)
    for target, args in ((_stop_when_exits, (process, executor)),
                         (_announce_join, (process, log_file, offset, options, started))):
        threading.Thread(target=target, args=args, daemon=True).start()
    executor.serve()
    return False


def _announce_join(process: subprocess.Popen, log_file: Path, offset: int,
                   options: SiteOptions, started: float) -> None:
    """Once the server activates this SuperNode: say so, and keep its node id (client.activation)
    so that a later refusal can be told apart."""
    while process.poll() is None:
        node_id = node_id_in(_log_since(log_file, offset))
        if node_id is not None:
            if not options.insecure:
                record_node(Path(options.state).resolve(), options.server,
                            Path(options.site_key), node_id)
            print(f"fedclinic site {options.site_id}: joined {options.server} as node {node_id} "
                  f"({time.monotonic() - started:.1f} s after start); waiting for tasks",
                  flush=True)
            return
        time.sleep(0.2)


def _log_since(log_file: Path, offset: int) -> str:
    if not log_file.exists():
        return ""
    with open(log_file, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def explain_supernode_exit(text: str, options: SiteOptions) -> str:
    """What went wrong, from the SuperNode's log `text` (this start's lines), in terms of this
    command's flags."""
    log_file = Path(options.state) / SUPERNODE_LOG
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"the server at {options.server} presented a certificate that --ca-cert "
                f"{options.ca_cert} does not verify; use the consortium's ca.crt (and check "
                f"`fedclinic site doctor`). The connection was refused, nothing was sent")
    if ACTIVATION_REFUSED in text:
        return (f"the server at {options.server} knows this site's key {options.site_key} but "
                f"another SuperNode with this key is still connected after --activation-wait "
                f"{options.activation_wait:g} s: is this site running twice (another host or "
                f"state folder)? Stop the other one; the site will then join")
    tail = "\n".join(text.strip().splitlines()[-8:])
    return f"the SuperNode stopped; last lines of {log_file}:\n{tail}"


def _started(process: subprocess.Popen, port: int, log_file: Path) -> bool | None:
    """True once the SuperNode's local Runtime API is up; False if the SuperNode died first;
    None if another process answers on its port (its executor must never talk to that one)."""
    try:
        wait_for_port("127.0.0.1", port, 120, process, log_file)
    except RuntimeError:
        return False
    if listens_on(process.pid, port) is False:
        return None
    return True


def _stop_when_exits(process: subprocess.Popen, executor) -> None:
    process.wait()
    executor.supernode_died = True
    executor.stop()
