"""The site's private key: the unencrypted OpenSSH EC key Flower authenticates the site with."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.check import Check
from common.keys import NIST_CURVES


def ssh_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:...`` as `ssh-keygen -lf KEY.pub` prints it (compare with the registered key)."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def check_site_key(path: Path) -> Check:
    name = "site key"
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        return Check(name, "error", f"{path} does not exist; make it with `fedclinic "
                                    "certs site-key` or use the key the consortium sent")
    except OSError as exc:
        return Check(name, "error", f"{path}: cannot read it ({exc.strerror}); run the "
                                    "doctor as the user that runs the site")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return Check(name, "error", (
            f"{path}: not an unencrypted OpenSSH private key ({exc}); Flower needs the file "
            "`fedclinic certs site-key` writes ('-----BEGIN OPENSSH PRIVATE KEY-----')"))
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, NIST_CURVES):
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        return Check(name, "error", f"{path}: a {kind} key; Flower accepts only EC keys "
                                    "on a NIST curve (P-384 from `fedclinic certs site-key`)")
    about = f"EC {key.curve.name} key, fingerprint {ssh_fingerprint(key.public_key())}"
    if mode & 0o077:
        return Check(name, "warning", (
            f"{path}: mode {mode & 0o777:04o} lets other users read the key ({about}); "
            f"run: chmod 600 {path}"))
    return Check(name, "ok", f"{path}: {about}, mode {mode & 0o777:04o}")
