"""Why the server refused to activate this site, from what the server can say.

Flower 1.41's SuperLink answers a refused activation with one public message, "Failed to activate
SuperNode" (code FLEET_NODE_ACTIVATION_FAILED), whether it does not know the key ("No SuperNode
found with the given public key") or knows it but still counts the key's previous session as
online ("SuperNode with node ID N could not be activated"); the difference stays in the server's
log. What it does say to a site is whether a signed request is authenticated: the Fleet API's
node authentication accepts a request only if the signing key is registered (not revoked) under
the node id the request names, and answers 401 otherwise.

So the site keeps the node id the server gave its key (`record_node`, `<state>/node.json`,
written when the SuperNode logs "SuperNode ID: N"), and after a refusal asks once with a
harmless signed request (GetRun of run 0, which does not exist: read-only, no session touched):

* 401: the server does not know this key (never registered, or revoked): `KeyStatus.UNKNOWN`,
  a credential error a restart will not fix;
* any other answer (here 403, "Failed to get run"): the key is registered under that node id,
  so its previous session is what the server still counts as online:
  `KeyStatus.ONLINE_ELSEWHERE`, worth waiting for;
* no node id kept (this state folder never joined with this key), no answer, or a 5xx (a proxy
  in front of a server that is down): `KeyStatus.UNTOLD`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from pathlib import Path

from common.config import ConfigError
from common.private_files import write_private

NODE_RECORD = "node.json"                  # <state>/node.json: the node id of this site's key
NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")   # flwr.supernode.start_client_internal
UNAUTHORIZED = 401
PROBE_TIMEOUT = 10.0


class CredentialError(ConfigError):
    """The server refused this site's credentials (its CA or key): exit 2, a restart will not
    fix it."""


class KeyStatus(enum.Enum):
    UNKNOWN = "unknown"                    # the server does not know the key
    ONLINE_ELSEWHERE = "online-elsewhere"  # known; its previous session still counts as online
    UNTOLD = "untold"                      # no node id to ask about, or no answer


def node_id_in(text: str) -> int | None:
    """The last node id a SuperNode log `text` announces, if any."""
    found = NODE_ID_LINE.findall(text)
    return int(found[-1]) if found else None


def key_fingerprint(site_key: Path) -> str:
    """sha256 of the public key as the server stores it (PEM SubjectPublicKeyInfo)."""
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    return hashlib.sha256(public_key_to_bytes(_load_key(site_key).public_key())).hexdigest()


def record_node(state: Path, server: str, site_key: Path, node_id: int) -> None:
    """Keep the node id the server gave this key (0600, atomic)."""
    record = {"server": server, "public_key_sha256": key_fingerprint(site_key),
              "node_id": node_id}
    write_private(state / NODE_RECORD, (json.dumps(record, indent=2) + "\n").encode())


def recorded_node(state: Path, server: str, site_key: Path, log_text: str = "") -> int | None:
    """The node id kept for this key at this server; else the last one in the SuperNode's log
    (a state folder from before node.json), else None."""
    path = state / NODE_RECORD
    if path.exists():
        try:
            record = json.loads(path.read_text())
            if record.get("server") == server and \
                    record.get("public_key_sha256") == key_fingerprint(site_key):
                return int(record["node_id"])
        except (ValueError, KeyError, TypeError, OSError):
            pass
        return None
    return node_id_in(log_text)


def key_status(server: str, ca_cert: Path, site_key: Path, node_id: int | None) -> KeyStatus:
    """Ask the server, with one signed read-only request, whether it knows this key under
    `node_id` (see the module's docstring)."""
    import httpx
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.run_pb2 import GetRunRequest  # pylint: disable=E0611
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    if node_id is None:
        return KeyStatus.UNTOLD
    key = _load_key(site_key)
    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperNode"),
                    NodeAuthHttpInterceptor(key, key.public_key())]
    try:
        with FleetHttpClient(f"https://{server}", interceptors=interceptors,
                             verify=str(ca_cert), timeout=PROBE_TIMEOUT) as client:
            client.GetRun(GetRunRequest(node=Node(node_id=node_id), run_id=0))
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        if code == UNAUTHORIZED:
            return KeyStatus.UNKNOWN
        return KeyStatus.UNTOLD if code >= 500 else KeyStatus.ONLINE_ELSEWHERE   # 5xx: a proxy
    except (httpx.HTTPError, OSError, ValueError):
        return KeyStatus.UNTOLD
    return KeyStatus.ONLINE_ELSEWHERE      # run 0 exists after all: the request was accepted


def _load_key(site_key: Path):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    return load_ssh_private_key(Path(site_key).read_bytes(), password=None)
