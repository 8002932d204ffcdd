"""`fedclinic demo-data`: simulated sites' data as one .npz per site, to try a deployment."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedclinic.cli.options import add_debug, add_run_options, config_from_args

DEFAULT_OUT = "fedclinic-demo-data"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo-data", help="write simulated sites' data as .npz files, one per site, to try a "
                          "deployment without hospital data",
        description="Partition a dataset as `simulate` would (same options) and write one "
                    "MedMNIST-layout .npz per site (train/val/test), the format `fedclinic site "
                    "--data` accepts.")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for site-<i>.npz (default: {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true",
                        help="overwrite existing files (default: off)")
    add_debug(parser)
    add_run_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simulations.export import export_sites

    for path in export_sites(config_from_args(args), Path(args.out), args.force):
        print(f"fedclinic demo-data: wrote {path}")
    return 0
