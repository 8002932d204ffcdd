"""Is this client certificate the consortium operator's? The role check of the server's front.

TLS has already verified the certificate against the consortium CA, and OpenSSL has refused any
whose extended key usage excludes client authentication (the server certificate: serverAuth
only). Two more conditions make it the operator's, both written by `fedclinic certs` (
`deploy/certs.py` `make_operator_cert`):

* the extended key usage extension is present and names clientAuth (a CA-signed certificate
  without the extension would pass OpenSSL's purpose check: it is refused here);
* the subject's organisational unit is exactly ``operator`` (`OPERATOR_ROLE`; deploy/certs.py
  holds the same value, tests assert the two agree).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OPERATOR_ROLE = "operator"


class NotOperator(Exception):
    """A verified client certificate without the operator role (the message says what it has)."""


def _names(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def operator_name(der: bytes) -> str:
    """The operator's name (the certificate's CN) if `der` is an operator certificate, else
    NotOperator naming what it lacks."""
    cert = x509.load_der_x509_certificate(der)
    common = ", ".join(_names(cert, NameOID.COMMON_NAME)) or "(no CN)"
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise NotOperator(f"certificate CN={common} has no extended key usage; an operator "
                          "certificate says clientAuth") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise NotOperator(f"certificate CN={common} is not for client authentication")
    units = _names(cert, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if units != [OPERATOR_ROLE]:
        raise NotOperator(f"certificate CN={common} has OU={units or 'none'}, not "
                          f"OU={OPERATOR_ROLE}")
    return common
