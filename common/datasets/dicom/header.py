"""Reading one DICOM file's header, and the error every DICOM reader raises for an unusable file.

`read_header` converts every element (nested sequences included) while it still can say which
file is bad, so later readers (the PHI count, the loader's tag values) never meet a raw element
pydicom cannot decode, such as an unknown VR code.
"""

from __future__ import annotations

import re
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
    size = _size(path)
    # First with large values (pixels) skipped, not read: declared lengths are checked against
    # the file size before anything is allocated for them.
    _check_lengths(path, dcmread(path, defer_size=256), size)
    header = dcmread(path, stop_before_pixels=True)
    if len(header) == 0:
        raise DicomFileError(path, "truncated or empty: no data elements after the file meta "
                                   "header")
    _check_lengths(path, header, size)
    check_transfer_syntax(header, path)
    _convert_all(header, path)
    return header


def read_dataset(path: Path) -> pydicom.Dataset:
    """The whole file (pixels included) with every header element decoded; `DicomFileError`
    naming the element (or the transfer syntax) that is not usable."""
    path = Path(path)
    ds = dcmread(path)
    check_transfer_syntax(ds, path)
    _convert_all(ds, path)
    return ds


def _check_lengths(path: Path, ds: pydicom.Dataset, size: int) -> None:
    """Every still-raw top-level element ends inside the file. The element that overruns it
    tells a cut-short copy (a dictionary element, e.g. PixelData, running past the end) from
    bytes inserted or overwritten inside an element (parsing then meets a tag or VR DICOM does
    not define, with a nonsense length)."""
    worst = None
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", 0)
        if tell is not None and length != 0xFFFFFFFF and tell + length > size:
            if worst is None or tell + length > worst[1] + worst[2]:
                worst = (tag, tell, length, str(getattr(elem, "VR", "") or ""))
    if worst is None:
        return
    tag, tell, length, vr = worst
    where = f"element {_tag_name(tag)} at byte {tell}"
    if not _plausible(tag, vr):
        what = (f"its VR {vr!r} is not one this element has" if vr in _KNOWN_VRS
                else "its VR code is not one DICOM defines")
        raise DicomFileError(path, f"corrupt header: {where} is not a valid element ({what}) and "
                                   f"declares {length} bytes of a {size}-byte file: bytes were "
                                   f"inserted or overwritten inside the header (not a cut-short "
                                   f"copy); re-export the file")
    raise DicomFileError(path, f"truncated: {size} bytes but {where} needs {tell + length}; the "
                               f"copy was cut short, copy the file again")


def _plausible(tag: int, vr: str) -> bool:
    """A tag the DICOM dictionary knows, with one of its VRs (or a private tag with a VR)."""
    from pydicom.datadict import dictionary_has_tag, dictionary_VR

    if tag >> 16 & 1:                                  # private group: any defined VR
        return vr in _KNOWN_VRS
    if not dictionary_has_tag(tag):
        return False
    return vr in dictionary_VR(tag).replace(" ", "").split("or")


def check_transfer_syntax(ds: pydicom.Dataset, path: Path) -> None:
    """`DicomFileError` for a TransferSyntaxUID (0002,0010) that is empty or not a transfer
    syntax (absent is allowed: pydicom then guesses the encoding)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return
    value = str(meta.get("TransferSyntaxUID") or "").strip(" \0")
    if not value:
        raise DicomFileError(path, "TransferSyntaxUID (0002,0010) is empty: the file meta does "
                                   "not say how the data is encoded; re-export the file")
    if value not in pydicom.uid.AllTransferSyntaxes:
        raise DicomFileError(path, f"TransferSyntaxUID (0002,0010) {value!r} is not a DICOM "
                                   f"transfer syntax (e.g. 1.2.840.10008.1.2.1 Explicit VR "
                                   f"Little Endian); the file meta is corrupt; re-export the file")


_KNOWN_VRS = frozenset(vr.value for vr in pydicom.valuerep.VR)
_UNKNOWN_VR = re.compile(r"Unknown Value Representation '([^']*)'.*?(\(\w{4},\w{4}\))")


def _convert_all(ds: pydicom.Dataset, path: Path) -> None:
    """Decode every element now (nested sequences too); a value pydicom cannot decode makes the
    file a `DicomFileError` naming the element."""
    try:
        for _ in ds.iterall():
            pass
    except Exception as exc:  # noqa: BLE001 - NotImplementedError (VR), ValueError, ...
        found = _UNKNOWN_VR.search(str(exc))
        if found:
            vr, tag = found.groups()
            raise DicomFileError(path, f"unknown value representation (VR) code {vr!r} in "
                                       f"element {tag}{_keyword(tag)}: DICOM does not define "
                                       f"it, so the header is corrupt; re-export the "
                                       f"file") from None
        raise DicomFileError(path, f"a header element cannot be decoded ({type(exc).__name__}: "
                                   f"{exc})") from None


def _tag_name(tag: int) -> str:
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return text + _keyword(text)


def _keyword(tag_text: str) -> str:
    from pydicom.datadict import keyword_for_tag

    try:
        keyword = keyword_for_tag(int(tag_text.strip("()").replace(",", ""), 16))
    except ValueError:
        return ""
    return f" {keyword}" if keyword else ""
