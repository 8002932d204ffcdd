"""The server's one public port: TLS for everyone, the Control API for the operator only.

Why. Flower 1.41's SuperLink serves the Fleet API (sites), the Control API (submit/stop runs,
register/unregister site keys) and the Runtime API (its ServerApp processes) from one uvicorn
app on one address, and the open-source build authenticates no Control API caller (its
`ControlAuthnPlugin` is a no-op; OIDC exists only in other distributions behind
`FLWR_OIDC_ENABLED`). Anyone who could reach the port with the public `ca.crt` could run jobs and
enrol sites. fedclinic therefore:

1. starts the SuperLink on 127.0.0.1 only, on a free port, with a throw-away loopback
   certificate (server/loopback_tls.py) - nothing off the host reaches it directly;
2. listens on the public address itself and terminates TLS with the consortium's server
   certificate, asking for a client certificate (CERT_OPTIONAL, verified against the consortium
   CA by OpenSSL, which also refuses one not meant for client authentication);
3. a connection whose certificate carries the operator role (server/operator_role.py: EKU
   clientAuth and OU=operator, made only by `fedclinic certs` with the offline CA key) is piped
   to the SuperLink unchanged: the operator may use every API;
4. any other connection (a site, the `site doctor`, a party holding only ca.crt) is piped to a
   loopback HTTP proxy (server/fleet_filter.py) that forwards the Fleet API and refuses the rest
   with 403; a certificate that verifies but lacks the role gets 403 at once.

Sites keep dialling one port with their CA and key, unchanged; Flower runs unmodified, started by
its own command; the checks are stdlib `ssl`/OpenSSL (mutual TLS), `cryptography` (the role),
uvicorn and httpx (the proxy). What this relies on in Flower is checked at start
(server/flower_contract.py): a Flower upgrade that moves an API stops the server with a clear
error instead of opening or closing the wrong door. Local accounts on the server host can reach
the loopback SuperLink: the server host is the operator's, run nothing else there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.config import ConfigError
from server.fleet_filter import fleet_proxy, loopback_socket
from server.loopback_tls import LOOPBACK_HOST
from server.operator_role import NotOperator, operator_name

HANDSHAKE_SECONDS = 20.0
CHUNK = 1 << 16
REFUSED_BODY = 64 << 20       # the most of a refused request's body read before answering


@dataclass(frozen=True)
class GateConfig:
    host: str                 # the public address (what sites and the operator dial)
    port: int
    server_cert: Path         # the consortium's server certificate and key
    server_key: Path
    ca_cert: Path             # the consortium CA: client certificates must chain to it
    superlink_port: int       # the loopback SuperLink
    superlink_ca: Path        # its loopback CA


def server_context(cfg: GateConfig) -> ssl.SSLContext:
    """TLS towards the world: the server certificate; a client certificate is asked for and, if
    given, must verify against the consortium CA for client authentication."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cfg.server_cert, cfg.server_key)
    context.load_verify_locations(cafile=str(cfg.ca_cert))
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def superlink_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _forbidden(detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  detail: str) -> None:
    """Answer the first request 403 and close. The request is read first (headers, and a body
    of up to REFUSED_BODY bytes), so the client is not cut off mid-send and sees the answer."""
    with contextlib.suppress(Exception):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANDSHAKE_SECONDS)
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = min(int(value.strip()), REFUSED_BODY)
        if length:
            await asyncio.wait_for(reader.readexactly(length), HANDSHAKE_SECONDS)
        writer.write(_forbidden(detail))
        await writer.drain()
    await _close(writer)


_REQUEST_LINE = re.compile(rb"(?:^|\r\n)POST (/v1/control/[a-z-]+) HTTP/1\.[01]\r\n")


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                seen: Callable[[str], None] | None = None) -> None:
    """Copy until EOF; `seen` gets the path of each Control API request line passing through
    (the operator's calls: who submitted or revoked what, for the server's console)."""
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, asyncio.CancelledError):
        while data := await reader.read(CHUNK):
            if seen is not None:
                for path in _REQUEST_LINE.findall(data):
                    with contextlib.suppress(Exception):
                        seen(path.decode("ascii"))
            writer.write(data)
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                seen: Callable[[str], None] | None = None) -> None:
    """Both directions until either side closes; then close both."""
    up_reader, up_writer = upstream
    tasks = [asyncio.ensure_future(_copy(reader, up_writer, seen)),
             asyncio.ensure_future(_copy(up_reader, writer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:                     # also when the gate stops and cancels this connection
        for task in tasks:
            task.cancel()
        up_writer.close()
        writer.close()


class _Accept(asyncio.Protocol):
    """Takes a new connection, pauses it at once and hands it to the gate."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()                      # type: ignore[attr-defined]
        task = asyncio.ensure_future(self.gate._accept(transport))  # type: ignore[arg-type]
        self.gate._tasks.add(task)
        task.add_done_callback(self.gate._tasks.discard)


class Gate:
    """The public listener and the Fleet proxy, on one asyncio loop in a background thread."""

    def __init__(self, cfg: GateConfig, echo: Callable[[str], None] = print) -> None:
        self.cfg, self.echo = cfg, echo
        self._tls = server_context(cfg)
        self._upstream_tls = superlink_context(cfg.superlink_ca)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fedclinic-gate", daemon=True)
        self._proxy_port = 0
        self._tasks: set[asyncio.Future] = set()      # connections being served
        # (operator name, Control API path) of each operator call: server/events.py
        self.on_operator_request: Callable[[str, str], None] | None = None

    # --------------------------------------------------------------- life cycle (caller side)

    def start(self, timeout: float = 30.0) -> None:
        """Listen; ConfigError naming the address if it cannot be bound."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the gate on {self.cfg.host}:{self.cfg.port} did not start "
                               f"within {timeout:.0f} s")
        if self._error is not None:
            raise self._error

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    # ------------------------------------------------------------------- the loop (its thread)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or ends the thread
            self._error = self._error or exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        import uvicorn

        self._stop = asyncio.Event()
        proxy_socket = loopback_socket()
        self._proxy_port = proxy_socket.getsockname()[1]
        app = fleet_proxy(f"https://{LOOPBACK_HOST}:{self.cfg.superlink_port}",
                          self._upstream_tls)
        proxy = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning",
                                              access_log=False, log_config=None))
        proxy_task = asyncio.ensure_future(proxy.serve(sockets=[proxy_socket]))
        try:
            public = await asyncio.get_running_loop().create_server(
                lambda: _Accept(self), self.cfg.host, self.cfg.port, reuse_address=True,
                backlog=512)
        except OSError as exc:
            self._error = ConfigError(f"--address {self.cfg.host}:{self.cfg.port}: cannot "
                                      f"listen there ({exc.strerror or exc}); is another "
                                      f"server running on that port?")
            proxy.should_exit = True
            await proxy_task
            return
        while not proxy.started and not proxy_task.done():
            await asyncio.sleep(0.05)
        if proxy_task.done():
            public.close()
            raise RuntimeError("the gate's Fleet proxy (uvicorn) did not start")
        self._ready.set()
        async with public:
            await self._stop.wait()
        for task in list(self._tasks):          # open connections end with the server
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        proxy.should_exit = True
        await proxy_task
        await app.client.aclose()  # type: ignore[attr-defined]

    async def _accept(self, raw: asyncio.Transport) -> None:
        """TLS on a new connection, then the role check and the pipe. The raw transport was
        paused before it read a byte, so the ClientHello is all start_tls's (a StreamWriter's
        start_tls after start_server loses bytes its reader already buffered)."""
        loop = asyncio.get_running_loop()
        peer = (raw.get_extra_info("peername") or ("?",))[0]
        reader = asyncio.StreamReader(limit=CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            tls = await loop.start_tls(raw, protocol, self._tls, server_side=True,
                                       ssl_handshake_timeout=HANDSHAKE_SECONDS)
        except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError,
                RuntimeError) as exc:    # RuntimeError: the client left before TLS began
            if isinstance(exc, ssl.SSLCertVerificationError):
                self.echo(f"fedclinic server: refused a client certificate from {peer} "
                          f"({exc.verify_message})")
            raw.close()
            return
        if tls is None:               # the client went away during the handshake
            raw.close()
            return
        protocol.connection_made(tls)
        writer = asyncio.StreamWriter(tls, protocol, reader, loop)
        await self._handle(reader, writer, peer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      peer: str) -> None:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        seen = None
        try:
            upstream = await self._upstream(der, peer)
            if der is not None and self.on_operator_request is not None:
                name, hook = operator_name(der), self.on_operator_request
                seen = lambda path: hook(name, path)  # noqa: E731
        except NotOperator as exc:
            self.echo(f"fedclinic server: refused {peer}: {exc}")
            await _refuse(reader, writer, f"fedclinic server: {exc}; the Control API takes "
                                          "only the operator certificate")
            return
        except OSError as exc:
            self.echo(f"fedclinic server: the SuperLink did not accept a connection ({exc})")
            await _close(writer)
            return
        await _pipe(reader, writer, upstream, seen)

    async def _upstream(self, der: bytes | None, peer: str
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Operator: the SuperLink itself. Anyone else: the Fleet-only proxy."""
        if der is None:
            return await asyncio.open_connection(LOOPBACK_HOST, self._proxy_port)
        name = operator_name(der)
        self.echo(f"fedclinic server: operator {name!r} connected from {peer}")
        return await asyncio.open_connection(LOOPBACK_HOST, self.cfg.superlink_port,
                                             ssl=self._upstream_tls,
                                             server_hostname=LOOPBACK_HOST)
