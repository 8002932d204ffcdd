"""Content-addressed cache of preprocessed arrays (decoded, windowed, resampled DICOM / NIfTI).

Decoding and resampling medical images is slow; hashing their bytes is fast. A cache entry's key
is the sha256 of the *content* of every input file plus the preprocessing parameters, so a second
run over the same files reads ``.npy`` files instead, and editing a file (or a parameter) misses
the cache without any invalidation logic. Entries are written atomically (temporary file, then
``os.replace``), so a crashed or concurrent writer (several Ray workers) never leaves a partial
entry under a real name; an unreadable entry is recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.datasets.base import DataError

CACHE_VERSION = "1"        # bump when the meaning of a cached array changes
TAG_FILE = "CACHEDIR.TAG"  # standard marker (bford.info/cachedir): backup tools and `scan` skip it
_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
             "# This file marks fedclinic's preprocessed-array cache; its contents can be "
             "deleted at any time.\n")
_CHUNK = 1 << 20


def default_cache_root(cache_dir: str = "") -> Path:
    """``cache_dir`` if given, else ``$FEDCLINIC_CACHE/arrays``, else
    ``$XDG_CACHE_HOME/fedclinic/arrays``, else ``~/.cache/fedclinic/arrays``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("FEDCLINIC_CACHE"):
        return Path(os.environ["FEDCLINIC_CACHE"]).expanduser() / "arrays"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedclinic" / "arrays"


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                h.update(block)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file to hash it ({exc.strerror or exc})") from None
    return h.hexdigest()


def cache_key(key_parts: tuple) -> str:
    """sha256 over the parts: a `Path` stands for its file's content, anything else for its repr."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for part in key_parts:
        h.update(b"\x00")
        if isinstance(part, Path):
            h.update(b"file:" + file_digest(part).encode())
        elif isinstance(part, bytes):
            h.update(b"bytes:" + hashlib.sha256(part).hexdigest().encode())
        else:
            h.update(b"value:" + repr(part).encode())
    return h.hexdigest()


class ArrayCache:
    """``.npy`` files under ``root`` named by `cache_key`, fanned out as ``ab/abcd....npy``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get_or_compute(self, key_parts: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key_parts``, or ``compute()``'s result after storing it."""
        target = self.path_for(cache_key(key_parts))
        cached = self._read(target)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        value = np.asarray(compute())
        if value.dtype == object:
            raise DataError(f"cannot cache an object array (key {key_parts!r})")
        self._write(target, value)
        return value

    @staticmethod
    def _read(target: Path) -> np.ndarray | None:
        if not target.is_file():
            return None
        try:
            return np.load(target, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None   # partial or foreign file: recompute and overwrite

    def _write(self, target: Path, value: np.ndarray) -> None:
        try:
            self._ensure_root()
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=target.parent)
        except OSError:
            return   # read-only or full cache: preprocessing still works, just not cached
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, value, allow_pickle=False)
            os.replace(tmp, target)
        except OSError:
            Path(tmp).unlink(missing_ok=True)

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tag = self.root / TAG_FILE
        if not tag.exists():
            tag.write_text(_TAG_TEXT)


class NullCache(ArrayCache):
    """Computes every time and stores nothing: `fedclinic site validate` preprocesses each sample
    exactly as training does without writing a cache a run with other settings never reads."""

    def __init__(self) -> None:
        super().__init__(Path(os.devnull))

    def get_or_compute(self, key_parts: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        self.misses += 1
        return np.asarray(compute())


def array_cache(cache_dir: str = "") -> ArrayCache:
    """The cache a run with ``cfg.cache_dir == cache_dir`` uses."""
    return ArrayCache(default_cache_root(cache_dir))
