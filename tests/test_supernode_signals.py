"""A SuperNode counts a stop signal once (client.supernode._StopOnce): a second SIGTERM, which comes
whenever the site's whole process group is signalled, must not cut short Flower's clean exit (its
deactivation at the server), or a restarted site waits a minute to be activated again.

Real processes and Flower's real signal handler; the "clean exit" is a `finally` that takes a
second, as the SuperNode's DeactivateNode call does when its loop ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from deploy.loopback import wait_until

CHILD = textwrap.dedent("""
    import sys, time, types
    from pathlib import Path
    from flwr.supercore.exit import register_signal_handlers
    from flwr.supercore.telemetry import EventType
    from client.supernode import _stop_signals_count_once

    out = Path(sys.argv[1])
    node_loop = types.SimpleNamespace(register_signal_handlers=register_signal_handlers)
    _stop_signals_count_once(node_loop)
    (out / "started").write_text("")
    if sys.argv[2] == "start-only":          # killed before Flower's handler is installed
        while True:
            time.sleep(0.1)
    node_loop.register_signal_handlers(
        event_type=EventType.RUN_SUPERNODE_LEAVE, exit_message="leaving",
        exit_handlers=[lambda: (out / "stopping").write_text("")])
    (out / "registered").write_text("")
    try:
        while True:
            time.sleep(0.1)
    finally:                                  # the SuperNode deactivates here
        time.sleep(1.0)
        (out / "signed-off").write_text("")
""")


def _child(tmp_path: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_second_sigterm_does_not_cut_the_clean_exit_short(tmp_path):
    child = _child(tmp_path, "serve")
    try:
        wait_until(lambda: (tmp_path / "registered").exists() or child.poll() is not None, 120,
                   "the child to install Flower's handler")
        child.send_signal(signal.SIGTERM)             # the group's signal
        wait_until(lambda: (tmp_path / "stopping").exists(), 30, "Flower's exit to begin")
        child.send_signal(signal.SIGTERM)             # then `fedclinic site` stops it too
        child.send_signal(signal.SIGINT)              # and Ctrl-C, for good measure
        assert child.wait(30) == 0, child.stdout.read().decode()
        assert (tmp_path / "signed-off").exists()     # the finally ran to its end
    finally:
        child.kill()


def test_a_sigterm_before_flowers_handler_still_ends_the_process(tmp_path):
    child = _child(tmp_path, "start-only")
    try:
        wait_until(lambda: (tmp_path / "started").exists() or child.poll() is not None, 120,
                   "the child to start")
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 128 + signal.SIGTERM
    finally:
        child.kill()
