"""The TLS identity of the SuperLink's loopback-only listener, made afresh at every server start.

`fedclinic server` runs Flower's SuperLink on 127.0.0.1 only (server/operator_gate.py explains
why). Flower still needs TLS there: `--enable-supernode-auth` refuses to start without it, and its
ServerApp processes verify the SuperLink against `--ssl-ca-certfile`. The consortium's server
certificate names the public address (and need not name 127.0.0.1), so this module makes a
throw-away CA and a certificate for 127.0.0.1 / localhost in the server's private state folder
(0700, keys 0600). They never leave the host, and nothing outside it trusts them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.private_files import private_dir, write_private

LOOPBACK_HOST = "127.0.0.1"
_DAYS = 3650                    # the server may run for years between restarts
_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class LoopbackTLS:
    ca_cert: Path      # what Flower's processes and the front verify the SuperLink with
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedclinic server (loopback)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
             ) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - _SKEW)
            .not_valid_after(now + dt.timedelta(days=_DAYS))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False))


def make_loopback_tls(folder: Path) -> LoopbackTLS:
    """A new CA and a 127.0.0.1/localhost server certificate under `folder` (replacing any)."""
    folder = private_dir(folder, tighten=True)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedclinic loopback CA")
    ca = (_builder(ca_name, ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK_HOST)),
                                       x509.DNSName("localhost")])
    leaf = (_builder(_name(LOOPBACK_HOST), ca_name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(san, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    tls = LoopbackTLS(folder / "ca.crt", folder / "superlink.crt", folder / "superlink.key")
    write_private(tls.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    write_private(tls.cert, leaf.public_bytes(serialization.Encoding.PEM))
    write_private(tls.key, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return tls
