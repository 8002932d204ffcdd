"""What fedclinic's operator gate relies on in Flower, checked when `fedclinic server` starts.

server/operator_gate.py lets sites reach only Flower's Fleet API and keeps the Control and
Runtime APIs for the operator. That is sound only while Flower serves them as it does in the
version checked here: one HTTP app whose Fleet routes all live under /v1/fleet/ (and no Control
or Runtime route does), started by `flower-superlink` with the flags fedclinic passes, with the
legacy gRPC Control/Fleet servers off unless their environment switches are set. If any of that
changed in an upgrade, the server refuses to start (ConfigError, exit code 2) and says what to
re-check, rather than silently exposing the Control API or refusing every site.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect

from common.config import ConfigError

TESTED_FLOWER = ("1.41",)          # major.minor versions whose SuperLink this was checked against
FLEET_PREFIX = "/v1/fleet/"
CONTROL_PREFIX = "/v1/control/"
RUNTIME_PREFIX = "/v1/runtime/"
SUPERLINK_FLAGS = ("--host", "--port", "--database", "--ssl-ca-certfile", "--ssl-certfile",
                   "--ssl-keyfile", "--enable-supernode-auth",
                   "--disable-runtime-dependency-installation", "--insecure")
# Environment switches that make Flower 1.41 open extra gRPC Control/Fleet servers on their own
# (public) addresses, past the gate: fedclinic removes them from the SuperLink's environment.
GRPC_SWITCHES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")


class FlowerChanged(ConfigError):
    """The installed Flower is not the one the operator gate was checked against."""


def _fail(what: str) -> FlowerChanged:
    version = importlib.metadata.version("flwr")
    return FlowerChanged(
        f"Flower {version}: {what}. fedclinic's operator gate (server/operator_gate.py) was "
        f"checked against Flower {', '.join(TESTED_FLOWER)} and refuses to start rather than "
        f"expose the Control API or lock the sites out; install the Flower version pyproject.toml "
        f"pins, or re-check server/flower_contract.py against this one")


def _check_version() -> None:
    version = importlib.metadata.version("flwr")
    if ".".join(version.split(".")[:2]) not in TESTED_FLOWER:
        raise _fail("not a tested version")


def _check_routes() -> None:
    from flwr.superlink.routers.control.router import router as control
    from flwr.superlink.routers.fleet.router import router as fleet

    fleet_paths = [getattr(route, "path", "") for route in fleet.routes]
    if not fleet_paths or not all(p.startswith(FLEET_PREFIX) for p in fleet_paths):
        raise _fail(f"the Fleet API is not (only) under {FLEET_PREFIX}: {fleet_paths}")
    control_paths = [getattr(route, "path", "") for route in control.routes]
    if not control_paths or any(p.startswith(FLEET_PREFIX) for p in control_paths):
        raise _fail(f"Control API routes are not where expected ({control.prefix})")


def _check_superlink_flags() -> None:
    from flwr.common import constant

    # the module, not the `flower_superlink` function its package exports under the same name
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    make_parser = getattr(cli, "_parse_args_run_superlink", None)
    if make_parser is None:
        raise _fail("flower-superlink's argument parser moved")
    parser = make_parser()
    known = {option for action in parser._actions for option in action.option_strings}
    missing = [flag for flag in SUPERLINK_FLAGS if flag not in known]
    if missing:
        raise _fail(f"flower-superlink has no {', '.join(missing)}")
    if [getattr(constant, name, None) for name in GRPC_SWITCHES] != list(GRPC_SWITCHES):
        raise _fail("the switches for the legacy gRPC Control/Fleet servers changed")


def check_control_client() -> None:
    """The operator's side: Flower's Control API client takes a TLS context (with the client
    certificate) as `verify`."""
    from flwr.supercore.control import ControlHttpClient

    if "verify" not in inspect.signature(ControlHttpClient.__init__).parameters:
        raise _fail("ControlHttpClient takes no `verify` TLS context any more")


def check_flower() -> None:
    """Raise FlowerChanged naming the first thing that differs from the checked Flower."""
    _check_version()
    _check_routes()
    _check_superlink_flags()
    check_control_client()
