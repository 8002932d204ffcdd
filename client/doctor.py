"""`fedclinic site doctor`: check a hospital's set-up before it joins the federation.

Each check answers one question a hospital's IT person would otherwise debug from a Flower
traceback: is the CA certificate the right one and still valid, can this machine reach the
server's port, does the server's certificate verify and match the address dialled, is the
site key usable by Flower and private, is the data readable, and is there room for the state.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import inspect
import ipaddress
import os
import re
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

STATUSES = ("ok", "warning", "error")
EXPIRY_WARNING_DAYS = 30
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_ADDRESS = re.compile(r"\[(?P<ip6>[0-9A-Fa-f:.]+)\]:(?P<port6>\d+)"
                      r"|(?P<host>[^\s:\[\]]+):(?P<port>\d+)")
_LABELS = {"ok": "[ ok ]", "warning": "[warn]", "error": "[FAIL]"}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DoctorCheck:
    name: str
    status: str   # "ok" | "warning" | "error"
    detail: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"DoctorCheck status {self.status!r}: expected one of "
                             f"{', '.join(STATUSES)}")


def parse_address(server: str) -> tuple[str, int]:
    """``'host:port'`` or ``'[v6-address]:port'`` -> (host, port)."""
    match = _ADDRESS.fullmatch(server.strip())
    port = int(match["port6"] or match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ValueError(f"server address {server!r}: expected HOST:PORT with a port 1-65535, "
                         "e.g. fl.consortium.example.org:8000 or [2001:db8::5]:8000")
    return match["ip6"] or match["host"], port


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# certificates


def _validity(cert: x509.Certificate, now: dt.datetime) -> tuple[str, str]:
    """(status, text) of a certificate's validity period at ``now``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return "error", (f"not valid before {start:%Y-%m-%d %H:%M} UTC; check this machine's "
                         "clock (timedatectl)")
    if now > end:
        return "error", f"expired on {end:%Y-%m-%d}; ask the consortium operator for a new one"
    days = (end - now).days
    if days < EXPIRY_WARNING_DAYS:
        return "warning", (f"expires in {days} days ({end:%Y-%m-%d}); ask the consortium "
                           "operator for a new one soon")
    return "ok", f"valid until {end:%Y-%m-%d} ({days} days)"


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_ca_cert(ca_cert: Path, now: dt.datetime) -> DoctorCheck:
    name = "CA certificate"
    try:
        certs = x509.load_pem_x509_certificates(Path(ca_cert).read_bytes())
    except OSError as exc:
        return DoctorCheck(name, "error", f"{ca_cert}: cannot read it ({exc.strerror}); pass "
                                          "the ca.crt you received from the consortium")
    except ValueError:
        return DoctorCheck(name, "error", f"{ca_cert}: not a PEM certificate (expected a file "
                                          "starting '-----BEGIN CERTIFICATE-----': ca.crt)")
    cert = certs[0]
    if not _is_ca(cert):
        return DoctorCheck(name, "error", f"{ca_cert}: '{_subject(cert)}' is not a CA "
                                          "certificate (server.crt by mistake?); use ca.crt")
    status, text = _validity(cert, now)
    return DoctorCheck(name, status, f"{ca_cert}: '{_subject(cert)}', {text}")


def _san_names(cert: x509.Certificate) -> tuple[list[str], list[IPAddress]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)


def _dns_matches(host: str, pattern: str) -> bool:
    """RFC 6125 matching: exact (case-insensitive) or one left-most wildcard label."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return host == pattern


def check_server_cert(cert: x509.Certificate, host: str, now: dt.datetime,
                      verified: bool) -> DoctorCheck:
    """The certificate is for the host the site dials (a DNS name or an IP) and is in date."""
    name = "server certificate"
    dns, ips = _san_names(cert)
    shown = ", ".join([*(f"DNS:{d}" for d in dns), *(f"IP:{i}" for i in ips)]) or "no names"
    ip = _ip(host)
    matches = ip in ips if ip is not None else any(_dns_matches(host, d) for d in dns)
    note = "" if verified else " (certificate NOT verified, see the TLS check)"
    if not matches:
        return DoctorCheck(name, "error", (
            f"issued for {shown}, but you dial {host!r}: Flower will refuse it. Use one of "
            f"those names in --server, or ask the operator to reissue the server certificate "
            f"with `fedclinic certs init --server-{'ip' if ip else 'name'} {host}`{note}"))
    status, text = _validity(cert, now)
    return DoctorCheck(name, status, f"issued for {shown} (matches {host}), {text}{note}")


# ---------------------------------------------------------------------------------------------
# network


def check_reachable(host: str, port: int, timeout: float) -> DoctorCheck:
    name, where = "server reachable", f"{host}:{port}"
    hint = (f"check the address, that the server is running, and that this network allows "
            f"outbound TCP to port {port}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror as exc:
        return DoctorCheck(name, "error", f"cannot resolve {host!r} ({exc.strerror}); check the "
                                          "name and this machine's DNS")
    except TimeoutError:
        return DoctorCheck(name, "error", f"no answer from {where} within {timeout:g} s (a "
                                          f"firewall dropping the packets?); {hint}")
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return DoctorCheck(name, "error", f"cannot connect to {where}: {reason}; {hint}")
    return DoctorCheck(name, "ok", f"TCP connection to {where} succeeded")


def _handshake(host: str, port: int, context: ssl.SSLContext,
               timeout: float) -> tuple[x509.Certificate, str]:
    context.set_alpn_protocols(["h2"])   # what gRPC clients offer; gRPC servers may require it
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version() or "TLS"
    if der is None:
        raise ssl.SSLError("the server sent no certificate")
    return x509.load_der_x509_certificate(der), version


def _unverified_cert(host: str, port: int, timeout: float) -> x509.Certificate | None:
    """The server's certificate without verification: only to explain a failed handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        return _handshake(host, port, context, timeout)[0]
    except (OSError, ValueError):
        return None


def check_tls(host: str, port: int, ca_cert: Path,
              timeout: float) -> tuple[DoctorCheck, x509.Certificate | None, bool]:
    """TLS handshake verifying the chain with ``ca_cert`` (names are checked separately, for a
    clearer message). Returns (check, server certificate or None, whether it verified)."""
    name, where = "TLS handshake", f"{host}:{port}"
    context = ssl.create_default_context(cafile=str(ca_cert))
    context.check_hostname = False
    try:
        cert, version = _handshake(host, port, context, timeout)
    except ssl.SSLCertVerificationError as exc:
        cert = _unverified_cert(host, port, timeout)
        issuer = f" (it was issued by '{cert.issuer.rfc4514_string()}')" if cert else ""
        return DoctorCheck(name, "error", (
            f"the certificate of {where} does not verify against {ca_cert}: "
            f"{exc.verify_message}{issuer}. You probably have the wrong ca.crt: ask the "
            "consortium operator for the current one")), cert, False
    except ssl.SSLError as exc:
        return DoctorCheck(name, "error", (
            f"TLS handshake with {where} failed ({exc.reason or exc}); is this the fedclinic "
            "server's port, and is the server started with its certificates?")), None, False
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
        return DoctorCheck(name, "error", f"TLS connection to {where} failed: {reason}"), \
            None, False
    return DoctorCheck(name, "ok", f"{version} with {where}; its certificate chain verifies "
                                   f"against {ca_cert}"), cert, True


# ---------------------------------------------------------------------------------------------
# local files


def ssh_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:...`` as `ssh-keygen -lf KEY.pub` prints it (compare with the registered key)."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def check_site_key(path: Path) -> DoctorCheck:
    name = "site key"
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        return DoctorCheck(name, "error", f"{path} does not exist; make it with `fedclinic "
                                          "certs site-key` or use the key the consortium sent")
    except OSError as exc:
        return DoctorCheck(name, "error", f"{path}: cannot read it ({exc.strerror}); run the "
                                          "doctor as the user that runs the site")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return DoctorCheck(name, "error", (
            f"{path}: not an unencrypted OpenSSH private key ({exc}); Flower needs the file "
            "`fedclinic certs site-key` writes ('-----BEGIN OPENSSH PRIVATE KEY-----')"))
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, NIST_CURVES):
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        return DoctorCheck(name, "error", f"{path}: a {kind} key; Flower accepts only EC keys "
                                          "on a NIST curve (P-384 from `fedclinic certs site-key`)")
    about = f"EC {key.curve.name} key, fingerprint {ssh_fingerprint(key.public_key())}"
    if mode & 0o077:
        return DoctorCheck(name, "warning", (
            f"{path}: mode {mode & 0o777:04o} lets other users read the key ({about}); "
            f"run: chmod 600 {path}"))
    return DoctorCheck(name, "ok", f"{path}: {about}, mode {mode & 0o777:04o}")


def _walk_files(root: Path) -> tuple[int, int, int]:
    """(files, bytes, unreadable entries) under ``root`` (a file counts as itself)."""
    if root.is_file():
        readable = os.access(root, os.R_OK)
        return 1, root.stat().st_size, 0 if readable else 1
    files = size = unreadable = 0
    errors: list[OSError] = []
    for folder, _, names in os.walk(root, onerror=errors.append):
        for file_name in names:
            path = os.path.join(folder, file_name)
            try:
                size += os.stat(path).st_size
                files += 1
                unreadable += 0 if os.access(path, os.R_OK) else 1
            except OSError:
                unreadable += 1
    return files, size, unreadable + len(errors)


def check_data(data: Path) -> DoctorCheck:
    name = "site data"
    if not data.exists():
        return DoctorCheck(name, "error", f"{data} does not exist; pass --data with the site's "
                                          "data file or folder")
    if data.is_dir() and not os.access(data, os.R_OK | os.X_OK):
        return DoctorCheck(name, "error", f"{data}: this user cannot list the folder; give the "
                                          "site's user read access")
    files, size, unreadable = _walk_files(data)
    summary = f"{data}: {files} file{'s' * (files != 1)}, {size / 1e6:.1f} MB"
    if files == 0:
        return DoctorCheck(name, "error", f"{summary}: no data files found")
    if unreadable:
        status = "error" if unreadable >= files else "warning"
        return DoctorCheck(name, status, f"{summary}; {unreadable} entries cannot be read by "
                                         "this user (give the site's user read access)")
    return DoctorCheck(name, "ok", summary)


def _problem_text(problem: object) -> str:
    """A check-like object (``name``, ``detail``) as "name: detail"; anything else as str()."""
    name, detail = getattr(problem, "name", None), getattr(problem, "detail", None)
    return f"{name}: {detail}" if name is not None and detail is not None else str(problem)


def _problems(result: object) -> tuple[list[str], list[str]]:
    """(errors, warnings) from a validation result: an object with ``errors``/``warnings``
    (client.validate.ValidationReport), or a plain list of problems (all errors)."""
    if isinstance(result, (list, tuple)):
        return [_problem_text(p) for p in result], []
    errors = getattr(result, "errors", ()) or ()
    warnings = getattr(result, "warnings", ()) or ()
    return [_problem_text(p) for p in errors], [_problem_text(p) for p in warnings]


def _summary(items: list[str], limit: int = 3) -> str:
    more = f"; ... and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def check_validation(data: Path) -> DoctorCheck:
    """`client.validate.validate_site_data` when that module is installed (imported lazily)."""
    name = "data validation"
    try:
        from client.validate import validate_site_data
    except ImportError:
        return DoctorCheck(name, "ok", "skipped: this fedclinic has no client.validate module "
                                       "(the site still validates the data before joining)")
    params = [p for p in inspect.signature(validate_site_data).parameters.values()
              if p.default is inspect.Parameter.empty
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) > 1:
        return DoctorCheck(name, "ok", "skipped: client.validate.validate_site_data needs more "
                                       f"than the data path; run `fedclinic site validate {data}`")
    try:
        errors, warnings = _problems(validate_site_data(data))
    except (ValueError, OSError) as exc:
        return DoctorCheck(name, "error", f"{data}: {exc}")
    hint = f" (details: fedclinic site validate {data})"
    if errors:
        return DoctorCheck(name, "error", f"{len(errors)} problem(s): {_summary(errors)}{hint}")
    if warnings:
        return DoctorCheck(name, "warning", f"{len(warnings)} warning(s): "
                                            f"{_summary(warnings)}{hint}")
    return DoctorCheck(name, "ok", f"{data} passes the site data checks")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_state_dir(state: Path) -> DoctorCheck:
    name = "state folder"
    if state.exists() and not state.is_dir():
        return DoctorCheck(name, "error", f"{state} exists but is not a folder; pass another "
                                          "--state")
    if state.is_dir():
        try:
            with tempfile.TemporaryFile(dir=state):
                pass
        except OSError as exc:
            return DoctorCheck(name, "error", f"{state}: cannot write here ({exc.strerror}); "
                                              "give the site's user write access")
        return DoctorCheck(name, "ok", f"{state} is writable")
    parent = _existing_ancestor(state)
    if not os.access(parent, os.W_OK | os.X_OK):
        return DoctorCheck(name, "error", f"{state} does not exist and cannot be created: "
                                          f"{parent} is not writable by this user")
    return DoctorCheck(name, "ok", f"{state} does not exist yet; it will be created in {parent}")


def check_disk(state: Path, min_free_gb: float) -> DoctorCheck:
    name = "free disk space"
    where = _existing_ancestor(state)
    free_gb = shutil.disk_usage(where).free / 1e9
    text = f"{free_gb:.1f} GB free on the disk holding {where}"
    if free_gb < min_free_gb:
        return DoctorCheck(name, "error", f"{text}; at least {min_free_gb:g} GB needed for "
                                          "models, checkpoints and logs (--min-free-gb)")
    return DoctorCheck(name, "ok", f"{text} (need {min_free_gb:g} GB)")


# ---------------------------------------------------------------------------------------------
# all checks


def _network_checks(server: str, ca_cert: Path, ca_ok: bool, timeout: float,
                    now: dt.datetime) -> list[DoctorCheck]:
    try:
        host, port = parse_address(server)
    except ValueError as exc:
        return [DoctorCheck("server address", "error", str(exc))]
    reach = check_reachable(host, port, timeout)
    if reach.status == "error":
        return [reach]
    if not ca_ok:
        return [reach]
    tls, cert, verified = check_tls(host, port, ca_cert, timeout)
    checks = [reach, tls]
    if cert is not None:
        checks.append(check_server_cert(cert, host, now, verified))
    return checks


def run_doctor(server: str, ca_cert: Path, site_key: Path | None, data_dir: Path | None,
               state_dir: Path | None, min_free_gb: float = 5.0,
               timeout: float = 5.0) -> list[DoctorCheck]:
    """Every check for one site, in the order a person would fix them. Checks that depend on a
    failed one (TLS after an unreachable server) are left out; None skips that input's checks."""
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
    return checks


def render(checks: Iterable[DoctorCheck]) -> str:
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


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:8000", metavar="HOST:PORT",
                        help="the federation server's address, exactly as the site dials it "
                             "(default: 127.0.0.1:8000)")
    parser.add_argument("--ca-cert", type=Path, required=True, metavar="PATH",
                        help="the consortium's ca.crt (default: none, required)")
    parser.add_argument("--site-key", type=Path, default=None, metavar="PATH",
                        help="this site's private key NAME.key (default: not checked)")
    parser.add_argument("--data", type=Path, default=None, metavar="PATH",
                        help="this site's data file or folder (default: not checked)")
    parser.add_argument("--state", type=Path, default=Path("fedclinic-site"), metavar="DIR",
                        help="the site's state folder (privacy ledger, audit log) "
                             "(default: ./fedclinic-site)")
    parser.add_argument("--min-free-gb", type=float, default=5.0, metavar="GB",
                        help="free disk space needed next to the state folder (default: 5)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="network timeout of each connection attempt (default: 5)")


def run_doctor_cli(args: argparse.Namespace) -> int:
    """Print the checks; 0 when none failed (warnings allowed), 1 otherwise."""
    checks = run_doctor(args.server, args.ca_cert, args.site_key, args.data, args.state,
                        min_free_gb=args.min_free_gb, timeout=args.timeout)
    print(render(checks))
    return 1 if any(c.status == "error" for c in checks) else 0
