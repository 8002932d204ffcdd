"""The site's resident task executor: runs approved ClientApp tasks inside one warm process.

Flower 1.41's SuperNode (``--isolation subprocess``) starts a fresh ``flwr-clientapp`` process for
every message, which re-imports torch, MONAI and Flower each time (about 6 s on a 2-core host). A
fedclinic site runs its SuperNode with ``--isolation process`` and this executor next to it:

* it claims tasks from the SuperNode's local Runtime API (the same API ``flower-superexec`` uses);
* a task whose app bundle is the fedclinic bundle of the installed version runs the installed
  ClientApp in this process, imports already paid;
* a task whose bundle hash the operator allowed (``--allow-app-hash``) runs in a child process
  (``python -m client.executor``) that installs the bundle and loads its ClientApp the way
  Flower's ``flwr-clientapp`` does, so foreign code never enters the resident process;
* any other task is refused with an error reply naming what was offered and what is allowed;
* every reply, of either kind, is checked to hold only model weights and scalar metrics, and is
  written to the site's append-only audit log before it leaves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from flwr.app import Error, Message
from flwr.common.constant import SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor,
                                         RuntimeVersionHttpInterceptor)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import (pull_task_input, push_message,
                                                   push_task_output)

from client.approval import AppRefused, Approval, review_app
from client.audit import AuditLog, check_outgoing
from common.wire import ReplyCode
from runtime.environment import flower_env
from runtime.processes import child_env, die_with_parent
from runtime.transport import use_fast_object_pulls

log = logging.getLogger("fedclinic.site")


class TaskInterrupted(BaseException):
    """The site is stopping (SIGTERM) while a task runs: the task is abandoned, not finished.
    A BaseException, so that no task-level ``except Exception`` turns it into a reply."""


@dataclass
class SiteExecutor:
    runtime_address: str                      # the SuperNode's Runtime API, e.g. 127.0.0.1:9094
    audit: AuditLog
    allowed_hashes: frozenset[str] = frozenset()
    poll_interval: float = 0.1
    client_app: Callable[[Message, object], Message] | None = None
    flwr_home: Path | None = None     # where allowed bundles are installed (the site's own)
    stop_event: threading.Event = field(default_factory=threading.Event)
    tasks_done: int = 0
    tasks_failed: int = 0
    supernode_died: bool = False
    in_task: bool = False             # a task is running (in the thread that called serve())

    def _client(self, component: str, token: str | None = None,
                invoker=None) -> RuntimeHttpClient:
        interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_address, insecure=True, root_certificates=None,
            interceptors=interceptors,
            retry_invoker=invoker or make_simple_http_retry_invoker())

    def stop(self) -> None:
        """Stop claiming tasks (the claim loop retries itself and watches this event)."""
        self.stop_event.set()

    def serve(self) -> None:
        """Claim and run tasks until `stop_event` is set."""
        use_fast_object_pulls()
        if self.client_app is None:
            from client.app import app as installed_app

            self.client_app = installed_app
        invoker = make_simple_http_retry_invoker()
        invoker.max_tries = 1                   # this loop retries itself, watching stop_event
        claimer = self._client("SuperExec", invoker=invoker)
        failures = 0
        try:
            while not self.stop_event.is_set():
                try:
                    res = claimer.AcquireTask(AcquireTaskRequest(
                        supported_task_types=[TaskType.CLIENT_APP.value],
                        agentapp_fab_hashes=[]))
                    failures = 0
                except httpx.TransportError as exc:   # SuperNode restarting or gone
                    failures += 1
                    log.warning("SuperNode runtime API unreachable (%s); retrying", exc)
                    self.stop_event.wait(min(10.0, 0.5 * failures))
                    continue
                if res.HasField("task") and res.token:
                    self._run_task_safely(res.token, res.task.fab_hash)
                    continue                      # more work may be queued: ask again at once
                self.stop_event.wait(self.poll_interval)
        finally:
            claimer.close()

    def _run_task_safely(self, token: str, fab_hash: str) -> None:
        """One task's failure (e.g. its message's objects vanished because the SuperLink was
        restarted mid-round) ends that task only: the site keeps serving the next ones."""
        self.in_task = True
        try:
            self.run_task(token, fab_hash)
        except TaskInterrupted as stop:
            self.audit.record_event("task-interrupted", str(stop))
            raise
        except Exception as exc:  # noqa: BLE001 - logged and audited; the run decides what next
            self.tasks_failed += 1
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("task failed, the site goes on serving: %s", reason)
            self.audit.record_event("task-failed", reason)
        finally:
            self.in_task = False

    def run_task(self, token: str, fab_hash: str) -> None:
        try:
            approval = review_app(fab_hash, self.allowed_hashes)
        except AppRefused as refusal:
            self._refuse(token, refusal)
            return
        if approval.kind == "allowed-hash":
            self._run_in_child(token, approval)
        else:
            self._run_here(token, approval)
        self.tasks_done += 1

    def _run_here(self, token: str, approval: Approval) -> None:
        client = self._client("flwr-clientapp", token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        context, status, details = None, SubStatus.FAILED, "fedclinic site: task failed"
        started = time.perf_counter()
        try:
            message, context, run, fab = pull_task_input(client)
            app = self.client_app if approval.kind == "installed" else _bundle_app(run, fab,
                                                                                   approval)
            pulled = time.perf_counter()
            reply = self._call_app(app, message, context)
            app_seconds = time.perf_counter() - pulled
            problem = check_outgoing(reply, message)   # keys per type and DP mode
            if problem:
                self.audit.record_refusal(message, run.run_id, approval.describe(), problem)
                reply = Message(Error(code=int(ReplyCode.LEAKY_REPLY), reason=problem),
                                reply_to=message)
            size, sha = self.audit.record_reply(message, reply, run.run_id, approval.describe())
            push_message(client, reply, context)
            status, details = SubStatus.COMPLETED, ""
            self.audit.record_timing(run.run_id, sha, pull=pulled - started, app=app_seconds,
                                     task=time.perf_counter() - started)
        finally:
            heartbeat.stop()
            _finish_task(client, context, status, details)

    @staticmethod
    def _call_app(app: Callable[..., Message], message: Message, context) -> Message:
        try:
            return app(message=message, context=context)
        except Exception as exc:  # noqa: BLE001 - the site keeps the trace, the server a reference
            return Message(Error(code=0, reason=failure_reason(exc)), reply_to=message)

    def _refuse(self, token: str, refusal: AppRefused) -> None:
        client = self._client("flwr-clientapp", token)
        context = None
        try:
            message, context, run, _ = pull_task_input(client)
            self.audit.record_refusal(message, run.run_id, "not approved", str(refusal))
            push_message(client, Message(Error(code=int(ReplyCode.APP_REFUSED),
                                               reason=str(refusal)),
                                         reply_to=message), context)
        finally:
            _finish_task(client, context, SubStatus.FAILED, str(refusal))
        log.warning("%s", refusal)

    def _run_in_child(self, token: str, approval: Approval) -> None:
        """An operator-allowed bundle runs in a child process of its own (its code never enters
        this one), through the same checks and audit as the installed app: `run_allowed_bundle`."""
        self.audit.record_event("run-allowed-app", approval.describe())
        task = ChildTask(self.runtime_address, token, str(self.audit.path), approval.fab_hash,
                         os.getpid())
        env = child_env(flower_env(self.flwr_home) if self.flwr_home is not None
                        else dict(os.environ))     # the child ends when the site does
        done = subprocess.run([sys.executable, "-m", "client.executor"], input=task.to_json(),
                              text=True, check=False, env=env)
        if done.returncode != 0:
            self.audit.record_event("task-failed", f"{approval.describe()}: its process exited "
                                                   f"with code {done.returncode}")


def failure_reason(exc: BaseException) -> str:
    """What the server is told when the ClientApp fails: the error's type and a reference into
    the site's log, never its text (a data error names the site's files, a plan error can state
    its sample count: docs/what-leaves.md, "error replies"). The site logs the whole trace."""
    ref = hashlib.sha256(f"{time.time_ns()}/{type(exc).__name__}/{exc}".encode()).hexdigest()[:12]
    log.error("ClientApp raised (reference %s)", ref, exc_info=exc)
    return (f"{type(exc).__name__} at the site (details stay in the site's log, reference "
            f"{ref})")


def _finish_task(client: RuntimeHttpClient, context, status: str, details: str) -> None:
    """Report the task's end to the SuperNode; a SuperNode that cannot take it (restarting, or
    the task already expired) must not mask the task's own error or stop the site."""
    try:
        push_task_output(client, context, status, details)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not report the task's end to the SuperNode: %s", exc)
    finally:
        client.close()


def _bundle_app(run, fab, approval: Approval) -> Callable[..., Message]:
    """Install an allowed bundle under FLWR_HOME and load its ClientApp, as Flower's own
    flwr-clientapp does (no runtime dependency installation: the site's environment is used)."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn

    if fab.hash_str != approval.fab_hash:       # the bundle pulled is the one approved, or none
        raise AppRefused(f"the task's bundle has sha256 {fab.hash_str}, not the approved "
                         f"{approval.fab_hash}")
    install_from_fab(fab.content, skip_prompt=True)
    load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    return load(run.fab_id, run.fab_version, fab.hash_str)


@dataclass(frozen=True)
class ChildTask:
    """What the child process for one allowed-bundle task needs. It travels as JSON on the
    child's stdin, not on its command line, so the task's token is not visible to `ps`."""

    runtime_api_address: str
    token: str
    audit: str                    # the site's audit log
    fab_hash: str
    parent_pid: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChildTask:
        return cls(**json.loads(text))


def run_allowed_bundle(task: ChildTask) -> int:
    """Child process for one task of an operator-allowed bundle: pull it, run the bundle's
    ClientApp, check the reply, write it to the site's audit log, push it."""
    die_with_parent(task.parent_pid)   # the site went away (any signal): this ends too
    use_fast_object_pulls()
    executor = SiteExecutor(task.runtime_api_address, AuditLog(Path(task.audit)),
                            allowed_hashes=frozenset({task.fab_hash}))
    executor._run_here(task.token, Approval("allowed-hash", task.fab_hash))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s:%(levelname)s:%(message)s")
    sys.exit(run_allowed_bundle(ChildTask.from_json(sys.stdin.read())))
