"""A site's state files (privacy ledger, replay cache, audit log, local report) readable by its
owner alone: files 0600 and folders 0700 whatever the umask, written atomically and durably.

Kept free of torch and Flower so the resident executor and the audit log can use it cheaply.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path, tighten: bool = False) -> Path:
    """``path`` as a folder: the folders this creates (``path`` and missing parents) are
    `PRIVATE_DIR` whatever the umask; with ``tighten`` an existing ``path`` is made so too.
    Existing parents are left as they are (they may be shared, e.g. a home folder)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        os.chmod(folder, PRIVATE_DIR)
    if tighten and path.stat().st_mode & 0o777 != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in ``path`` durable (POSIX: fsync the folder itself)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` by ``data`` atomically: a temporary file with a unique name (concurrent
    writers never share one) gets exactly ``mode``, is fsync'd, renamed over ``path``, and the
    folder is fsync'd so the new name survives a power cut. Readers see the old or the new file,
    never half of one. Missing parent folders are created `PRIVATE_DIR`."""
    private_dir(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
