"""The consortium CA certificate and the server certificate: right kind, right names, in date."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from client.check import Check
from client.readiness.address import IPAddress, ip_or_none

EXPIRY_WARNING_DAYS = 30


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


def check_ca_cert(ca_cert: Path, now: dt.datetime) -> Check:
    name = "CA certificate"
    try:
        certs = x509.load_pem_x509_certificates(Path(ca_cert).read_bytes())
    except OSError as exc:
        return Check(name, "error", f"{ca_cert}: cannot read it ({exc.strerror}); pass "
                                    "the ca.crt you received from the consortium")
    except ValueError:
        return Check(name, "error", f"{ca_cert}: not a PEM certificate (expected a file "
                                    "starting '-----BEGIN CERTIFICATE-----': ca.crt)")
    cert = certs[0]
    if not _is_ca(cert):
        return Check(name, "error", f"{ca_cert}: '{_subject(cert)}' is not a CA "
                                    "certificate (server.crt by mistake?); use ca.crt")
    status, text = _validity(cert, now)
    return Check(name, status, f"{ca_cert}: '{_subject(cert)}', {text}")


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
                      verified: bool) -> Check:
    """The certificate is for the host the site dials (a DNS name or an IP) and is in date."""
    name = "server certificate"
    dns, ips = _san_names(cert)
    shown = ", ".join([*(f"DNS:{d}" for d in dns), *(f"IP:{i}" for i in ips)]) or "no names"
    ip = ip_or_none(host)
    matches = ip in ips if ip is not None else any(_dns_matches(host, d) for d in dns)
    note = "" if verified else " (certificate NOT verified, see the TLS check)"
    if not matches:
        return Check(name, "error", (
            f"issued for {shown}, but you dial {host!r}: Flower will refuse it. Use one of "
            f"those names in --server, or ask the operator to reissue the server certificate "
            f"with `fedclinic certs init --server-{'ip' if ip else 'name'} {host}`{note}"))
    status, text = _validity(cert, now)
    return Check(name, status, f"issued for {shown} (matches {host}), {text}{note}")
