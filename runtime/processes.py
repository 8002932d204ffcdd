"""Stopping the processes fedclinic starts: one process, or a whole process group."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL, grace: float = 10.0) -> None:
    """Signal the process's whole group (a process started with `start_new_session=True` and the
    Flower processes it started); SIGKILL the group if it is still there after `grace` s."""
    for signum in (sig, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        if signum == signal.SIGKILL:
            return
    try:                       # the leader exited: make sure no child of its group is left
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
