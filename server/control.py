"""Talking to a SuperLink's Control API: register sites, submit the fedclinic bundle, follow a run.

Uses Flower's own HTTP client for the Control API (what `flwr run` and `flwr supernode register`
use) with a connection built in code, so no `~/.flwr` config file and no pyproject migration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.cli.typing import SuperLinkConnection
from flwr.cli.utils import init_http_client_from_connection
from flwr.common.serde import fab_to_proto, run_from_proto, user_config_to_proto
from flwr.proto.control_pb2 import (ListRunsRequest, RegisterNodeRequest,  # pylint: disable=E0611
                                    StartRunRequest, StreamLogsRequest)
from flwr.common.constant import Status
from flwr.supercore.fab import Fab
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from cryptography.hazmat.primitives import serialization

from runtime.bundle import build_bundle


@dataclass(frozen=True)
class RunState:
    run_id: int
    status: str          # pending | starting | running | finished
    sub_status: str      # completed | failed | stopped (when finished)
    details: str


def connect(address: str, ca_cert: Path | None):
    """A Control API client for the SuperLink at `address` (TLS verified with `ca_cert`)."""
    conn = SuperLinkConnection(name="fedclinic", address=address,
                               root_certificates=str(Path(ca_cert).resolve()) if ca_cert else None,
                               insecure=ca_cert is None)
    return init_http_client_from_connection(conn)


def register_site_key(client, public_key_file: Path, name: str) -> int:
    """Register one site's OpenSSH EC public key; returns the node id the SuperLink assigned."""
    key = serialization.load_ssh_public_key(public_key_file.read_bytes())
    res = client.RegisterNode(RegisterNodeRequest(public_key=public_key_to_bytes(key),
                                                  name=name))
    return int(res.node_id)


def start_run(client, overrides: dict[str, object], bundle: tuple[bytes, str] | None = None
              ) -> int:
    """Submit `bundle` (default: the bundle of this fedclinic version) with run-config
    `overrides`; returns the run id."""
    fab_bytes, fab_hash = bundle or build_bundle()
    req = StartRunRequest(fab=fab_to_proto(Fab(fab_hash, fab_bytes, {})),
                          override_config=user_config_to_proto(overrides),
                          federation="", app_spec="")
    res = client.StartRun(req)
    if not res.HasField("run_id"):
        raise RuntimeError(f"the SuperLink did not start the run ({res})")
    return int(res.run_id)


def run_state(client, run_id: int) -> RunState:
    res = client.ListRuns(ListRunsRequest(run_id=run_id))
    if run_id not in res.run_dict:
        raise RuntimeError(f"run {run_id} is unknown to the SuperLink")
    run = run_from_proto(res.run_dict[run_id])
    return RunState(run_id, run.status.status, run.status.sub_status, run.status.details)


def follow(client, run_id: int, echo: Callable[[str], None], poll: float = 1.0,
           timeout: float | None = None) -> RunState:
    """Stream the run's log lines until it finishes; return its final state."""
    after = 0.0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        after = _drain_logs(client, run_id, after, echo)
        state = run_state(client, run_id)
        if state.status == Status.FINISHED:
            _drain_logs(client, run_id, after, echo)
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {state.status} after {timeout:.0f} s")
        time.sleep(poll)


def _drain_logs(client, run_id: int, after: float, echo: Callable[[str], None]) -> float:
    latest = after
    try:
        for res in client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=after)):
            for line in res.log_output.splitlines():
                echo(line)
            latest = max(latest, res.latest_timestamp)
            if not res.log_output:
                break
    except Exception:  # noqa: BLE001 - the stream ends with an error once all logs are sent
        pass
    return latest
