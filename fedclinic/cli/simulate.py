"""`fedclinic simulate`: a whole federation of simulated hospitals on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.config import ConfigError
from fedclinic.cli.options import add_debug, add_run_options, add_verbose, config_from_args


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "simulate", help="run a whole federation of simulated hospitals on this machine",
        description="Partition a dataset into simulated hospitals, train with Flower's simulation "
                    "engine, train the local and pooled baselines, and write a report to a new "
                    "run directory under --output-dir.")
    add_run_options(parser)
    parser.add_argument("--run-name", default=None, metavar="NAME",
                        help="name of the run directory (default: "
                             "time-dataset-partition-strategy-seed)")
    parser.add_argument("--site-policy", default=None, metavar="FILE",
                        help="a site privacy policy (TOML, as `fedclinic site --policy`) that "
                             "every simulated site enforces: DP required, epsilon limits, what "
                             "may leave (default: none: no floor, unlimited epsilon, exact "
                             "values without DP, seeded noise)")
    add_ray_options(parser)
    add_verbose(parser, "show Flower's and Ray's own log lines")
    add_debug(parser)
    parser.set_defaults(func=run)


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """Where the simulated sites run: a Ray of this machine's own, or an existing cluster."""
    group = parser.add_argument_group("Ray (where the simulated sites run)")
    group.add_argument("--ray-address", default="", metavar="auto|HOST:PORT",
                       help="join an existing Ray cluster (started with `ray start --head`): "
                            "'auto' or the head's HOST:PORT; the cluster's own resources are "
                            "used as they are (default: $RAY_ADDRESS if set, else a Ray of "
                            "this machine's own with every core)")
    group.add_argument("--cpus-per-site", type=float, default=1.0, metavar="N",
                       help="CPUs each simulated site takes; Ray runs as many sites at once as "
                            "fit (default: 1)")
    group.add_argument("--gpus-per-site", type=float, default=0.0, metavar="N",
                       help="GPUs each simulated site takes, e.g. 0.5 for two sites per GPU "
                            "(default: 0)")


def ray_resources(args: argparse.Namespace) -> Any:
    from simulations.engine import RayResources

    resources = RayResources(address=args.ray_address, cpus_per_site=args.cpus_per_site,
                             gpus_per_site=args.gpus_per_site)
    resources.check()
    return resources


def site_policy_text(path: str | None) -> str:
    """The --site-policy file as canonical TOML ('' without one), checked here so that a
    mistake is one error naming the file and key before anything runs."""
    if not path:
        return ""
    from client.policy import load_policy

    try:
        return load_policy(Path(path)).to_toml()
    except ConfigError as exc:
        raise ConfigError(f"--site-policy: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    cfg = config_from_args(args)
    if cfg.resume:
        raise ConfigError("--resume continues a deployed run (`fedclinic run --resume NAME`); "
                          "a simulation starts afresh")
    simulate(cfg, verbose=args.verbose, run_name=args.run_name,
             site_policy=site_policy_text(args.site_policy), resources=ray_resources(args))
    return 0
