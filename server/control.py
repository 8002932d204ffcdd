"""Talking to a SuperLink's Control API: register and revoke sites, submit the fedclinic bundle,
follow a run.

Uses Flower's own HTTP client for the Control API (`ControlHttpClient`, what `flwr run` and `flwr
supernode register` use) built in code, so no `~/.flwr` config file and no pyproject migration,
and given a TLS context that carries the operator's client certificate: the server's front
(server/operator_gate.py) lets only that certificate reach the Control API. The same headers as
Flower's CLI are sent (its client id and version).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
from flwr.common.constant import Status
from flwr.supercore.constant import NodeStatus
from flwr.common.serde import fab_to_proto, run_from_proto, user_config_to_proto
from flwr.proto.control_pb2 import (ListNodesRequest, ListRunsRequest,  # pylint: disable=E0611
                                    RegisterNodeRequest, StartRunRequest, StreamLogsRequest,
                                    UnregisterNodeRequest)
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from common.config import ConfigError
from runtime.bundle import build_bundle
from server.flower_contract import check_control_client

UNREGISTERED = NodeStatus.UNREGISTERED      # the status of a deleted (revoked) node


class OperatorRefused(ConfigError):
    """The server refused the Control API call: no operator certificate, or not the operator's."""


class ServerUnreachable(RuntimeError):
    """The server did not answer (down, wrong address, network): worth a retry."""

    reason: str = ""            # what the transport said (connection refused, reset, ...)



@dataclass(frozen=True)
class RunState:
    run_id: int
    status: str          # pending | starting | running | finished
    sub_status: str      # completed | failed | stopped (when finished)
    details: str


def operator_beside(ca_cert: Path) -> tuple[Path, Path]:
    """The operator credential where `fedclinic certs init` writes it, relative to its CA
    certificate: CERTS/ca/ca.crt -> CERTS/operator/operator.crt and operator.key."""
    base = Path(ca_cert).resolve().parent.parent
    return base / "operator" / "operator.crt", base / "operator" / "operator.key"


def tls_context(ca_cert: Path, operator: tuple[Path, Path] | None) -> ssl.SSLContext:
    """TLS that verifies the server against `ca_cert` and, with `operator`, presents the
    operator's (certificate, key). ConfigError naming the file if either does not load."""
    if not Path(ca_cert).is_file():
        raise ConfigError(f"--ca-cert {ca_cert}: file not found; it is the consortium's ca.crt")
    context = ssl.create_default_context(cafile=str(ca_cert))
    if operator is not None:
        cert, key = operator
        for flag, path in (("--operator-cert", cert), ("--operator-key", key)):
            if not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: file not found; `fedclinic certs init` writes "
                                  f"operator/operator.crt and operator.key (`certs operator` "
                                  f"issues another)")
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise ConfigError(f"--operator-cert {cert} / --operator-key {key}: not a PEM "
                              f"certificate and its private key ({exc}); a site key cannot be "
                              f"used here, only the operator credential from `fedclinic certs "
                              f"init`") from None
    return context


def connect(address: str, ca_cert: Path | None, operator: tuple[Path, Path] | bool = True):
    """A Control API client for the server at `address` (TLS verified with `ca_cert`; none:
    without TLS, a local --insecure server only). `operator`: the (certificate, key) to present;
    True = the operator credential beside `ca_cert` if it is there (`operator_beside`), False =
    none (the server then refuses every Control API call)."""
    check_control_client()
    interceptors = [CliClientHttpInterceptor(),
                    RuntimeVersionHttpInterceptor(component_name="flwr CLI")]
    if ca_cert is None:
        return ControlHttpClient(f"http://{address}", interceptors=interceptors, verify=False)
    if operator is True:
        beside = operator_beside(ca_cert)
        operator = beside if all(p.is_file() for p in beside) else False
    login = None if operator is False else operator
    return ControlHttpClient(f"https://{address}", interceptors=interceptors,
                             verify=tls_context(Path(ca_cert), login))  # type: ignore[arg-type]


def refusal(exc: BaseException) -> str | None:
    """What the server said when it refused a Control API call with 403 (else None)."""
    response = getattr(exc, "response", None)
    if not isinstance(exc, httpx.HTTPStatusError) or response is None \
            or response.status_code != 403:
        return None
    try:
        return str(json.loads(response.text).get("detail") or response.text)
    except (ValueError, AttributeError):
        return response.text or "403 Forbidden"


@contextmanager
def operator_session(address: str, ca_cert: Path | None, operator: tuple[Path, Path] | None,
                     what: str) -> Iterator:
    """A Control API client as the operator for the duration of the block, `what` it does said
    in the errors: the server's refusal (403, or a TLS refusal of the client certificate) is
    OperatorRefused (a ConfigError: exit code 2), an unreachable server ServerUnreachable."""
    client = connect(address, ca_cert, operator if operator is not None else False)
    try:
        yield client
    except httpx.HTTPStatusError as exc:
        said = refusal(exc)
        if said is None:
            raise
        raise OperatorRefused(f"the server at {address} refused to {what}: {said}") from None
    except httpx.TransportError as exc:
        text = str(exc) or type(exc).__name__
        said = tls_refusal(address, tls_context(Path(ca_cert), operator)) \
            if operator is not None and ca_cert is not None else None
        if said is not None:
            raise OperatorRefused(f"the server at {address} refused the TLS connection to {what} "
                                  f"({said}); it takes only a client certificate that its "
                                  f"consortium CA signed for the operator") from None
        unreachable = ServerUnreachable(f"the server at {address} did not answer while trying "
                                        f"to {what} ({text})")
        unreachable.reason = text
        raise unreachable from None
    finally:
        client.close()


def tls_refusal(address: str, context: ssl.SSLContext, timeout: float = 10.0) -> str | None:
    """Why the server refuses this TLS client (its alert: unknown CA, unsupported certificate,
    ...), or None if it accepts it or cannot be reached. Under TLS 1.3 a refused client
    certificate shows only on the first read, which HTTP clients report as 'disconnected'."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"POST /v1/control/list-runs HTTP/1.1\r\nhost: fedclinic\r\n"
                        b"content-length: 0\r\nconnection: close\r\n\r\n")
            answer = tls.recv(1)
    except ssl.SSLEOFError:
        answer = b""
    except ssl.SSLError as exc:
        return str(exc.reason or exc).replace("_", " ").lower()
    except (OSError, ValueError):
        return None
    # A server that verified the certificate answers in HTTP; one that refused it hangs up.
    return None if answer else "it closed the connection after the TLS handshake"


def list_site_nodes(client) -> list:
    """Every node the SuperLink knows (Flower's NodeInfo: node_id, name, public_key, status),
    revoked ones included."""
    return list(client.ListNodes(ListNodesRequest()).nodes_info)


def unregister_node(client, node_id: int) -> None:
    """Revoke a node: Flower marks it unregistered; its key is refused from its next request."""
    client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))


def public_key_bytes(public_key_file: Path) -> bytes:
    """An OpenSSH EC public key file as the bytes Flower stores and compares."""
    key = serialization.load_ssh_public_key(Path(public_key_file).read_bytes())
    return public_key_to_bytes(key)


def register_site_key(client, public_key_file: Path, name: str) -> int:
    """Register one site's OpenSSH EC public key; returns the node id the SuperLink assigned."""
    res = client.RegisterNode(RegisterNodeRequest(public_key=public_key_bytes(public_key_file),
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
