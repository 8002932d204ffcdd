"""Checking an ``.npz`` file before numpy allocates anything for it.

`numpy.load` trusts each member's ``.npy`` header: a member declaring shape (10**11, 1) makes it
allocate 93 GiB before it notices the data is 12 bytes long, and a file that is not a zip at all
is tried as a pickle ("This file contains pickled (object) data"), which says nothing useful
about a text file someone named ``.npz``. `check_npz` reads only the zip directory and each
member's header and refuses, naming the file and the member:

* a file that is not a zip archive (saying what it looks like: empty, text, a single ``.npy``
  array, gzip, other bytes);
* a member whose header is unreadable, holds Python objects (pickles), or declares more (or
  fewer) bytes than the member holds;
* a member whose declared size is impossible for its compressed size (deflate compresses at
  most about 1032:1), and arrays that together need more than this machine's memory (a zip
  bomb with honest headers), before anything is inflated.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from tokenize import TokenError   # numpy parses a header dict with tokenize

import numpy as np

from common.datasets.base import DataError

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")   # a local file header, or an empty archive
_NPY_MAGIC = b"\x93NUMPY"
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DEFLATE_RATIO = 1100


def check_npz(path: Path, expected: str) -> None:
    """`DataError` unless ``path`` is a zip whose ``.npy`` members' headers match their sizes.

    ``expected`` describes the wanted content for messages (e.g. "keys train_images, ...").
    """
    path = Path(path)
    head = _head(path)
    if head.startswith(_NPY_MAGIC):
        raise DataError(f"{path}: a single .npy array, not an .npz archive; expected {expected}")
    if not head.startswith(_ZIP_MAGIC):
        raise DataError(f"{path}: not a readable .npz archive: {_looks_like(head)}; expected a "
                        f"zip of .npy arrays with {expected}")
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(_check_member(path, archive, info) for info in archive.infolist()
                        if info.filename.endswith(".npy"))
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path}: not a readable .npz archive: a damaged zip ({exc}); the file "
                        f"may be cut short (copy it again); expected {expected}") from None
    memory = physical_memory()
    if memory and total > memory:
        raise DataError(f"{path}: its arrays need {total / 2**30:.1f} GiB, more than this "
                        f"machine's {memory / 2**30:.1f} GiB of memory; use a smaller file (or a "
                        f"machine with more memory)")


def physical_memory() -> int:
    """Bytes of RAM (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(64)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _looks_like(head: bytes) -> str:
    """What a file starting with ``head`` is, in words."""
    if not head:
        return "an empty file"
    if head.startswith(_GZIP_MAGIC):
        return "a gzip file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.splitlines()[0] if text.strip() else text
        return f"a text file (it starts {first[:40]!r})"
    return f"not a zip archive (it starts with the bytes {head[:8].hex(' ')})"


def _check_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """The member's array size in bytes, after checking its header against the archive."""
    name = info.filename
    if (info.compress_type != zipfile.ZIP_STORED and info.compress_size
            and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 4096):
        raise DataError(f"{path}: member {name} claims {info.file_size} bytes from "
                        f"{info.compress_size} compressed, more than compression can give; the "
                        f"archive is corrupt (or a zip bomb)")
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            header_bytes = member.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TokenError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: member {name} has no readable .npy header "
                        f"({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: member {name} holds Python objects (pickled data); an .npz "
                        f"for training holds plain numbers (uint8 images, integer labels)")
    declared = math.prod(shape) * dtype.itemsize
    held = info.file_size - header_bytes
    if declared != held:
        raise DataError(f"{path}: member {name} declares shape {tuple(shape)} of {dtype} "
                        f"({declared} bytes) but holds {held} bytes of data; the header does "
                        f"not match the array (corrupt or hand-edited file)")
    return declared
