"""Can this machine reach the server's port, and does its TLS handshake verify with the CA?"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

from cryptography import x509

from client.check import Check


def check_reachable(host: str, port: int, timeout: float) -> Check:
    name, where = "server reachable", f"{host}:{port}"
    hint = (f"check the address, that the server is running, and that this network allows "
            f"outbound TCP to port {port}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror as exc:
        return Check(name, "error", f"cannot resolve {host!r} ({exc.strerror}); check the "
                                    "name and this machine's DNS")
    except TimeoutError:
        return Check(name, "error", f"no answer from {where} within {timeout:g} s (a "
                                    f"firewall dropping the packets?); {hint}")
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return Check(name, "error", f"cannot connect to {where}: {reason}; {hint}")
    return Check(name, "ok", f"TCP connection to {where} succeeded")


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
              timeout: float) -> tuple[Check, x509.Certificate | None, bool]:
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
        return Check(name, "error", (
            f"the certificate of {where} does not verify against {ca_cert}: "
            f"{exc.verify_message}{issuer}. You probably have the wrong ca.crt: ask the "
            "consortium operator for the current one")), cert, False
    except ssl.SSLError as exc:
        return Check(name, "error", (
            f"TLS handshake with {where} failed ({exc.reason or exc}); is this the fedclinic "
            "server's port, and is the server started with its certificates?")), None, False
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
        return Check(name, "error", f"TLS connection to {where} failed: {reason}"), \
            None, False
    return Check(name, "ok", f"{version} with {where}; its certificate chain verifies "
                             f"against {ca_cert}"), cert, True
