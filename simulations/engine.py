"""Flower's simulation engine on Ray: a Ray instance of this machine's own or an existing Ray
cluster, each simulated site's resources checked against what the cluster has, and a crash
anywhere (the engine, the ServerApp or a site) ending the run at once with its first error.

Flower's engine alone would pass ``num_cpus`` to ``ray.init`` (refused when connecting to a
cluster), and after its engine crashed it left the ServerApp's thread waiting for replies until
the round timeout (an hour by default). Here Ray is started or joined first (`start_ray`; Flower
then finds it initialised and only adds its actors), the ServerApp sees the grid through
`CrashAwareGrid`, which ends it as soon as the engine has stopped or a site has raised, and the
ClientApp runs as `simulated_site_app`: the real handlers, each task's Ray node printed
(`--verbose` shows it) and a site's exception named with its site.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError
from runtime.forwarding_grid import ForwardingGrid

RAY_ADDRESS_ENV = "RAY_ADDRESS"
PLACEMENT_PREFIX = "fedclinic-placement:"     # the line a site prints for each task
# a reply error that is a crash (a site raised, or its app did not load); fedclinic's own reply
# codes (4030-4033: budget spent, policy refused, ...) are answers, not crashes
CRASH_CODES = {ErrorCode.UNKNOWN, ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
               ErrorCode.CLIENT_APP_RAISED_EXCEPTION, ErrorCode.CLIENT_APP_CRASHED}


@dataclass(frozen=True)
class RayResources:
    """Where the simulated sites run and what each one takes.

    ``address``: '' = the ``RAY_ADDRESS`` environment variable if set, else a Ray instance of
    this machine's own with every core; ``auto`` or ``HOST:PORT`` = an existing cluster (started
    with ``ray start``), joined without asking it for resources. Each site (a Ray actor) takes
    ``cpus_per_site`` CPUs and ``gpus_per_site`` GPUs; Ray runs as many at once as fit."""

    address: str = ""
    cpus_per_site: float = 1.0
    gpus_per_site: float = 0.0

    def cluster_address(self) -> str:
        """The cluster to join, '' for a Ray instance of this machine's own."""
        return self.address or os.environ.get(RAY_ADDRESS_ENV, "")

    def check(self) -> None:
        if self.cpus_per_site <= 0:
            raise ConfigError(f"--cpus-per-site {self.cpus_per_site:g}: must be > 0")
        if self.gpus_per_site < 0:
            raise ConfigError(f"--gpus-per-site {self.gpus_per_site:g}: must be >= 0")


class SimulationCrashed(RuntimeError):
    """The simulation engine, the ServerApp or a site failed: the run ends with this message."""


def backend_config(resources: RayResources | None = None, verbose: bool = False) -> dict:
    """Flower's backend config: each site's resources; ``init_args`` as `start_ray` uses them
    (Ray is started before Flower sees this config). Site errors end the run with their message
    (`CrashAwareGrid`), so actor logs are shown only if verbose."""
    resources = resources or RayResources()
    return {"client_resources": {"num_cpus": resources.cpus_per_site,
                                 "num_gpus": resources.gpus_per_site},
            "init_args": ray_init_args(resources, verbose)}


def ray_init_args(resources: RayResources, verbose: bool) -> dict:
    """``ray.init`` arguments: joining a cluster takes its resources as they are (Ray refuses
    ``num_cpus``/``num_gpus`` then); a Ray of this machine's own gets every core."""
    args: dict[str, Any] = {"logging_level": "INFO" if verbose else "ERROR",
                            "log_to_driver": verbose, "include_dashboard": False}
    address = resources.cluster_address()
    if address:
        args["address"] = address
    else:
        args["num_cpus"] = max(1, os.cpu_count() or 1)
    return args


def start_ray(resources: RayResources, verbose: bool = False) -> int:
    """Start Ray here or join the cluster, then check that at least one of its nodes fits a
    site; returns how many sites can run at once. A cluster that cannot be reached, or where no
    site fits, is a ConfigError naming the address and what each node has."""
    import ray

    from simulations.ray_session import kept

    resources.check()
    address = resources.cluster_address()
    if ray.is_initialized():
        if kept():                 # a sweep keeps one Ray for its cells (simulations.ray_session)
            return sites_at_once(ray.nodes(), resources, address)
        ray.shutdown()
    if address:
        check_reachable(address)
    # Ray's workers inherit the environment but not this process's sys.path (as Flower does)
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                 **ray_init_args(resources, verbose))
    except ConnectionError as exc:
        raise ConfigError(f"--ray-address {address}: cannot join that Ray cluster ({exc}); "
                          f"start it with `ray start --head` or check the address") from None
    try:
        return sites_at_once(ray.nodes(), resources, address)
    except ConfigError:
        ray.shutdown()
        raise


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A ConfigError now if nothing answers at the cluster's address ('auto': the cluster
    `ray start` recorded on this machine), instead of Ray retrying for minutes."""
    host_port = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            host_port = canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as exc:
            raise ConfigError(f"--ray-address auto: {exc}") from None
    if "://" in host_port:
        raise ConfigError(f"--ray-address {address}: expected auto or the head's HOST:PORT "
                          f"(the GCS port `ray start --head --port` printed), not a Ray Client "
                          f"URL")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers at {host_port} "
                          f"({exc}); start its head with `ray start --head --port {port}` or "
                          f"check the address") from None


def sites_at_once(nodes: list[dict], resources: RayResources, address: str = "") -> int:
    """How many sites fit on the alive nodes at once (per node, as Flower sizes its pool); a
    ConfigError if none fits anywhere."""
    fits, seen = 0, []
    for node in nodes:
        have = node.get("Resources") or {}
        if not node.get("Alive", True) or not have:
            continue
        cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
        seen.append(f"{node.get('NodeManagerAddress', '?')} ({node.get('NodeID', '?')[:8]}): "
                    f"{cpus:g} CPU, {gpus:g} GPU")
        here = int(cpus // resources.cpus_per_site)
        if resources.gpus_per_site > 0:
            here = min(here, int(gpus // resources.gpus_per_site))
        fits += here
    if fits == 0:
        where = f"the Ray cluster at {address}" if address else "this machine's Ray"
        raise ConfigError(
            f"no node of {where} fits one site: each site asks for "
            f"--cpus-per-site {resources.cpus_per_site:g} and --gpus-per-site "
            f"{resources.gpus_per_site:g}; the nodes have: {'; '.join(seen) or 'none alive'}. "
            f"Lower --cpus-per-site/--gpus-per-site or add nodes")
    return fits


# --------------------------------------------------------------------------- the ServerApp side

def crash_of(reply: Message) -> str:
    """The message of a reply that reports a crash at the site ('' for a result or an answer
    such as a policy refusal)."""
    if not reply.has_error() or reply.error.code not in CRASH_CODES:
        return ""
    reason = reply.error.reason
    marker = "Message: "           # Flower's "<class ...ClientAppException'>:<'... Message: X'>"
    if marker in reason:
        reason = reason.split(marker, 1)[1].rstrip("'>")
    return reason.strip()


class CrashAwareGrid(ForwardingGrid):
    """The grid the ServerApp gets in simulation: Flower's, except that once ``stopped`` is set
    (the engine crashed) or a site's reply reports a crash, the next call raises
    SimulationCrashed, so the ServerApp's thread ends within one poll instead of waiting out the
    round timeout. The first crash's message is kept in ``first_error``."""

    def __init__(self, grid: Grid, stopped: threading.Event) -> None:
        super().__init__(grid)
        self.stopped = stopped
        self.first_error = ""

    def _check(self) -> None:
        if self.stopped.is_set():
            raise SimulationCrashed(self.first_error or "the simulation engine stopped")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            crash = crash_of(reply)
            if crash:
                self.first_error = self.first_error or crash
                self.stopped.set()
                raise SimulationCrashed(self.first_error)
        return replies

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self.grid.push_messages(messages)

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self.grid.get_node_ids()

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        from server.messaging import send_and_receive

        return send_and_receive(self, list(messages), timeout)[0]


def crash_aware(server_app: ServerApp, stopped: threading.Event,
                grids: list[CrashAwareGrid]) -> ServerApp:
    """``server_app`` run on a `CrashAwareGrid` (appended to ``grids``, to read its first
    error)."""
    outer = ServerApp()

    @outer.main()
    def main(grid: Grid, context: Context) -> None:
        aware = CrashAwareGrid(grid, stopped)
        grids.append(aware)
        server_app(aware, context)

    return outer


# --------------------------------------------------------------------------- the site side

def _ray_node() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return "none"


def run_placed(handler: Any, phase: str, msg: Message, context: Context) -> Message:
    """Run one task of the real ClientApp; print where it ran; name the site in its error."""
    site = context.node_config.get("partition-id", "?")
    server_round = msg.content["config"].get("server-round", "?") if "config" in msg.content \
        else "?"
    print(f"{PLACEMENT_PREFIX} site {site} {phase} round {server_round} on ray node "
          f"{_ray_node()} host {socket.gethostname()} pid {os.getpid()}", file=sys.stderr,
          flush=True)
    try:
        return handler(msg, context)
    except Exception as exc:
        raise RuntimeError(f"site {site} ({phase}, round {server_round}): "
                           f"{type(exc).__name__}: {exc}") from exc


def _train(msg: Message, context: Context) -> Message:
    from client.train_task import train_reply

    return run_placed(train_reply, "train", msg, context)


def _evaluate(msg: Message, context: Context) -> Message:
    from client.evaluate_task import evaluate_reply

    return run_placed(evaluate_reply, "evaluate", msg, context)


simulated_site_app = ClientApp()
simulated_site_app.train()(_train)
simulated_site_app.evaluate()(_evaluate)
