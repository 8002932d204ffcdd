"""The environment fedclinic starts Flower's processes with (SuperLink, SuperNode, executor)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's processes: its console scripts on PATH (the SuperLink starts
    `flower-superexec` and `flwr-serverapp` by name), its own home, and no `uv sync` at run time."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    return env
