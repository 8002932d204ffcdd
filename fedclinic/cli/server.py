"""`fedclinic server` (the consortium's SuperLink) and `fedclinic run` (submit a run to it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.config import ConfigError, RunConfig
from fedclinic.cli.options import add_debug, add_run_options, add_verbose, given_options
from server.service import DEFAULT_ADDRESS, DEFAULT_STATE

DEFAULT_CERTS = "fedclinic-certs/server"
DEFAULT_SITE_KEYS = "fedclinic-certs/site-keys"
DEFAULT_SERVER = "127.0.0.1:8000"
DEFAULT_CA_CERT = "fedclinic-certs/ca/ca.crt"
BESIDE_CA = "../operator/{} beside --ca-cert's folder"   # what `certs init` writes


def add_server_parser(sub: Any) -> None:
    p = sub.add_parser(
        "server", help="run the consortium's coordinator (a Flower SuperLink with TLS)",
        description="Start the coordinator: a Flower SuperLink serving TLS on one port, keeping "
                    "its state in a database under --state (runs survive a restart), accepting "
                    "only the sites whose public keys are in --site-keys (registered at start; "
                    "a registered key whose file is gone is revoked). Sites connect out to "
                    "this port; `fedclinic run` submits runs to it with the operator "
                    "certificate, which alone reaches the Control API.")
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
    p.add_argument("--global-test", default="", metavar="PATH",
                   help="a held-out test set on the server host that every deployed run scores "
                        "the global model on each round: a .npz in the MedMNIST layout (its test "
                        "split) or a DICOM/MSD folder; without it the server holds no data and "
                        "evaluation is per site (default: none)")
    p.add_argument("--manifests", default="", metavar="DIR",
                   help="folder of the sites' manifests (NAME.json or NAME.manifest.json, the "
                        "manifest.json `fedclinic site validate` writes, sent by each hospital "
                        "with its key): the report describes the sites' data from them "
                        "(default: none)")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS, no site and no operator authentication, for a local test only "
                        "(default: off)")
    add_debug(p)
    p.set_defaults(func=run_server)


def run_server(args: argparse.Namespace) -> int:
    from server.service import serve

    certs = None if args.insecure else Path(args.certs)
    site_keys = None if args.insecure else Path(args.site_keys)
    return serve(certs, site_keys, Path(args.state), args.address,
                 global_test=Path(args.global_test) if args.global_test else None,
                 manifests=Path(args.manifests) if args.manifests else None)


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="submit a federated run to a fedclinic server and stream its progress",
        description="Submit the federation (the same ServerApp as `simulate`) to the server, "
                    "as the operator: the server takes runs only from a connection that shows "
                    "the operator certificate `fedclinic certs init` wrote. Only the options "
                    "you give are sent; the rest keep their defaults. Sites run the fedclinic "
                    "installed at each site. Exits 0 only if the run completed, 2 if the "
                    "operator credential is missing or refused.")
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                   help=f"the server's HOST:PORT (default: {DEFAULT_SERVER})")
    p.add_argument("--ca-cert", default=DEFAULT_CA_CERT, metavar="PATH",
                   help="the consortium CA certificate that signed the server's certificate "
                        f"(default: {DEFAULT_CA_CERT})")
    p.add_argument("--operator-cert", default=None, metavar="PATH",
                   help="the operator's client certificate from `fedclinic certs init`: the "
                        "server takes runs only from it (default: "
                        f"{BESIDE_CA.format('operator.crt')}, i.e. "
                        "fedclinic-certs/operator/operator.crt)")
    p.add_argument("--operator-key", default=None, metavar="PATH",
                   help="the operator certificate's private key (default: "
                        f"{BESIDE_CA.format('operator.key')}, i.e. "
                        "fedclinic-certs/operator/operator.key)")
    p.add_argument("--insecure", action="store_true",
                   help="connect without TLS and without the operator certificate (only to a "
                        "server started with --insecure) (default: off)")
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


def operator_login(args: argparse.Namespace):
    """The operator credential `run` presents (ConfigError, exit code 2, when a file is missing:
    without it the server takes no run)."""
    from server.service import OperatorLogin

    from server.control import operator_beside

    ca = Path(args.ca_cert)
    beside_cert, beside_key = operator_beside(ca)
    cert = Path(args.operator_cert) if args.operator_cert else beside_cert
    key = Path(args.operator_key) if args.operator_key else beside_key
    for flag, path in (("--ca-cert", ca), ("--operator-cert", cert), ("--operator-key", key)):
        if not path.is_file():
            raise ConfigError(
                f"{flag} {path}: file not found. `fedclinic run` needs the consortium's ca.crt "
                f"and the operator credential that `fedclinic certs init` wrote "
                f"(CERTS/operator/operator.crt and operator.key, found beside CERTS/ca/ca.crt "
                f"unless --operator-cert/--operator-key say otherwise); the server takes runs "
                f"from nobody else")
    return OperatorLogin(ca, cert, key)


def run_submit(args: argparse.Namespace) -> int:
    from server.service import submit_run

    overrides = overrides_from_args(args)
    login = None if args.insecure else operator_login(args)
    return submit_run(args.server, login, overrides, detach=args.detach, verbose=args.verbose)
