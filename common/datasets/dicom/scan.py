"""Every DICOM file under a folder (any nesting, any extension), and the files that are not.

One file is read once: a second name for it (a symbolic or hard link) is an alias of the first
name found (regular files before links), never a second sample. A link that resolves outside
the data folder is a bad file and is not opened (`common.datasets.paths`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pydicom

from common.datasets.base import DataError
from common.datasets.cache import TAG_FILE
from common.datasets.dicom.header import DicomFileError, read_header
from common.datasets.labels import LABELS_FILE
from common.datasets.paths import OutsideDataFolder, check_inside


@dataclass(frozen=True)
class FolderScan:
    """The readable headers, the bad files with their reason, and the aliases (another name of
    a file in ``headers`` or ``bad`` -> that file)."""

    headers: dict[Path, pydicom.Dataset]
    bad: list[tuple[Path, str]]
    aliases: dict[Path, Path]


def _skip_dir(parent: str, name: str) -> bool:
    return name.startswith(".") or os.path.exists(os.path.join(parent, name, TAG_FILE))


def _candidates(root: Path) -> list[Path]:
    """Every file under root except dotfiles/dot-folders, labels.csv and cache folders; regular
    files first, then links (so a file's own name wins over a link to it)."""
    out = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _skip_dir(parent, d))
        for name in sorted(files):
            if name.startswith(".") or name.lower() == LABELS_FILE or name == TAG_FILE:
                continue
            out.append(Path(parent) / name)
    return sorted(out, key=lambda p: p.is_symlink())    # stable: walk order within each group


def scan_folder(root: Path) -> FolderScan:
    """Headers of every readable DICOM file under root, the bad files and the aliases."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a folder of DICOM files with "
                        f"{LABELS_FILE}")
    headers: dict[Path, pydicom.Dataset] = {}
    bad: list[tuple[Path, str]] = []
    aliases: dict[Path, Path] = {}
    seen: dict[tuple[int, int], Path] = {}
    for path in _candidates(root):
        try:
            check_inside(root, path, path.relative_to(root).as_posix())
            stat = path.stat()
        except OutsideDataFolder as exc:
            bad.append((path, str(exc)))
            continue
        except OSError as exc:
            bad.append((path, f"unreadable ({exc.strerror or exc})"))
            continue
        identity = (stat.st_dev, stat.st_ino)
        if identity in seen:
            aliases[path] = seen[identity]
            continue
        seen[identity] = path
        try:
            headers[path] = read_header(path)
        except DicomFileError as exc:
            bad.append((path, exc.reason))
    return FolderScan(headers, bad, aliases)


def scan_headers(root: Path) -> tuple[dict[Path, pydicom.Dataset], list[tuple[Path, str]]]:
    """Headers of every readable DICOM file under root, and the bad files with their reason
    (aliases left out: they are the same files)."""
    found = scan_folder(root)
    return found.headers, found.bad


def scan(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """All DICOM files under ``root`` (any nesting, any extension) and the bad files + reason."""
    headers, bad = scan_headers(root)
    return list(headers), bad
