"""The `fedclinic` console command. Every option's help ends with its default."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.config import ConfigError, RunConfig, describe_fields, given_options
from common.datasets import DataError
from fedclinic import __version__


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field: --local-epochs, --batch-size, ..."""
    for name, default, help_text, choices in describe_fields():
        flag = "--" + name.replace("_", "-")
        shown = repr(default) if isinstance(default, str) else default
        extra = f" [choices: {', '.join(map(str, choices))}]" if choices else ""
        parser.add_argument(flag, dest=name, default=None, metavar=type(default).__name__.upper(),
                            help=f"{help_text}{extra} (default: {shown})")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks on errors (default: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedclinic",
        description="Federated learning for hospitals: train a shared model across sites that "
                    "keep their data.")
    parser.add_argument("--version", action="version", version=f"fedclinic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sim = sub.add_parser(
        "simulate", help="run a whole federation of simulated hospitals on this machine",
        description="Partition a dataset into simulated hospitals, train with Flower's simulation "
                    "engine, train the local and pooled baselines, and write a report to a new "
                    "run directory under --output-dir.")
    _add_run_options(sim)
    sim.add_argument("--run-name", default=None,
                     help="name of the run directory (default: time-dataset-partition-strategy-seed)")
    sim.add_argument("--verbose", action="store_true",
                     help="show Flower's and Ray's own log lines (default: off)")
    _add_common(sim)
    from simulations import privacy_plan, tradeoff

    privacy_plan.add_parser(sub)
    tradeoff.add_parser(sub)
    _add_deployment(sub)
    return parser


def _add_deployment(sub) -> None:
    """certs, server, site (+ validate, doctor) and run."""
    from client import doctor, service, validate
    from deploy import certs
    from server import service as server_service

    certs.add_parser(sub)
    server_service.add_server_parser(sub)
    server_service.add_run_parser(sub, _add_run_options)
    from simulations import export

    export.add_parser(sub, _add_run_options)
    site = sub.add_parser(
        "site", help="run one hospital's site (a SuperNode next to its data); or validate its "
                     "data, or check its set-up",
        description="Without a subcommand: validate the data, then join the consortium server "
                    "and train when runs arrive (stop with Ctrl-C). `fedclinic site validate "
                    "DATA_DIR` checks data and writes a shareable manifest; `fedclinic site "
                    "doctor` checks certificates, the server, the data and the disk.")
    service.add_site_arguments(site)
    site.set_defaults(func=service.run_site)
    site_sub = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND")
    check = site_sub.add_parser("validate", help="check a site's data and write a manifest of "
                                                 "aggregate statistics")
    validate.add_validate_arguments(check)
    _add_common(check)
    check.set_defaults(func=validate.run_validate)
    doc = site_sub.add_parser("doctor", help="check certificates, server reachability, data "
                                             "and free disk; one verdict per check")
    doctor.add_doctor_arguments(doc)
    _add_common(doc)
    doc.set_defaults(func=doctor.run_doctor_cli)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig.from_dict(given_options(args))


def _simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    cfg = config_from_args(args)
    if cfg.resume:
        raise ConfigError("--resume continues a deployed run (`fedclinic run --resume NAME`); "
                          "a simulation starts afresh")
    simulate(cfg, verbose=args.verbose, run_name=args.run_name)
    return 0


def _privacy(args: argparse.Namespace) -> int:
    from simulations import privacy_plan

    return privacy_plan.run(args)


def _tradeoff(args: argparse.Namespace) -> int:
    from simulations import tradeoff

    return tradeoff.run(args)


COMMANDS = {"simulate": _simulate, "privacy": _privacy, "tradeoff": _tradeoff}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = COMMANDS.get(args.command) or args.func
    try:
        return run(args)
    except (ConfigError, DataError) as exc:
        if args.debug:
            raise
        print(f"fedclinic: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedclinic: interrupted; completed rounds and checkpoints are kept in the run "
              "directory", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for people, traceback with --debug
        if args.debug:
            raise
        print(f"fedclinic: error: {type(exc).__name__}: {exc} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
