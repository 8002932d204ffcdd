"""`fedclinic site` (one hospital's SuperNode), `site validate` (its data) and `site doctor`
(its set-up)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from client.service import (DEFAULT_ACTIVATION_WAIT, DEFAULT_RUNTIME_PORT, DEFAULT_STATE, LEDGERS,
                            SiteOptions)
from client.validate import DEFAULT_MANIFEST, LAYOUTS
from common.datasets import DataError
from common.mia_bootstrap import RESAMPLES
from common.spacing_spec import SPACING_HELP
from fedclinic.cli.options import add_debug

DEFAULT_SERVER = "127.0.0.1:8000"
DEFAULT_DOCTOR_STATE = Path(DEFAULT_STATE)
DEFAULT_MIN_FREE_GB = 5.0
DEFAULT_TIMEOUT = 5.0


def add_parser(sub: Any) -> None:
    """``site`` with its ``validate`` and ``doctor`` subcommands."""
    site = sub.add_parser(
        "site", help="run one hospital's site (a SuperNode next to its data); or validate its "
                     "data, or check its set-up",
        description="Without a subcommand: validate the data, then join the consortium server "
                    "and train when runs arrive (stop with Ctrl-C). `fedclinic site validate "
                    "DATA_DIR` checks data and writes a shareable manifest; `fedclinic site "
                    "doctor` checks certificates, the server, the data and the disk; "
                    "`fedclinic site status` prints the privacy budget spent and left.")
    add_site_arguments(site)
    site.set_defaults(func=run_site)
    site_sub = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND")
    check = site_sub.add_parser("validate", help="check a site's data and write a manifest of "
                                                 "aggregate statistics")
    add_validate_arguments(check)
    add_debug(check)
    check.set_defaults(func=run_validate)
    doc = site_sub.add_parser("doctor", help="check certificates, server reachability, data "
                                             "and free disk; one verdict per check")
    add_doctor_arguments(doc)
    add_debug(doc)
    doc.set_defaults(func=run_doctor)
    status = site_sub.add_parser("status", help="the privacy budget spent and left per dataset "
                                                "(the site's lifetime ledgers)")
    add_status_arguments(status)
    add_debug(status)
    status.set_defaults(func=run_status)
    aud = site_sub.add_parser("audit", help="membership-inference audit of the consortium's "
                                            "model on this site's own data, run here; nothing "
                                            "leaves the site")
    add_audit_arguments(aud)
    add_debug(aud)
    aud.set_defaults(func=run_audit)


# ----------------------------------------------------------------------------- fedclinic site

def add_site_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                   help="the consortium server's HOST:PORT; the site dials out to it, no inbound "
                        f"port is opened (default: {DEFAULT_SERVER})")
    p.add_argument("--ca-cert", default="ca.crt", metavar="PATH",
                   help="the consortium CA certificate that signed the server's (default: ca.crt)")
    p.add_argument("--site-key", default="site.key", metavar="PATH",
                   help="this site's private key (OpenSSH, EC P-384); its .pub is registered at "
                        "the server (default: site.key)")
    p.add_argument("--site-id", type=int, default=0, metavar="N",
                   help="this site's number in reports (default: 0)")
    p.add_argument("--data", default="data", metavar="PATH",
                   help="the site's data: a MedMNIST .npz, a DICOM folder with labels.csv, or an "
                        "MSD NIfTI folder (default: data)")
    p.add_argument("--state", default=DEFAULT_STATE, metavar="DIR",
                   help="folder for the privacy ledgers, audit.jsonl and logs; keep it across "
                        f"restarts (default: {DEFAULT_STATE})")
    p.add_argument("--policy", default=None, metavar="FILE",
                   help="the site's privacy policy (TOML, reviewed by the hospital; example: "
                        "deploy/site-policy.example.toml): DP required, epsilon per run and "
                        "over the dataset's lifetime, delta, what may leave; checked before "
                        "joining (default: fedclinic's default policy: DP-SGD required, "
                        "epsilon at most 8 per run and 24 lifetime)")
    p.add_argument("--allow-app-hash", action="append", default=[], metavar="SHA256",
                   help="also run the app bundle with this sha256 (repeatable); by default only "
                        "the installed fedclinic's own bundle runs (default: none)")
    p.add_argument("--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT, metavar="PORT",
                   help="local port (127.0.0.1 only) between the SuperNode and the executor; "
                        "0 picks a free one at each start, so several sites can share a host; "
                        "a port given here that is taken stops the site with exit status 2 "
                        f"(default: {DEFAULT_RUNTIME_PORT}, a free port)")
    p.add_argument("--activation-wait", type=float, default=DEFAULT_ACTIVATION_WAIT,
                   metavar="SECONDS",
                   help="how long to keep retrying when the server knows this site's key but "
                        "refuses to activate it because it still counts a previous session as "
                        "online (until two heartbeats are missed, up to 60 s after an unclean "
                        "end); a key the server does not know fails at once with exit status 2 "
                        f"(default: {DEFAULT_ACTIVATION_WAIT:g})")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for training at this site; 0 = $FEDCLINIC_CLIENT_THREADS if "
                        "set, else all cores (default: 0)")
    p.add_argument("--skip-validation", action="store_true",
                   help="join without validating the data first (default: off)")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no key, only against a server started with --insecure "
                        "(default: off)")
    add_debug(p)


def run_site(args: argparse.Namespace) -> int:
    from client.service import run_site as serve_site

    return serve_site(SiteOptions(
        server=args.server, ca_cert=Path(args.ca_cert), site_key=Path(args.site_key),
        site_id=args.site_id, data=Path(args.data), state=Path(args.state),
        policy=Path(args.policy) if args.policy else None,
        allow_app_hash=tuple(args.allow_app_hash), runtime_port=args.runtime_port,
        activation_wait=args.activation_wait, threads=args.threads,
        skip_validation=args.skip_validation, insecure=args.insecure))


# -------------------------------------------------------------------- fedclinic site validate

def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR", type=Path,
                        help="the site's data: a DICOM folder with labels.csv, an MSD folder "
                             "with dataset.json, or a MedMNIST .npz file (default: required)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="how DATA_DIR is organised; auto detects it (default: auto)")
    parser.add_argument("--window", default="", metavar="CENTER,WIDTH",
                        help="DICOM VOI window in stored units after rescale, e.g. '40,400'; '' "
                             "= each file's own window (default: '')")
    parser.add_argument("--spacing", default="", metavar="MM[,MM...]",
                        help="check the images as a run with this --spacing reads them "
                             "(resampled, so files a resampling run refuses are counted): "
                             f"{SPACING_HELP} (default: '')")
    parser.add_argument("--strict", action="store_true",
                        help="treat unusable image files and labels.csv rows without an image as "
                             "errors, as a strict training run would (default: off, they are "
                             "warnings)")
    parser.add_argument("--manifest", default=DEFAULT_MANIFEST, metavar="PATH",
                        help="where to write the shareable aggregate manifest (JSON); must be "
                             "outside DATA_DIR; '' = do not write one "
                             f"(default: ./{DEFAULT_MANIFEST})")


def run_validate(args: argparse.Namespace) -> int:
    """Print the report and write the manifest; 0 when there are no errors, else 1."""
    from client.validate import validate_site_data
    from client.validation.manifest import write_manifest

    manifest = Path(args.manifest).expanduser() if args.manifest else None
    data_dir = Path(args.data_dir).expanduser()
    if manifest is not None and _inside(manifest, data_dir):
        raise DataError(f"--manifest {manifest}: inside the data folder {data_dir}; choose a "
                        f"path outside it (the data folder should hold only the site's data)")
    report = validate_site_data(data_dir, layout=args.layout, window=args.window,
                                strict=args.strict, spacing=args.spacing)
    print(report.render())
    if manifest is not None:
        write_manifest(report, manifest)
        print(f"manifest (aggregate statistics only, shareable): {manifest}")
    return 0 if report.ok else 1


def _inside(path: Path, folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return path.resolve().is_relative_to(folder.resolve())


# ---------------------------------------------------------------------- fedclinic site doctor

def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
                        help="the federation server's address, exactly as the site dials it "
                             f"(default: {DEFAULT_SERVER})")
    parser.add_argument("--ca-cert", type=Path, required=True, metavar="PATH",
                        help="the consortium's ca.crt (default: none, required)")
    parser.add_argument("--site-key", type=Path, default=None, metavar="PATH",
                        help="this site's private key NAME.key (default: not checked)")
    parser.add_argument("--data", type=Path, default=None, metavar="PATH",
                        help="this site's data file or folder (default: not checked)")
    parser.add_argument("--state", type=Path, default=DEFAULT_DOCTOR_STATE, metavar="DIR",
                        help="the site's state folder (privacy ledger, audit log) "
                             f"(default: ./{DEFAULT_DOCTOR_STATE})")
    parser.add_argument("--min-free-gb", type=float, default=DEFAULT_MIN_FREE_GB, metavar="GB",
                        help="free disk space needed next to the state folder "
                             f"(default: {DEFAULT_MIN_FREE_GB:g})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="network timeout of each connection attempt "
                             f"(default: {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--policy", type=Path, default=None, metavar="FILE",
                        help="the site's privacy policy file: checked and shown, with the "
                             "budget left per dataset under it (default: not checked)")


def run_doctor(args: argparse.Namespace) -> int:
    """Print the checks (and the policy in force, with --policy); 0 when none failed (warnings
    allowed), 1 otherwise."""
    from client.doctor import render, run_doctor as check_site

    checks = check_site(args.server, args.ca_cert, args.site_key, args.data, args.state,
                        min_free_gb=args.min_free_gb, timeout=args.timeout, policy=args.policy)
    print(render(checks))
    if args.policy is not None:
        from client.policy import load_policy
        from common.config import ConfigError

        try:
            print(f"\n{load_policy(args.policy).render()}")
        except ConfigError:
            pass                          # the policy check above says what is wrong
    return 1 if any(c.status == "error" for c in checks) else 0


# ---------------------------------------------------------------------- fedclinic site status

def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=Path, default=DEFAULT_DOCTOR_STATE, metavar="DIR",
                        help="the site's state folder, as given to `fedclinic site --state` "
                             f"(default: ./{DEFAULT_DOCTOR_STATE})")
    parser.add_argument("--policy", type=Path, default=None, metavar="FILE",
                        help="the site's policy file, for its lifetime budget (default: "
                             "fedclinic's default policy, lifetime epsilon 24)")


def run_status(args: argparse.Namespace) -> int:
    """Per dataset in the site's ledgers: epsilon spent and left of the lifetime budget; 0, or
    1 when a ledger fails verification (the site would refuse to train on it)."""
    from client.ledger import format_status, ledger_status
    from client.policy import load_policy

    policy = load_policy(args.policy)
    ledgers = Path(args.state) / LEDGERS
    spends = ledger_status(ledgers, policy) if ledgers.is_dir() else []
    print(f"privacy budget of the site at {args.state} under the policy from {policy.source} "
          f"(lifetime epsilon {policy.lifetime_epsilon:g}):")
    for line in format_status(spends):
        print(f"  {line}")
    return 1 if any(s.problem for s in spends) else 0


# ----------------------------------------------------------------------- fedclinic site audit

DEFAULT_AUDIT_SEED = 0
DEFAULT_RESAMPLES = RESAMPLES    # common.mia_bootstrap


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data"), metavar="PATH",
                        help="the site's data, as `fedclinic site --data`: its train split are "
                             "the members, its test split the non-members (default: data)")
    parser.add_argument("--state", type=Path, default=DEFAULT_DOCTOR_STATE, metavar="DIR",
                        help="the site's state folder: the model is read from "
                             "DIR/last-global.npz and the report written to "
                             f"DIR/audit-report.md (0600) (default: ./{DEFAULT_DOCTOR_STATE})")
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help="audit this final_model.pt (from the consortium's run folder) "
                             "instead of the last global model the site received (default: "
                             "DIR/last-global.npz)")
    parser.add_argument("--seed", type=int, default=DEFAULT_AUDIT_SEED, metavar="N",
                        help="seed of the member/non-member balancing and of the bootstrap "
                             f"(default: {DEFAULT_AUDIT_SEED})")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                        help="bootstrap resamples of the confidence intervals "
                             f"(default: {DEFAULT_RESAMPLES})")
    parser.add_argument("--site-id", type=int, default=0, metavar="N",
                        help="this site's number, as in `fedclinic site` (default: 0)")


def run_audit(args: argparse.Namespace) -> int:
    """Print the audit table and where its report was written; 0 on success."""
    from client.site_audit import run_site_audit

    done = run_site_audit(args.data, args.state, model=args.model, seed=args.seed,
                          resamples=args.resamples, site_id=args.site_id)
    print(done.markdown)
    print(f"audit report (kept at this site): {done.report_path}")
    return 0
