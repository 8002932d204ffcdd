"""The app bundle (Flower FAB) that `fedclinic run` submits: configuration only, no code.

A FAB normally carries the app's source, which every SuperNode would then execute. fedclinic's
bundle holds a `pyproject.toml` (the run's default config and the fedclinic version) and two
one-line modules that import the ServerApp and ClientApp *installed* on each host. A site therefore
runs the fedclinic its operator installed, and checks that the bundle asks for exactly that version
(`client.approval`). The bundle is byte-for-byte reproducible, so its sha256 identifies a release.
"""

from __future__ import annotations

import hashlib
import json

from flwr.cli.build import build_fab_from_files

from common.config import RunConfig
from common.version import __version__

PUBLISHER = "fedclinic"
APP_NAME = "fedclinic-app"
SERVER_MODULE = "fedclinic_server_app"
CLIENT_MODULE = "fedclinic_client_app"

SERVER_SHIM = (f'"""ServerApp of the fedclinic installed on the server host."""\n'
               f"from server.app import app  # noqa: F401\n")
CLIENT_SHIM = (f'"""ClientApp of the fedclinic installed on the site host."""\n'
               f"from client.app import app  # noqa: F401\n")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def pyproject(version: str = __version__) -> str:
    """The bundle's pyproject.toml: identity, components, and RunConfig defaults."""
    config = "\n".join(f"{name.replace('_', '-')} = {_toml_value(default)}"
                       for name, default in RunConfig().to_dict().items())
    return (
        "[build-system]\nrequires = [\"setuptools>=68\"]\nbuild-backend = \"setuptools.build_meta\"\n\n"
        f"[project]\nname = \"{APP_NAME}\"\nversion = \"{version}\"\n"
        f"description = \"fedclinic {version}: runs the fedclinic installed on each host\"\n"
        f"dependencies = [\"fedclinic=={version}\"]\n\n"
        f"[tool.flwr.app]\npublisher = \"{PUBLISHER}\"\n\n"
        "[tool.flwr.app.components]\n"
        f"serverapp = \"{SERVER_MODULE}:app\"\nclientapp = \"{CLIENT_MODULE}:app\"\n\n"
        f"[tool.flwr.app.config]\n{config}\n"
    )


def bundle_files(version: str = __version__) -> dict[str, bytes]:
    return {
        "pyproject.toml": pyproject(version).encode(),
        f"{SERVER_MODULE}.py": SERVER_SHIM.encode(),
        f"{CLIENT_MODULE}.py": CLIENT_SHIM.encode(),
    }


def build_bundle(version: str = __version__) -> tuple[bytes, str]:
    """The FAB bytes and their sha256 (what Flower calls the FAB hash)."""
    fab, _ = build_fab_from_files(bundle_files(version))
    return fab, hashlib.sha256(fab).hexdigest()
