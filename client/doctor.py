"""`fedclinic site doctor`: check a hospital's set-up before it joins the federation.

Each check answers one question a hospital's IT person would otherwise debug from a Flower
traceback: is the CA certificate the right one and still valid, can this machine reach the
server's port, does the server's certificate verify and match the address dialled, is the
site key usable by Flower and private, is the data readable, is there room for the state, and
(with a policy file) which privacy policy the site enforces and how much budget it has left.
The checks live in `client.readiness`; here they run in order and are rendered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from client.check import Check
from client.readiness.address import parse_address
from client.readiness.certificates import check_ca_cert, check_server_cert
from client.readiness.data import check_data, check_validation
from client.readiness.network import check_reachable, check_tls
from client.readiness.policy import check_budget, check_policy
from client.readiness.site_key import check_site_key
from client.readiness.storage import check_disk, check_state_dir

_LABELS = {"ok": "[ ok ]", "warning": "[warn]", "error": "[FAIL]"}


def _network_checks(server: str, ca_cert: Path, ca_ok: bool, timeout: float,
                    now: dt.datetime) -> list[Check]:
    try:
        host, port = parse_address(server)
    except ValueError as exc:
        return [Check("server address", "error", str(exc))]
    reach = check_reachable(host, port, timeout)
    if reach.status == "error" or not ca_ok:
        return [reach]
    tls, cert, verified = check_tls(host, port, ca_cert, timeout)
    checks = [reach, tls]
    if cert is not None:
        checks.append(check_server_cert(cert, host, now, verified))
    return checks


def run_doctor(server: str, ca_cert: Path, site_key: Path | None, data_dir: Path | None,
               state_dir: Path | None, min_free_gb: float = 5.0,
               timeout: float = 5.0, policy: Path | None = None) -> list[Check]:
    """Every check for one site, in the order a person would fix them. Checks that depend on a
    failed one (TLS after an unreachable server) are left out; None skips that input's checks
    (a policy file also brings the budget left in the state folder's ledgers)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca = check_ca_cert(Path(ca_cert), now)
    checks = [ca, *_network_checks(server, Path(ca_cert), ca.status != "error", timeout, now)]
    if site_key is not None:
        checks.append(check_site_key(Path(site_key)))
    if data_dir is not None:
        data = check_data(Path(data_dir))
        checks.append(data)
        if data.status != "error":
            checks.append(check_validation(Path(data_dir)))
    if state_dir is not None:
        state = check_state_dir(Path(state_dir))
        checks += [state, check_disk(Path(state_dir), min_free_gb)]
    if policy is not None:
        policy_check, site_policy = check_policy(Path(policy))
        checks.append(policy_check)
        if site_policy is not None and state_dir is not None:
            checks.append(check_budget(Path(state_dir), site_policy))
    return checks


def render(checks: Iterable[Check]) -> str:
    """One line per check, then the overall verdict."""
    checks = list(checks)
    lines = [f"{_LABELS[c.status]} {c.name}: {c.detail}" for c in checks]
    errors = sum(c.status == "error" for c in checks)
    warnings = sum(c.status == "warning" for c in checks)
    plural = lambda n, word: f"{n} {word}{'s' * (n != 1)}"  # noqa: E731
    if errors:
        verdict = (f"NOT READY: {plural(errors, 'error')}, {plural(warnings, 'warning')}. Fix "
                   "the [FAIL] lines, then run the doctor again.")
    elif warnings:
        verdict = f"READY with {plural(warnings, 'warning')}: read the [warn] lines."
    else:
        verdict = f"READY: all {plural(len(checks), 'check')} passed."
    return "\n".join([*lines, "", f"Result: {verdict}"])
