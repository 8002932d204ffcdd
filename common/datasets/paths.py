"""The one rule for a file path written in a site's own index files (labels.csv ``path`` keys,
MSD ``dataset.json`` entries): it names a file *inside* the data folder.

A path is relative to the data folder, with ``/`` or ``\\``; ``./`` and ``a/../`` hops are
normalised away, so ``x.dcm``, ``./x.dcm`` and ``sub/../x.dcm`` are one key. Refused, with a
message naming the path and the folder: an absolute path (``/etc/passwd``, ``C:\\x``), a path that
climbs out (``../other/x.nii.gz``) and a symbolic link that resolves outside the folder. A
refused path is never opened.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from common.datasets.base import DataError

_DRIVE = re.compile(r"^[A-Za-z]:")


class OutsideDataFolder(DataError):
    """A path that would leave the data folder (never opened)."""


def normal_path(text: str) -> str:
    """``text`` as one spelling: ``/`` separators, no ``.`` / ``a/..`` hops, no trailing ``/``.

    Raises `OutsideDataFolder` for an absolute path or one that climbs above its folder.
    """
    posix = text.strip().replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise OutsideDataFolder(f"{text!r} is an absolute path; paths are relative to the data "
                                f"folder (write it as the path below that folder)")
    normal = posixpath.normpath(posix) if posix else ""
    if normal in ("", "."):
        raise OutsideDataFolder(f"{text!r} names no file; expected a path below the data folder")
    if normal == ".." or normal.startswith("../"):
        raise OutsideDataFolder(f"{text!r} leads outside the data folder ('..' above it); only "
                                f"files inside the data folder are read")
    return normal


def inside(root: Path, text: str) -> Path:
    """``root / normal_path(text)``, refusing (`OutsideDataFolder`) a path or a symbolic link that
    leaves ``root``; the file itself need not exist."""
    path = Path(root) / normal_path(text)
    check_inside(root, path, text)
    return path


def check_inside(root: Path, path: Path, shown: str | None = None) -> None:
    """`OutsideDataFolder` unless ``path`` (links resolved) lies inside ``root``."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        name = shown if shown is not None else str(path)
        raise OutsideDataFolder(f"a link leading outside the data folder: {name!r} resolves to "
                                f"{real}; only files inside the data folder are read (copy the "
                                f"file in)")
