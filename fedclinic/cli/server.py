"""`fedclinic server` (the consortium's SuperLink) and `fedclinic run` (submit a run to it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.config import RunConfig
from fedclinic.cli.options import add_debug, add_run_options, add_verbose, given_options
from server.service import DEFAULT_ADDRESS, DEFAULT_STATE

DEFAULT_CERTS = "fedclinic-certs/server"
DEFAULT_SITE_KEYS = "fedclinic-certs/site-keys"
DEFAULT_SERVER = "127.0.0.1:8000"
DEFAULT_CA_CERT = "fedclinic-certs/ca/ca.crt"


def add_server_parser(sub: Any) -> None:
    p = sub.add_parser(
        "server", help="run the consortium's coordinator (a Flower SuperLink with TLS)",
        description="Start the coordinator: a Flower SuperLink serving TLS on one port, keeping "
                    "its state in a database under --state (runs survive a restart), accepting "
                    "only the sites whose public keys are in --site-keys. Sites connect out to "
                    "this port; `fedclinic run` submits runs to it.")
    p.add_argument("--certs", default=DEFAULT_CERTS, metavar="DIR",
                   help="folder with ca.crt, server.crt and server.key from `fedclinic certs "
                        f"init` (default: {DEFAULT_CERTS})")
    p.add_argument("--site-keys", default=DEFAULT_SITE_KEYS, metavar="DIR",
                   help="folder of <site>.pub public keys; only these sites may join "
                        f"(default: {DEFAULT_SITE_KEYS})")
    p.add_argument("--state", default=DEFAULT_STATE, metavar="DIR",
                   help="folder for the SuperLink database (superlink.db), run directories "
                        f"(runs/) and the log (default: {DEFAULT_STATE})")
    p.add_argument("--address", default=DEFAULT_ADDRESS, metavar="HOST:PORT",
                   help="HOST:PORT to serve; the one port sites and `fedclinic run` reach "
                        f"(default: {DEFAULT_ADDRESS})")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no site authentication, for a local test only (default: off)")
    add_debug(p)
    p.set_defaults(func=run_server)


def run_server(args: argparse.Namespace) -> int:
    from server.service import serve

    certs = None if args.insecure else Path(args.certs)
    site_keys = None if args.insecure else Path(args.site_keys)
    return serve(certs, site_keys, Path(args.state), args.address)


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="submit a federated run to a fedclinic server and stream its progress",
        description="Submit the federation (the same ServerApp as `simulate`) to the server. "
                    "Only the options you give are sent; the rest keep their defaults. Sites run "
                    "the fedclinic installed at each site. Exits 0 only if the run completed.")
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                   help=f"the server's HOST:PORT (default: {DEFAULT_SERVER})")
    p.add_argument("--ca-cert", default=DEFAULT_CA_CERT, metavar="PATH",
                   help="the consortium CA certificate that signed the server's certificate "
                        f"(default: {DEFAULT_CA_CERT})")
    p.add_argument("--insecure", action="store_true",
                   help="connect without TLS (only to a server started with --insecure) "
                        "(default: off)")
    p.add_argument("--detach", action="store_true",
                   help="submit and return without following the run (default: off)")
    add_verbose(p, "show every log line of the run, not only progress")
    add_debug(p)
    add_run_options(p)
    p.set_defaults(func=run_submit)


def overrides_from_args(args: argparse.Namespace) -> dict[str, object]:
    """Run-config values given on the command line (validated), dash-named for Flower."""
    given = given_options(args)
    cfg = RunConfig.from_dict(given)          # validates every value before anything is sent
    return {name.replace("_", "-"): getattr(cfg, name) for name in given}


def run_submit(args: argparse.Namespace) -> int:
    from server.service import submit_run

    overrides = overrides_from_args(args)
    ca = None if args.insecure else Path(args.ca_cert)
    return submit_run(args.server, ca, overrides, detach=args.detach, verbose=args.verbose)
