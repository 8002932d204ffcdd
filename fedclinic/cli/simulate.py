"""`fedclinic simulate`: a whole federation of simulated hospitals on this machine."""

from __future__ import annotations

import argparse
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
    add_verbose(parser, "show Flower's and Ray's own log lines")
    add_debug(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    cfg = config_from_args(args)
    if cfg.resume:
        raise ConfigError("--resume continues a deployed run (`fedclinic run --resume NAME`); "
                          "a simulation starts afresh")
    simulate(cfg, verbose=args.verbose, run_name=args.run_name)
    return 0
