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
"""

from __future__ import annotations

import os
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


def main() -> None:
    from runtime.processes import PARENT_PID_ENV, die_with_parent

    if os.environ.get(PARENT_PID_ENV):   # started by `fedclinic site`: first, before the imports
        die_with_parent()                # below (seconds on a small host)
    from flwr.supernode import start_client_internal as node_loop
    from flwr.supernode.cli import flower_supernode

    from runtime.transport import use_fast_object_pulls

    cap = float(os.environ.get("FEDCLINIC_NODE_POLL_SECONDS", DEFAULT_POLL_SECONDS))
    node_loop.time = _CappedSleep(cap)
    use_fast_object_pulls()
    flower_supernode()


if __name__ == "__main__":
    main()
