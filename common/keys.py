"""Site-key policy: a site authenticates with an EC key on a NIST curve, as Flower requires."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
