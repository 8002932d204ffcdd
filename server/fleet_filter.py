"""The sites' side of the operator gate: an HTTP reverse proxy that forwards Flower's Fleet API
(POST /v1/fleet/...) to the loopback SuperLink and answers everything else 403.

Built from well-kept parts Flower itself runs on: uvicorn serves this ASGI app (on a loopback
socket that server/operator_gate.py feeds with the decrypted bytes of every connection that
showed no operator certificate) and httpx forwards each request, streamed both ways, over TLS to
the SuperLink. Request and response bodies and headers pass unchanged (the SuperNode's signed
headers included), except the hop-by-hop headers a proxy must not forward.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from server.flower_contract import FLEET_PREFIX

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", b"host"})
_OWN = frozenset({b"server", b"date"})       # uvicorn writes its own
REFUSED = ("fedclinic server: this port gives sites the Fleet API only; the Control API "
           "(submit or stop runs, register or revoke sites) needs the operator's certificate "
           "from `fedclinic certs init` (fedclinic run --operator-cert/--operator-key)")


def allowed(method: str, path: str) -> bool:
    """What a party without the operator certificate may ask: the Fleet API, nothing else."""
    return method == "POST" and path.startswith(FLEET_PREFIX) and ".." not in path


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _body(receive: Receive) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("the site closed the connection mid-request")
            yield message.get("body", b"")
            if not message.get("more_body"):
                return
    return chunks()


def fleet_proxy(upstream: str, verify: ssl.SSLContext) -> Callable[[Scope, Receive, Send],
                                                                    Awaitable[None]]:
    """The ASGI app: Fleet requests to `upstream` (https://127.0.0.1:PORT), the rest 403."""
    client = httpx.AsyncClient(base_url=upstream, verify=verify,
                               # pool: a request waits at most 30 s for a free upstream
                               # connection (else 502 and the site retries), never 600 s
                               timeout=httpx.Timeout(600.0, connect=10.0, pool=30.0),
                               limits=httpx.Limits(max_connections=200))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if not allowed(scope["method"], scope["path"]):
            await _reply(send, 403, REFUSED)
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        target = scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        request = client.build_request(scope["method"], target, headers=headers,
                                       content=_body(receive))
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await _reply(send, 502, f"fedclinic server: the SuperLink did not answer ({exc})")
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.lower() not in HOP_BY_HOP | _OWN]})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    app.client = client  # type: ignore[attr-defined]   # closed by the gate on shutdown
    return app


def loopback_socket() -> socket.socket:
    """A listening socket on 127.0.0.1 with a free port, for uvicorn (no race for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.setblocking(False)
    return sock
