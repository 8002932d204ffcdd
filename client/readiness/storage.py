"""The site's state folder: writable (or creatable), with enough free disk next to it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from client.check import Check


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_state_dir(state: Path) -> Check:
    name = "state folder"
    if state.exists() and not state.is_dir():
        return Check(name, "error", f"{state} exists but is not a folder; pass another "
                                    "--state")
    if state.is_dir():
        try:
            with tempfile.TemporaryFile(dir=state):
                pass
        except OSError as exc:
            return Check(name, "error", f"{state}: cannot write here ({exc.strerror}); "
                                        "give the site's user write access")
        return Check(name, "ok", f"{state} is writable")
    parent = _existing_ancestor(state)
    if not os.access(parent, os.W_OK | os.X_OK):
        return Check(name, "error", f"{state} does not exist and cannot be created: "
                                    f"{parent} is not writable by this user")
    return Check(name, "ok", f"{state} does not exist yet; it will be created in {parent}")


def check_disk(state: Path, min_free_gb: float) -> Check:
    name = "free disk space"
    where = _existing_ancestor(state)
    free_gb = shutil.disk_usage(where).free / 1e9
    text = f"{free_gb:.1f} GB free on the disk holding {where}"
    if free_gb < min_free_gb:
        return Check(name, "error", f"{text}; at least {min_free_gb:g} GB needed for "
                                    "models, checkpoints and logs (--min-free-gb)")
    return Check(name, "ok", f"{text} (need {min_free_gb:g} GB)")
