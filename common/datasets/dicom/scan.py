"""Every DICOM file under a folder (any nesting, any extension), and the files that are not."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom

from common.datasets.base import DataError
from common.datasets.cache import TAG_FILE
from common.datasets.dicom.header import DicomFileError, read_header
from common.datasets.labels import LABELS_FILE


def _skip_dir(parent: str, name: str) -> bool:
    return name.startswith(".") or os.path.exists(os.path.join(parent, name, TAG_FILE))


def _candidates(root: Path) -> list[Path]:
    """Every file under root except dotfiles/dot-folders, labels.csv and cache folders."""
    out = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _skip_dir(parent, d))
        for name in sorted(files):
            if name.startswith(".") or name.lower() == LABELS_FILE or name == TAG_FILE:
                continue
            out.append(Path(parent) / name)
    return out


def scan_headers(root: Path) -> tuple[dict[Path, pydicom.Dataset], list[tuple[Path, str]]]:
    """Headers of every readable DICOM file under root, and the bad files with their reason."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a folder of DICOM files with "
                        f"{LABELS_FILE}")
    headers: dict[Path, pydicom.Dataset] = {}
    bad: list[tuple[Path, str]] = []
    for path in _candidates(root):
        try:
            headers[path] = read_header(path)
        except DicomFileError as exc:
            bad.append((path, exc.reason))
    return headers, bad


def scan(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """All DICOM files under ``root`` (any nesting, any extension) and the bad files + reason."""
    headers, bad = scan_headers(root)
    return list(headers), bad
