"""Flower's SuperLink as a child of `fedclinic server` that leaves nothing behind.

`flower-superlink` starts its SuperExec in a session of its own (`start_new_session`), and the
SuperExec starts each run's `flwr-serverapp` in that session. Flower ties them together only by
polling pids (a child raises SIGINT in itself once its parent is gone), which a ServerApp busy
in a round may never act on: killing `fedclinic server` left a `flwr-serverapp` running, holding
the run directory, and the next server start then had two ServerApps writing one run.

So `fedclinic server` starts the unmodified SuperLink through this module, which

* ends it when `fedclinic server` ends, however (SIGKILL included): the parent-death signal of
  `runtime.processes.die_with_parent` (one SIGTERM: Flower's own clean shutdown);
* remembers the process groups its children lead (the SuperExec's session) and, when the
  SuperLink stops or its parent is gone, signals each whole group: SIGTERM, then SIGKILL what is
  still there after `GROUP_GRACE_SECONDS`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from runtime.process_table import process_table

WATCH_SECONDS = 0.5
GROUP_GRACE_SECONDS = 3.0


def _child_groups(pid: int) -> set[int]:
    """Process groups led by live children of `pid` (Linux /proc; empty elsewhere)."""
    return {p.pid for p in process_table() if p.ppid == pid and p.pgrp == p.pid}


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class GroupReaper:
    """Remembers the groups the SuperLink's children lead; `reap` ends every one of them."""

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self._lock = threading.Lock()
        self._reaped = False

    def remember(self) -> None:
        found = _child_groups(os.getpid())
        with self._lock:
            self.groups |= found

    def reap(self) -> None:
        with self._lock:
            if self._reaped:
                return
            self._reaped = True
            groups = set(self.groups) | _child_groups(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = [g for g in groups if _group_alive(g)]
            for group in live:
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + GROUP_GRACE_SECONDS
            while live and time.monotonic() < deadline:
                time.sleep(0.1)
                live = [g for g in live if _group_alive(g)]
            if not live:
                return


def _watch(reaper: GroupReaper, parent: int) -> None:
    """Keep the groups up to date; reap them as soon as `fedclinic server` is gone."""
    while os.getppid() == parent:
        reaper.remember()
        time.sleep(WATCH_SECONDS)
    reaper.reap()


SERVERAPP_GRACE_SECONDS = 10.0


def end_with_parent(grace: float = SERVERAPP_GRACE_SECONDS) -> None:
    """In a deployed ServerApp (a `flwr-serverapp` the SuperExec started): once that parent is
    gone (the SuperLink and its SuperExec killed outright, where the reaping above never ran),
    Flower's own monitor raises SIGINT here, which a round under way may not act on; this
    thread ends the process `grace` s later whatever it is doing (the run resumes from its last
    checkpoint)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="fedclinic-serverapp-parent").start()


def main() -> None:
    from runtime.processes import PARENT_PID_ENV, die_with_parent

    parent = int(os.environ.get(PARENT_PID_ENV) or os.getppid())
    if os.environ.get(PARENT_PID_ENV):
        die_with_parent()
    reaper = GroupReaper()
    threading.Thread(target=_watch, args=(reaper, parent), daemon=True,
                     name="fedclinic-superlink-groups").start()
    from flwr.superlink.cli import flower_superlink

    try:
        flower_superlink()
    finally:
        reaper.reap()


if __name__ == "__main__":
    sys.argv[0] = "flower-superlink"
    main()
