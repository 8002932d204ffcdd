"""The consortium's TLS certificates and the sites' authentication keys (`fedclinic certs`).

Two kinds of credentials protect a deployment:

* TLS: a private consortium CA signs the server's certificate; every site verifies the server
  against the CA certificate (``ca.crt``), so nobody can impersonate the server or read traffic.
* Site authentication: each hospital holds an EC P-384 key pair (OpenSSH formats, as Flower's
  SuperNode authentication expects); the server only accepts sites whose public key the
  consortium registered (``site-keys/<name>.pub``).
* Operator authentication: the consortium operator holds a client certificate signed by the CA
  (``operator/operator.crt`` + ``operator.key``) whose role is written twice: extended key usage
  clientAuth only and OU=operator. The server's front (``server/operator_gate.py``) lets only a
  connection that presents it reach the Control API (submit, stop, register or revoke a site).
  Neither a site key (not a certificate), ``ca.crt`` (public), nor the server certificate
  (serverAuth only: TLS refuses it as a client certificate) can pass.

Private keys are created with mode 0600 from the first byte (``os.open``), never chmod-ed after
being written, and no existing file is replaced unless the caller passes ``force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.keys import NIST_CURVES
from common.site_names import default_names

SITE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
KEY_CURVE = ec.SECP384R1
CA_DAYS = 3650        # the CA outlives several server certificates (re-issued every `days`)
CLOCK_SKEW = dt.timedelta(minutes=5)   # valid a little before "now": hosts' clocks differ
ORGANIZATION = "fedclinic consortium"
DEFAULT_OUT = Path("fedclinic-certs")
DEFAULT_SITES = ",".join(default_names(3))   # site-0,site-1,site-2 (common/site_names.py)
# The role an operator certificate carries (subject OU); server/operator_role.py checks the same
# value (tests/test_operator_access.py asserts the two agree: deploy/ and server/ never import
# each other).
OPERATOR_ROLE = "operator"
DEFAULT_OPERATOR = "operator"


class CertError(ValueError):
    """Bad certificate input or a refused overwrite (the message names the file or value)."""


@dataclass(frozen=True)
class SiteFiles:
    """One site's files in the consortium directory. ``key`` is None when the hospital made its
    own key pair and only sent its public key."""

    name: str
    key: Path | None
    pub: Path
    ca_cert: Path
    registered: Path   # site-keys/<name>.pub: the server's copy of the public key


@dataclass(frozen=True)
class CertBundle:
    """Everything `init_consortium` wrote."""

    out: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_ca_cert: Path
    site_keys_dir: Path
    sites: tuple[SiteFiles, ...]
    server_names: tuple[str, ...]
    server_ips: tuple[str, ...]
    server_not_after: dt.datetime
    operator_cert: Path | None = None   # operator/operator.crt: the operator's client certificate
    operator_key: Path | None = None


# ---------------------------------------------------------------------------------------------
# validation


def check_site_name(name: str) -> str:
    if not isinstance(name, str) or not SITE_NAME.fullmatch(name):
        raise CertError(f"site name {name!r} is not allowed; use letters, digits, '-' and '_' "
                        "only (e.g. site-0, charite_berlin)")
    return name


def check_operator_name(name: str) -> str:
    if not isinstance(name, str) or not SITE_NAME.fullmatch(name):
        raise CertError(f"operator name {name!r} is not allowed; use letters, digits, '-' and "
                        "'_' only (e.g. operator, alice)")
    return name


def _check_site_names(sites: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in sites:
        check_site_name(name)
        if name in seen:
            raise CertError(f"site name {name!r} is given twice; site names must be unique")
        seen.add(name)
    return list(sites)


def _check_server_names(names: list[str]) -> list[str]:
    for name in names:
        if _parse_ip(name) is not None:
            raise CertError(f"server name {name!r} is an IP address; pass it as --server-ip")
        if not DNS_NAME.fullmatch(name) or len(name) > 253:
            raise CertError(f"server name {name!r} is not a valid DNS name (letters, digits, '-' "
                            "and '.', e.g. fl.consortium.example.org)")
    return list(names)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _check_server_ips(ips: list[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    parsed = []
    for text in ips:
        ip = _parse_ip(text)
        if ip is None:
            raise CertError(f"server IP {text!r} is not an IPv4 or IPv6 address "
                            "(e.g. 10.20.0.5); give host names with --server-name")
        parsed.append(ip)
    return parsed


def is_nist_ec_key(key: object) -> bool:
    """True for an EC key on P-256, P-384 or P-521 (the curves Flower accepts for sites)."""
    return (isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))
            and isinstance(key.curve, NIST_CURVES))


def load_site_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A site's OpenSSH public key file, checked to be EC on a NIST curve."""
    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise CertError(f"{path}: public key file does not exist") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertError(f"{path}: not an OpenSSH public key ({exc}); expected one line "
                        "'ecdsa-sha2-nistp384 AAAA... comment' from `fedclinic certs "
                        "site-key`") from None
    if not is_nist_ec_key(key):
        raise CertError(f"{path}: {type(key).__name__} is not accepted; site keys must be EC "
                        "keys on a NIST curve (P-384 recommended), made by `fedclinic certs "
                        "site-key`")
    return key  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# files


def _refuse_existing(paths: list[Path], force: bool) -> None:
    """Raise before anything is written if any target exists (so a refusal changes nothing)."""
    if force:
        return
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CertError(f"{existing[0]} already exists{more}; refusing to overwrite "
                        "certificates or keys. Pass --force to replace them (every site or "
                        "server using the old files must then get the new ones)")


def _mkdir(path: Path, private: bool) -> None:
    path.mkdir(mode=0o700 if private else 0o755, parents=True, exist_ok=True)


def _write(path: Path, data: bytes, private: bool) -> None:
    """Create ``path`` with its final mode from the start: 0600 for secrets, 0644 otherwise.
    A replaced file is unlinked first, so a lax mode of the old file is never inherited."""
    if path.exists() or path.is_symlink():
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ssh_public_line(key: ec.EllipticCurvePublicKey, comment: str) -> bytes:
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return blob + f" {comment}\n".encode()


def _site_key_pair(name: str) -> tuple[bytes, bytes]:
    """(OpenSSH private key, OpenSSH public key line) of a fresh P-384 key."""
    key = ec.generate_private_key(KEY_CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return private, _ssh_public_line(key.public_key(), f"{name}@fedclinic")


# ---------------------------------------------------------------------------------------------
# certificates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not sign_certs, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=sign_certs, crl_sign=sign_certs, encipher_only=False,
                         decipher_only=False)


def make_ca(days: int = CA_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-384 CA that signs leaf certificates only (path length 0): the server's
    and the operator's."""
    key = ec.generate_private_key(KEY_CURVE())
    name, now = _name(f"{ORGANIZATION} CA"), _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(sign_certs=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA384()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     names: list[str], ips: list[str], days: int,
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-384 server key and its certificate for exactly ``names`` (DNS) and ``ips`` (SAN)."""
    dns, addrs = _check_server_names(names), _check_server_ips(ips)
    if not dns and not addrs:
        raise CertError("the server certificate needs at least one --server-name or --server-ip "
                        "(the address sites dial)")
    key, now = ec.generate_private_key(KEY_CURVE()), _now()
    san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ip) for ip in addrs]
    cert = (x509.CertificateBuilder().subject_name(_name(dns[0] if dns else str(addrs[0])))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(sign_certs=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return key, cert


def make_operator_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                       name: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-384 client certificate for the operator ``name``: EKU clientAuth only (so no server
    could use it, and TLS refuses the server certificate in its place) and OU=operator (the role
    the server's front checks)."""
    check_operator_name(name)
    key, now = ec.generate_private_key(KEY_CURVE()), _now()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OPERATOR_ROLE),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(sign_certs=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return key, cert


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------------------------------------
# public API


def _site_files(out: Path, name: str, with_key: bool) -> SiteFiles:
    site_dir = out / "sites" / name
    return SiteFiles(name=name, key=site_dir / f"{name}.key" if with_key else None,
                     pub=site_dir / f"{name}.pub", ca_cert=site_dir / "ca.crt",
                     registered=out / "site-keys" / f"{name}.pub")


def init_consortium(out: Path, server_names: list[str], server_ips: list[str], sites: list[str],
                    days: int = 825, force: bool = False) -> CertBundle:
    """Create a consortium CA, the server's certificate for ``server_names``/``server_ips``,
    the operator's client certificate (``out/operator``) and a key pair per site (registered in
    ``out/site-keys``). Nothing is written if any target file exists and ``force`` is off."""
    out = Path(out)
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise CertError(f"days={days!r}: the server certificate's lifetime must be a whole "
                        "number of days >= 1 (825 is the usual maximum for TLS servers)")
    _check_server_names(server_names)
    _check_server_ips(server_ips)
    _check_site_names(sites)
    site_files = tuple(_site_files(out, name, with_key=True) for name in sites)
    bundle = CertBundle(
        out=out, ca_cert=out / "ca" / "ca.crt", ca_key=out / "ca" / "ca.key",
        server_cert=out / "server" / "server.crt", server_key=out / "server" / "server.key",
        server_ca_cert=out / "server" / "ca.crt", site_keys_dir=out / "site-keys",
        sites=site_files, server_names=tuple(server_names), server_ips=tuple(server_ips),
        server_not_after=_now(), operator_cert=out / "operator" / "operator.crt",
        operator_key=out / "operator" / "operator.key")
    targets = [bundle.ca_cert, bundle.ca_key, bundle.server_cert, bundle.server_key,
               bundle.server_ca_cert, bundle.operator_cert, bundle.operator_key]
    for site in site_files:
        targets += [site.key, site.pub, site.ca_cert, site.registered]  # type: ignore[list-item]
    _refuse_existing(targets, force)

    ca_key, ca_cert = make_ca(max(days, CA_DAYS))
    server_key, server_cert = make_server_cert(ca_key, ca_cert, server_names, server_ips, days)
    ca_pem = _pem_cert(ca_cert)
    for directory, private in ((out / "ca", True), (out / "server", True),
                               (out / "operator", True), (out / "sites", True),
                               (bundle.site_keys_dir, False)):
        _mkdir(directory, private)
    _write(bundle.ca_key, _pem_private(ca_key), private=True)
    _write(bundle.ca_cert, ca_pem, private=False)
    _write(bundle.server_key, _pem_private(server_key), private=True)
    _write(bundle.server_cert, _pem_cert(server_cert), private=False)
    _write(bundle.server_ca_cert, ca_pem, private=False)
    _write_operator(bundle.operator_cert, bundle.operator_key,  # type: ignore[arg-type]
                    *make_operator_cert(ca_key, ca_cert, DEFAULT_OPERATOR, days))
    for site in site_files:
        _write_site(site, ca_pem)
    return replace(bundle, server_not_after=server_cert.not_valid_after_utc)


def _write_operator(cert_path: Path, key_path: Path, key: ec.EllipticCurvePrivateKey,
                    cert: x509.Certificate) -> None:
    _mkdir(cert_path.parent, private=True)
    _write(key_path, _pem_private(key), private=True)
    _write(cert_path, _pem_cert(cert), private=False)


def operator_files(consortium_dir: Path, name: str = DEFAULT_OPERATOR) -> tuple[Path, Path]:
    """Where an operator's (certificate, key) live: ``operator/NAME.crt`` and ``.key``."""
    folder = Path(consortium_dir) / "operator"
    return folder / f"{check_operator_name(name)}.crt", folder / f"{name}.key"


def issue_operator(consortium_dir: Path, name: str = DEFAULT_OPERATOR, days: int = 825,
                   force: bool = False) -> tuple[Path, Path]:
    """Issue (or, with ``force``, re-issue) the client certificate of operator ``name`` with the
    CA key in ``consortium_dir/ca``; returns (certificate, key). Needs the CA key: run it where
    the CA key is kept (offline), like `init`."""
    consortium_dir = Path(consortium_dir)
    ca_key_path, ca_path = consortium_dir / "ca" / "ca.key", consortium_dir / "ca" / "ca.crt"
    if not ca_key_path.is_file() or not ca_path.is_file():
        raise CertError(f"{consortium_dir}: no ca/ca.key and ca/ca.crt here; operator "
                        "certificates are signed with the CA key that `certs init` wrote")
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise CertError(f"days={days!r}: an operator certificate lives a whole number of days "
                        ">= 1")
    cert_path, key_path = operator_files(consortium_dir, name)
    _refuse_existing([cert_path, key_path], force)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{ca_key_path}: not the EC CA key `certs init` writes")
    _write_operator(cert_path, key_path, *make_operator_cert(ca_key, ca_cert, name, days))
    return cert_path, key_path


def _write_site(site: SiteFiles, ca_pem: bytes) -> None:
    assert site.key is not None
    private, public = _site_key_pair(site.name)
    _mkdir(site.pub.parent, private=True)
    _mkdir(site.registered.parent, private=False)
    _write(site.key, private, private=True)
    _write(site.pub, public, private=False)
    _write(site.ca_cert, ca_pem, private=False)
    _write(site.registered, public, private=False)


def new_site_key(out: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """A hospital makes its own key pair: ``out/<name>.key`` (0600, stays at the hospital) and
    ``out/<name>.pub`` (sent to the consortium). Returns (key, pub)."""
    check_site_name(name)
    out = Path(out)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    _refuse_existing([key_path, pub_path], force)
    _mkdir(out, private=True)
    private, public = _site_key_pair(name)
    _write(key_path, private, private=True)
    _write(pub_path, public, private=False)
    return key_path, pub_path


def _consortium_ca(consortium_dir: Path) -> bytes:
    for candidate in (consortium_dir / "ca" / "ca.crt", consortium_dir / "server" / "ca.crt"):
        if candidate.is_file():
            return candidate.read_bytes()
    raise CertError(f"{consortium_dir}: no ca/ca.crt or server/ca.crt here; pass the directory "
                    "`fedclinic certs init --out` created")


def _check_not_registered_elsewhere(site_keys: Path, name: str,
                                    key: ec.EllipticCurvePublicKey) -> None:
    """One key per site: a key registered under two names would let one hospital pose as two."""
    if not site_keys.is_dir():
        return
    for other in sorted(site_keys.glob("*.pub")):
        if other.stem == name:
            continue
        try:
            registered = serialization.load_ssh_public_key(other.read_bytes())
        except (ValueError, UnsupportedAlgorithm):
            continue
        if registered == key:
            raise CertError(f"this public key is already registered as site {other.stem!r} "
                            f"({other}); every site needs its own key pair")


def add_site(consortium_dir: Path, name: str, force: bool = False,
             public_key: Path | None = None) -> SiteFiles:
    """Register a new site: make its key pair (or take the hospital's own ``public_key``),
    copy the CA certificate into ``sites/<name>/`` and add the public key to ``site-keys/``."""
    check_site_name(name)
    consortium_dir = Path(consortium_dir)
    ca_pem = _consortium_ca(consortium_dir)
    site = _site_files(consortium_dir, name, with_key=public_key is None)
    targets = [site.pub, site.ca_cert, site.registered] + ([site.key] if site.key else [])
    if public_key is None:
        _refuse_existing(targets, force)  # type: ignore[arg-type]
        _write_site(site, ca_pem)
        return site
    key = load_site_public_key(public_key)
    _check_not_registered_elsewhere(site.registered.parent, name, key)
    _refuse_existing(targets, force)  # type: ignore[arg-type]
    line = _ssh_public_line(key, f"{name}@fedclinic")
    _mkdir(site.pub.parent, private=True)
    _mkdir(site.registered.parent, private=False)
    _write(site.pub, line, private=False)
    _write(site.ca_cert, ca_pem, private=False)
    _write(site.registered, line, private=False)
    return site


def registered_key(consortium_dir: Path, name: str) -> Path:
    """``site-keys/NAME.pub`` of a registered site (CertError naming the file if there is none)."""
    path = Path(consortium_dir) / "site-keys" / f"{check_site_name(name)}.pub"
    if not path.is_file():
        raise CertError(f"{path}: no such registered site key; `fedclinic certs add-site` "
                        "registers a site, and revoke-site takes the name it was given")
    load_site_public_key(path)
    return path


def retire_site_key(consortium_dir: Path, name: str) -> Path:
    """Move ``site-keys/NAME.pub`` to ``revoked/NAME.pub`` (kept: what was revoked, and when, by
    its file time) so that the server's next start does not register it again. Returns the
    new path."""
    source = registered_key(consortium_dir, name)
    target_dir = Path(consortium_dir) / "revoked"
    _mkdir(target_dir, private=False)
    target = target_dir / source.name
    os.replace(source, target)
    return target


def instructions(bundle: CertBundle) -> str:
    """What to send to whom, for the person who ran `fedclinic certs init`."""
    names = ", ".join([*bundle.server_names, *bundle.server_ips])
    lines = [
        f"Certificates written to {bundle.out}/ (server certificate valid for: {names}; "
        f"expires {bundle.server_not_after:%Y-%m-%d}).",
        "",
        f"1. Server host: copy {bundle.out / 'server'}/ (server.crt, server.key, ca.crt) and "
        f"{bundle.site_keys_dir}/ to the server, e.g.",
        f"     fedclinic server --certs {bundle.out / 'server'} --site-keys "
        f"{bundle.site_keys_dir} ...",
        "   server.key must stay readable by the server's user only (mode 0600).",
    ]
    if bundle.sites:
        lines += ["", "2. Each hospital: its own folder over a secure channel (encrypted file "
                      "transfer or in person):"]
        lines += [f"     {site.name}: {site.pub.parent}/ ({site.ca_cert.name} and "
                  f"{site.key.name if site.key else ''})" for site in bundle.sites]
        lines += ["   Better: let each hospital make its own key with",
                  "     fedclinic certs site-key --name NAME --out DIR",
                  "   and send you only NAME.pub; register it with",
                  f"     fedclinic certs add-site --consortium {bundle.out} --name NAME "
                  "--public-key NAME.pub",
                  "   then send it back only ca.crt (not secret)."]
    if bundle.operator_cert is not None:
        lines += ["", f"3. The operator (you): {bundle.operator_cert} and {bundle.operator_key} "
                      "(mode 0600) are the credential that submits runs and revokes sites "
                      "(`fedclinic run` finds them beside --ca-cert). They never go to the "
                      "server or to a hospital."]
    lines += ["",
              f"4. The CA key {bundle.ca_key} signs server and operator certificates: keep it "
              "offline with the consortium operator (e.g. an encrypted USB drive), never on "
              "the server.",
              "Never send any .key file by e-mail or chat."]
    return "\n".join(lines)
