"""Which code a site agrees to run: the fedclinic it installed, or bundles its operator allowed."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from common.version import __version__


class AppRefused(Exception):
    """The server offered an app this site's operator has not approved (message says which)."""


@dataclass(frozen=True)
class Approval:
    kind: str          # "installed": the fedclinic bundle of this version | "allowed-hash"
    fab_hash: str

    def describe(self) -> str:
        if self.kind == "installed":
            return f"installed fedclinic {__version__} (bundle sha256 {self.fab_hash[:12]})"
        return f"operator-allowed app bundle sha256 {self.fab_hash[:12]}"


@lru_cache(maxsize=1)
def installed_bundle_hash() -> str:
    """sha256 of the bundle `fedclinic run` of this very version submits (it is reproducible)."""
    from runtime.bundle import build_bundle

    return build_bundle()[1]


def review_app(fab_hash: str, allowed_hashes: frozenset[str] = frozenset()) -> Approval:
    """Approve the installed fedclinic's bundle or an allowed hash; refuse anything else."""
    if fab_hash == installed_bundle_hash():
        return Approval("installed", fab_hash)
    if fab_hash in allowed_hashes:
        return Approval("allowed-hash", fab_hash)
    allowed = ", ".join(sorted(h[:12] for h in allowed_hashes)) or "none"
    raise AppRefused(
        f"this site runs only approved code: the server offered an app bundle with sha256 "
        f"{fab_hash or '(none)'}; allowed are the bundle of the installed fedclinic {__version__} "
        f"(sha256 {installed_bundle_hash()}) and operator-allowed hashes: {allowed}. Ask the "
        f"consortium which fedclinic version the run needs, or allow the bundle with "
        f"`fedclinic site --allow-app-hash {fab_hash or 'SHA256'}`")
