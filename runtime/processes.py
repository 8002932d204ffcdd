"""Stopping the processes fedclinic starts (one process, or a whole process group), and tying a
child's life to its parent's: a child started by `fedclinic site` ends when the site ends, however
the site ends (SIGKILL included).

A child calls `die_with_parent` first thing. On Linux the kernel then signals it the moment its
parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a supervisor thread watches
``os.getppid()`` (the portable fallback, and the cover for a parent that died before the prctl
call). Either way the child gets SIGTERM exactly once, so it can end cleanly (a SuperNode
deactivates itself at the server, so the server stops waiting for it at once); a child still
there `FORCE_EXIT_SECONDS` later is ended with ``os._exit``.

Exactly once matters: the kernel sends the parent-death signal each time the child is handed to
another thread of the dying parent (the thread that started it may exit before the others), and
Flower's SIGTERM handler restores the default action after its first call, so a second SIGTERM
would cut its clean exit short. The kernel's signal is therefore SIGUSR1, which a handler here
turns into one SIGTERM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time

PARENT_PID_ENV = "FEDCLINIC_PARENT_PID"   # the pid a child of `fedclinic site` must not outlive
PR_SET_PDEATHSIG = 1                      # <linux/prctl.h>
PARENT_DEATH_SIGNAL = signal.SIGUSR1      # what the kernel sends; relayed once as `sig`
WATCH_SECONDS = 0.5                       # how often the supervisor thread looks at its parent
FORCE_EXIT_SECONDS = 15.0                 # after the parent's death: clean exit, or this

log = logging.getLogger("fedclinic.processes")


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` plus this process's pid as the parent a child started with it must not outlive."""
    return {**env, PARENT_PID_ENV: str(os.getpid())}


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGTERM) -> bool:
    """End this process (signal `sig` once, then ``os._exit``) when its parent dies. Call it from
    the main thread. `parent_pid`: the parent expected (default: $FEDCLINIC_PARENT_PID, else the
    current parent). Returns True if the kernel's parent-death signal was set (Linux), False
    where only the thread watches."""
    given = os.environ.pop(PARENT_PID_ENV, "")     # not passed on to this process's children
    if parent_pid is None:
        parent_pid = int(given or os.getppid())
    gone = _ParentGone(parent_pid, sig)
    signal.signal(PARENT_DEATH_SIGNAL, lambda *_: gone())
    armed = _set_parent_death_signal(PARENT_DEATH_SIGNAL)
    if os.getppid() != parent_pid:      # the parent died before the prctl call: no signal comes
        gone()
        return armed
    threading.Thread(target=_watch_parent, args=(parent_pid, gone), daemon=True,
                     name="fedclinic-parent-watch").start()
    return armed


class _ParentGone:
    """Called (by the kernel's signal or the watching thread, in any order, any number of
    times) when the parent is gone: signals this process once and forces the exit later."""

    def __init__(self, parent_pid: int, sig: int) -> None:
        self.parent_pid, self.sig = parent_pid, sig
        self._lock = threading.RLock()   # the handler may interrupt a call in the main thread
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        threading.Thread(target=_force_exit, daemon=True, name="fedclinic-force-exit").start()
        os.kill(os.getpid(), self.sig)


def _force_exit() -> None:
    time.sleep(FORCE_EXIT_SECONDS)
    os._exit(1)


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), ctypes.c_ulong(0),
                          ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, gone: _ParentGone) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_SECONDS)
    gone()


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
