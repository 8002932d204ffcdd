"""Which input file was being read when an error nobody foresaw escaped.

Every reader checks what it can and raises `DataError` naming the file; per-file readers also
turn an unforeseen error into a named, skipped file. What is left (a bug, or a library failing
in a new way outside a per-file step) escapes as it is, but with a note naming the file or
folder being read, so `fedclinic`'s one-line error (fedclinic/cli/errors.py) still says where.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.datasets.base import DataError

NOTE_PREFIX = "while reading "


@contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Add the note ``"while reading PATH"`` to any non-`DataError` exception escaping the block
    (the innermost `reading` wins: an outer one adds nothing)."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:
        if not reading_note(exc):
            exc.add_note(f"{NOTE_PREFIX}{path}")
        raise


def reading_note(exc: BaseException) -> str:
    """The ``"while reading PATH"`` note `reading` added to ``exc``, or ''."""
    return next((n for n in getattr(exc, "__notes__", ()) if n.startswith(NOTE_PREFIX)), "")
