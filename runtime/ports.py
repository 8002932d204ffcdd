"""TCP ports: pick a free one, check that a given one is free, wait until one accepts
connections."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from pathlib import Path

from common.config import ConfigError

ADDRESS_IN_USE = ("address already in use", f"[errno {errno.EADDRINUSE}]")  # as servers log it


class PortInUse(ConfigError):
    """A port given on the command line is taken: a configuration error (exit 2)."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, flag: str) -> None:
    """PortInUse naming `flag` and the port if something already listens on host:port. Binds
    as servers do (SO_REUSEADDR), so a port that only lingers in TIME_WAIT counts as free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"{flag} {port}: {host}:{port} is already in use ({exc.strerror}); "
                            f"another process listens there (on a host with several sites, "
                            f"give each its own {flag}, or leave {flag} out to pick a free "
                            f"one)") from None


def listens_on(pid: int, port: int) -> bool | None:
    """True if process `pid` holds a listening TCP socket on `port`, False if it does not (so
    whoever answers there is another process); None where this cannot be read (no Linux /proc)."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return None
    inodes = set()
    for table in tables:
        lines = table.read_text().splitlines()[1:] if table.exists() else []
        for fields in map(str.split, lines):    # sl local remote st ... uid timeout inode
            listening = len(fields) > 9 and fields[3] == "0A"          # 0A: TCP_LISTEN
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def said_address_in_use(text: str) -> bool:
    """True if a server's log `text` says that it could not bind its port."""
    lowered = text.lower()
    return any(marker in lowered for marker in ADDRESS_IN_USE)


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None,
                  log_file: Path | None = None) -> None:
    """Readiness polling: return once host:port accepts TCP connections. If `process` exits
    first, RuntimeError with the tail of its `log_file`; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            tail = log_file.read_text()[-2000:] if log_file and log_file.exists() else ""
            raise RuntimeError(f"the process exited with code {process.returncode} before "
                               f"{host}:{port} came up; log tail:\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} did not accept connections within "
                                   f"{timeout:.0f} s") from None
            time.sleep(0.1)
