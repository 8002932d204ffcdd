"""The `fedclinic` console command: one module per command group, each owning its flags.

Every option's help ends with its default. A command module adds its parser (`add_parser`) and
sets ``func``, the adapter that reads the parsed flags and calls the package that does the work;
`errors.run_command` turns what it raises into one line and an exit code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from common.version import __version__
from fedclinic.cli import certs, export, privacy, server, simulate, site, tradeoff
from fedclinic.cli.errors import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedclinic",
        description="Federated learning for hospitals: train a shared model across sites that "
                    "keep their data.")
    parser.add_argument("--version", action="version", version=f"fedclinic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    simulate.add_parser(sub)
    privacy.add_parser(sub)
    tradeoff.add_parser(sub)
    certs.add_parser(sub)
    server.add_server_parser(sub)
    server.add_run_parser(sub)
    export.add_parser(sub)
    site.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)
