"""Flower's SuperNode, started with a shorter idle poll (`fedclinic site` runs it this way).

Flower 1.41's SuperNode asks the SuperLink for work every 3 s when idle and checks for the
ClientApp's reply every 0.5 s (`flwr.supernode.start_client_internal`). Each message of a round
therefore waited 1.5 s on average before the site even saw it: about 3 s per round (train +
evaluate) of pure polling, more than the whole 2 s per-round budget for a site's overhead. This
entry point runs the unmodified SuperNode with those waits capped at FEDCLINIC_NODE_POLL_SECONDS
(default 0.25 s): 4 requests per second per idle site, which a SuperLink serves easily. It also
retries object pulls quickly (`runtime.transport`).

It lives no longer than the `fedclinic site` that started it (`runtime.processes.die_with_parent`:
the kernel's parent-death signal on Linux, a thread watching the parent everywhere): when the site
dies, even by SIGKILL, this SuperNode gets SIGTERM, deactivates itself at the server (so the
server stops waiting for it and a restarted site is activated at once) and exits.

A stop signal counts once. Flower's handler restores the handler that was there before it after
its first call, and a second SIGTERM would then end the process before it deactivates at the
server, so that a restarted site waits about a minute (two missed heartbeats) to be activated
again. The second comes whenever the whole process group is signalled (Ctrl-C in a terminal,
`kill -TERM -PGID`): the SuperNode gets the signal, and then `fedclinic site` stops it with
another. So before Flower's handler is installed this entry point installs its own
(`_StopOnce`): a signal before Flower's handler ends the process (it has not joined yet), one
after Flower's first is ignored (Flower's exit is under way and forced within seconds).
"""

from __future__ import annotations

import os
import signal
import time as _time

DEFAULT_POLL_SECONDS = 0.25


class _CappedSleep:
    """The `time` module, except that sleep() never waits longer than `cap` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        _time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str):
        return getattr(_time, name)


class _StopOnce:
    """The SIGTERM/SIGINT handler in place before Flower's, and again once Flower's first call
    restored it (`installed` is set when Flower has installed its own)."""

    def __init__(self) -> None:
        self.installed = False

    def __call__(self, signum: int, _frame) -> None:
        if not self.installed:           # still starting: nothing to sign off from
            raise SystemExit(128 + signum)
        # else: Flower is already exiting cleanly; a repeat must not cut that short

    def wrap(self, register):
        """Flower's `register_signal_handlers`, noting when it has run."""
        def registered(*args, **kwargs):
            register(*args, **kwargs)
            self.installed = True
        return registered


def _stop_signals_count_once(node_loop) -> _StopOnce:
    stop = _StopOnce()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    node_loop.register_signal_handlers = stop.wrap(node_loop.register_signal_handlers)
    return stop


def main() -> None:
    from runtime.processes import PARENT_PID_ENV, die_with_parent

    if os.environ.get(PARENT_PID_ENV):   # started by `fedclinic site`: first, before the imports
        die_with_parent()                # below (seconds on a small host)
    from flwr.supernode import start_client_internal as node_loop
    from flwr.supernode.cli import flower_supernode

    from runtime.transport import use_fast_object_pulls

    cap = float(os.environ.get("FEDCLINIC_NODE_POLL_SECONDS", DEFAULT_POLL_SECONDS))
    node_loop.time = _CappedSleep(cap)
    _stop_signals_count_once(node_loop)
    use_fast_object_pulls()
    flower_supernode()


if __name__ == "__main__":
    main()
