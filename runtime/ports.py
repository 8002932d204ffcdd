"""TCP ports: pick a free one, wait until one accepts connections."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
