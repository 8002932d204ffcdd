"""`fedclinic certs init | site-key | add-site | revoke-site | operator`: the consortium's
certificates, the operator's credential and the site keys."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.certs import (CA_DAYS, DEFAULT_OPERATOR, DEFAULT_OUT, DEFAULT_SITES, CertError,
                          add_site, init_consortium, instructions, issue_operator, new_site_key,
                          operator_files, registered_key, retire_site_key)
from fedclinic.cli.options import add_debug

DEFAULT_DAYS = 825
DEFAULT_SERVER = "127.0.0.1:8000"


def add_parser(sub: Any) -> None:
    """``certs`` with its ``init``, ``site-key``, ``add-site``, ``revoke-site`` and ``operator``
    actions."""
    certs = sub.add_parser(
        "certs", help="make the consortium's TLS certificates and the sites' keys",
        description="TLS certificates for the server and authentication keys for the sites. "
                    "The consortium operator runs `init` once; a hospital may make its own key "
                    "with `site-key` and send only the .pub file.")
    certs.set_defaults(func=run)
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    _add_init(actions)
    _add_site_key(actions)
    _add_add_site(actions)
    _add_revoke_site(actions)
    _add_operator(actions)


def _add_init(actions: Any) -> None:
    init = actions.add_parser(
        "init", help="create a CA, the server certificate and one key pair per site",
        description="Create the consortium CA, the server's TLS certificate and a key pair per "
                    "site, then print what to send to whom.")
    init.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                      help="directory to write ca/, server/, sites/ and site-keys/ into "
                           f"(default: ./{DEFAULT_OUT})")
    init.add_argument("--server-name", action="append", default=None, metavar="NAME",
                      help="DNS name the sites dial to reach the server; repeat the flag or "
                           "give a comma list (default: localhost)")
    init.add_argument("--server-ip", action="append", default=None, metavar="IP",
                      help="IP address the sites may dial instead of a name; repeat or comma "
                           "list, '' for none (default: 127.0.0.1)")
    init.add_argument("--sites", default=DEFAULT_SITES, metavar="NAMES",
                      help="comma list of site names (letters, digits, '-', '_'); '' for none "
                           f"(default: {DEFAULT_SITES})")
    init.add_argument("--days", type=int, default=DEFAULT_DAYS, metavar="DAYS",
                      help="lifetime of the server certificate in days; the CA lives at least "
                           f"{CA_DAYS} (default: {DEFAULT_DAYS})")
    _add_force_and_debug(init)


def _add_site_key(actions: Any) -> None:
    site_key = actions.add_parser(
        "site-key", help="a hospital makes its own key pair (send only the .pub)",
        description="Make this site's P-384 key pair: NAME.key stays here (mode 0600), NAME.pub "
                    "goes to the consortium operator.")
    site_key.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                          help="directory for NAME.key and NAME.pub (default: .)")
    site_key.add_argument("--name", required=True, metavar="NAME",
                          help="this site's name as agreed with the consortium (default: none, "
                               "required)")
    _add_force_and_debug(site_key)


def _add_add_site(actions: Any) -> None:
    add = actions.add_parser(
        "add-site", help="register one more site in an existing consortium directory",
        description="Register a site: make its key pair (or take the hospital's own .pub with "
                    "--public-key), copy ca.crt to sites/NAME/ and add the key to site-keys/. "
                    "Restart or reload the server so that it sees the new key.")
    add.add_argument("--consortium", type=Path, default=DEFAULT_OUT, metavar="DIR",
                     help=f"directory made by `certs init` (default: ./{DEFAULT_OUT})")
    add.add_argument("--name", required=True, metavar="NAME",
                     help="the new site's name (default: none, required)")
    add.add_argument("--public-key", type=Path, default=None, metavar="FILE",
                     help="register this OpenSSH public key from the hospital instead of "
                          "making a key pair here (default: make one)")
    _add_force_and_debug(add)


def _add_revoke_site(actions: Any) -> None:
    revoke = actions.add_parser(
        "revoke-site", help="revoke a site on the running server (as the operator)",
        description="Revoke a registered site at once: the running server (reached with the "
                    "operator certificate) unregisters its key, refuses its next request and "
                    "leaves it out of every later round; then its key moves from site-keys/ to "
                    "revoked/. A revoked key stays refused; a site that must come back makes a "
                    "new key (add-site --force).")
    revoke.add_argument("--consortium", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"directory made by `certs init` (default: ./{DEFAULT_OUT})")
    revoke.add_argument("--name", required=True, metavar="NAME",
                        help="the site's name, as in site-keys/NAME.pub (default: none, "
                             "required)")
    revoke.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                        help=f"the running server (default: {DEFAULT_SERVER})")
    revoke.add_argument("--ca-cert", type=Path, default=None, metavar="PATH",
                        help="the consortium CA certificate (default: DIR/ca/ca.crt)")
    revoke.add_argument("--operator-cert", type=Path, default=None, metavar="PATH",
                        help="the operator's certificate (default: DIR/operator/operator.crt)")
    revoke.add_argument("--operator-key", type=Path, default=None, metavar="PATH",
                        help="its private key (default: DIR/operator/operator.key)")
    add_debug(revoke)


def _add_operator(actions: Any) -> None:
    operator = actions.add_parser(
        "operator", help="issue another operator certificate (needs the CA key)",
        description="Issue a client certificate for an operator (EKU clientAuth, OU=operator), "
                    "signed with the CA key in DIR/ca: what `fedclinic run` and `certs "
                    "revoke-site` present to the server. `init` already made one named "
                    f"{DEFAULT_OPERATOR!r}.")
    operator.add_argument("--consortium", type=Path, default=DEFAULT_OUT, metavar="DIR",
                          help=f"directory made by `certs init` (default: ./{DEFAULT_OUT})")
    operator.add_argument("--name", default=DEFAULT_OPERATOR, metavar="NAME",
                          help="the operator's name: the certificate's CN, shown by the server "
                               "for each operator connection; files operator/NAME.crt and .key "
                               f"(default: {DEFAULT_OPERATOR})")
    operator.add_argument("--days", type=int, default=DEFAULT_DAYS, metavar="DAYS",
                          help=f"lifetime of the certificate in days (default: {DEFAULT_DAYS})")
    _add_force_and_debug(operator)


def _add_force_and_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace existing certificate and key files (default: off)")
    add_debug(parser)


def comma_list(values: list[str] | None, default: list[str]) -> list[str]:
    """Repeated flags and comma lists, flattened: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    if values is None:
        return list(default)
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _init(args: argparse.Namespace) -> str:
    bundle = init_consortium(
        args.out, comma_list(args.server_name, ["localhost"]),
        comma_list(args.server_ip, ["127.0.0.1"]), comma_list([args.sites], []),
        days=args.days, force=args.force)
    return instructions(bundle)


def _site_key(args: argparse.Namespace) -> str:
    key, pub = new_site_key(args.out, args.name, force=args.force)
    return (f"Wrote {key} (private, mode 0600: keep it on this site's server, give it to "
            f"`fedclinic site --site-key`) and {pub}.\nSend only {pub.name} to the consortium "
            "operator; you get back ca.crt.")


def _add_site(args: argparse.Namespace) -> str:
    site = add_site(args.consortium, args.name, force=args.force, public_key=args.public_key)
    sent = f"{site.ca_cert} and {site.key}" if site.key else f"{site.ca_cert}"
    return (f"Registered site {site.name!r} in {site.registered}. Send {sent} to the hospital "
            "over a secure channel, copy the site-keys/ directory to the server and restart it.")


def _operator(args: argparse.Namespace) -> str:
    cert, key = issue_operator(args.consortium, args.name, days=args.days, force=args.force)
    return (f"Wrote {cert} and {key} (private, mode 0600): operator {args.name!r}'s credential "
            f"for `fedclinic run --operator-cert {cert} --operator-key {key}`. Keep it on the "
            "operator's workstation; never on the server or at a hospital.")


def _revoke_site(args: argparse.Namespace) -> str:
    from server.control import operator_session
    from server.enrollment import revoke_site

    consortium = args.consortium
    public_key = registered_key(consortium, args.name)
    cert, key = operator_files(consortium)
    operator = (args.operator_cert or cert, args.operator_key or key)
    with operator_session(args.server, args.ca_cert or consortium / "ca" / "ca.crt", operator,
                          f"revoke site {args.name}") as control:
        node = revoke_site(control, public_key)
    moved = retire_site_key(consortium, args.name)
    return (f"Revoked site {args.name!r} (node {node}) on the server at {args.server}: its next "
            f"request is refused and it takes part in no later round. Its key moved to {moved}; "
            f"delete site-keys/{args.name}.pub on the server host too (a restart keeps the key "
            "refused either way).")


ACTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "init": _init, "site-key": _site_key, "add-site": _add_site,
    "revoke-site": _revoke_site, "operator": _operator}


def run(args: argparse.Namespace) -> int:
    """Run one `fedclinic certs` action; errors print one line and return 2."""
    try:
        print(ACTIONS[args.certs_command](args))
    except CertError as exc:
        if args.debug:
            raise
        print(f"fedclinic certs: error: {exc}", file=sys.stderr)
        return 2
    return 0
