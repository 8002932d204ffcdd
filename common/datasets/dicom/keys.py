"""Which DICOM files a ``labels.csv`` key names: the one rule the loader trains by and
`fedclinic site validate` counts by.

A file answers to its path relative to the folder (key column ``path``, always with ``/``) or to
the value of its header attribute named by the key column (``SOPInstanceUID``,
``SeriesInstanceUID``, ``StudyInstanceUID``). A ``path`` key is looked up with backslashes as
``/`` and without leading ``./``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pydicom


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to the data folder ``root``, with ``/`` (the ``path`` key of a file)."""
    return Path(path).relative_to(root).as_posix()


def file_key(key_column: str, path: Path, header: pydicom.Dataset, root: Path) -> str:
    """The key a file answers to under ``key_column`` ('' when its header lacks the attribute)."""
    if key_column == "path":
        return relative_path(path, root)
    return str(header.get(key_column, "") or "").strip()


def lookup_key(key: str, key_column: str) -> str:
    """A labels.csv key as `file_key` spells it: a ``path`` with ``/`` and no leading ``./``."""
    if key_column != "path":
        return key
    return re.sub(r"^(\./)+", "", key.replace("\\", "/"))


def group_by_key(key_column: str, headers: dict[Path, pydicom.Dataset], root: Path
                 ) -> dict[str, list[Path]]:
    """Key -> the files that answer to it (in ``headers`` order); files without a key are left
    out."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path, header in headers.items():
        key = file_key(key_column, path, header, root)
        if key:
            groups[key].append(path)
    return groups
