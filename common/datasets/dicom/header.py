"""Reading one DICOM file's header, and the error every DICOM reader raises for an unusable file."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from common.datasets.base import DataError


class DicomFileError(DataError):
    """One file cannot be used: not DICOM, truncated, no pixels, undecodable, unsupported."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # keep (path, reason) through pickling (Ray workers, multiprocessing)
        return (type(self), (self.path, self.reason))


def dcmread(path: Path, **kwargs) -> pydicom.Dataset:
    """`pydicom.dcmread` (no ``force``) with every failure as a `DicomFileError` saying why."""
    try:
        return pydicom.dcmread(path, force=False, **kwargs)
    except InvalidDicomError:
        reason = ("empty file" if _size(path) == 0 else
                  "not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
        raise DicomFileError(path, reason) from None
    except IsADirectoryError:
        raise DicomFileError(path, "a directory, not a file") from None
    except OSError as exc:
        raise DicomFileError(path, f"unreadable ({exc.strerror or exc})") from None
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise DicomFileError(path, f"corrupt DICOM header ({type(exc).__name__}: {exc})") from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def read_header(path: Path) -> pydicom.Dataset:
    """The file's data elements without pixel data; `DicomFileError` if it is not usable DICOM.

    pydicom reads truncated files silently, so the declared element lengths (pixel data
    included) are checked against the file size here.
    """
    path = Path(path)
    header = dcmread(path, stop_before_pixels=True)
    if len(header) == 0:
        raise DicomFileError(path, "truncated or empty: no data elements after the file meta "
                                   "header")
    size = _size(path)
    deferred = dcmread(path, defer_size=256)   # large values (pixels) are skipped, not read
    for ds in (header, deferred):
        end = _declared_end(ds)
        if end > size:
            raise DicomFileError(path, f"truncated: {size} bytes but its elements need {end}")
    return header


def _declared_end(ds: pydicom.Dataset) -> int:
    """Largest ``offset + length`` over the top-level elements that are still raw."""
    end = 0
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", 0)
        if tell is not None and length != 0xFFFFFFFF:
            end = max(end, tell + length)
    return end
