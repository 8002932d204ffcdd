"""One DICOM file's pixels: decode, modality LUT, VOI window (or min..max) to [0, 1] float32.

The pipeline is described in the package docstring (`common.datasets.dicom`). A value that would
make the image wrong is a `DicomFileError` naming the file and the element, never a NaN image:
RescaleSlope / RescaleIntercept that are not one finite number (or a slope of 0), a modality LUT
that cannot be applied, a file WindowCenter / WindowWidth that is not a finite number (the run's
``dicom_window`` overrides it), and any non-finite value after the LUT or the window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom

from common.datasets.dicom.header import DicomFileError, check_transfer_syntax, read_dataset
from common.datasets.dicom.spacing import missing_spacing, pixel_spacing, slice_thickness

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")   # converted to grey
_VOI_BITS = 16                 # output range of the VOI step: 0 .. 2**16 - 1, then / that
_LUMA = np.array([0.299, 0.587, 0.114])

_JPEG = "pylibjpeg-libjpeg"
_J2K = "pylibjpeg-openjpeg"
_DECODERS = {
    pydicom.uid.JPEGBaseline8Bit: _JPEG, pydicom.uid.JPEGExtended12Bit: _JPEG,
    pydicom.uid.JPEGLossless: _JPEG, pydicom.uid.JPEGLosslessSV1: _JPEG,
    pydicom.uid.JPEGLSLossless: _JPEG, pydicom.uid.JPEGLSNearLossless: _JPEG,
    pydicom.uid.JPEG2000Lossless: _J2K, pydicom.uid.JPEG2000: _J2K,
    pydicom.uid.HTJ2KLossless: _J2K, pydicom.uid.HTJ2KLosslessRPCL: _J2K, pydicom.uid.HTJ2K: _J2K,
    pydicom.uid.RLELossless: "pylibjpeg-rle",
}


def parse_window(window: str) -> tuple[float, float] | None:
    """``"40,400"`` -> (40.0, 400.0); ``""`` -> None."""
    if not window.strip():
        return None
    from common.config import ConfigError

    parts = window.split(",")
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"dicom_window={window!r}: expected 'CENTER,WIDTH' in stored units "
                          f"after rescale, e.g. '40,400' (CT soft tissue)") from None
    if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
        raise ConfigError(f"dicom_window={window!r}: width must be a finite number >= 1")
    return center, width


def read_pixels(path: Path, window: str = "") -> tuple[np.ndarray, dict]:
    """Float32 image in [0, 1]: (H, W), or (frames, H, W) for a multi-frame file, plus meta.

    meta: modality, manufacturer, rows, cols, frames, spacing ((row, col) or, for multi-frame
    files, (row, col, slice) in mm; 1.0 where the file does not say), spacing_missing (the
    keywords `spacing.PIXEL_SPACING` / `spacing.SLICE_SPACING` whose value was absent and taken
    as 1.0), study_uid, series_uid, sop_uid, photometric.
    """
    path = Path(path)
    voi = parse_window(window)
    ds = read_dataset(path)
    try:
        values = grey_values(ds, path)
        image = to_unit(values, ds, voi, path).astype(np.float32)
        return image, _meta(ds, image)
    except (DicomFileError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad file is one named, skipped file
        raise DicomFileError(path, unexpected(exc)) from None


def unexpected(exc: Exception) -> str:
    """The reason of a file skipped for an error no check foresaw (tests count these as bugs)."""
    return (f"unexpected error while reading it ({type(exc).__name__}: {exc}); the file is "
            f"skipped; please report it with the file's header (no pixels needed)")


def require_finite(path: Path, values: np.ndarray, stage: str) -> None:
    """`DicomFileError` if any of ``values`` is NaN or infinite after ``stage``."""
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise DicomFileError(path, f"{bad} of {values.size} pixel values are NaN or infinite "
                                   f"after {stage}; the image would train as garbage")


def grey_values(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Grey values after the modality LUT (float64), frames first if multi-frame."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomFileError(path, "no PixelData element (7FE0,0010): not an image "
                                   f"(SOP class {_sop_class(ds)})")
    if not any(ds.get(k) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomFileError(path, "PixelData (7FE0,0010) is empty: the file has no pixels")
    if photometric not in GREY + COLOUR:
        raise DicomFileError(path, f"PhotometricInterpretation {photometric or '(missing)'!r} "
                                   f"unsupported; expected one of {', '.join(GREY + COLOUR)}")
    arr = _decode(ds, path)
    if photometric in COLOUR:
        if arr.shape[-1] != 3:
            raise DicomFileError(path, f"{photometric} image without 3 samples per pixel "
                                       f"(shape {arr.shape})")
        values = arr.astype(np.float64) @ _LUMA
    else:
        values = _modality_lut(arr, ds, path)
    require_finite(path, values, "decoding and the modality LUT (rescale)")
    return values


def _modality_lut(arr: np.ndarray, ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Stored values -> modality values (e.g. HU), after checking the rescale tags."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" not in ds:
        for keyword, tag in (("RescaleSlope", "(0028,1053)"), ("RescaleIntercept", "(0028,1052)")):
            if keyword in ds:
                _rescale_value(ds, keyword, tag, path)
    try:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - pydicom: IndexError, TypeError, ValueError...
        raise DicomFileError(path, f"the modality LUT (ModalityLUTSequence (0028,3000)) cannot be "
                                   f"applied ({type(exc).__name__}: {exc}); its LUTDescriptor / "
                                   f"LUTData are corrupt") from None


def _rescale_value(ds: pydicom.Dataset, keyword: str, tag: str, path: Path) -> float:
    raw = ds.get(keyword)
    shown = _shown(raw)
    try:
        value = float(raw) if not isinstance(raw, (list, pydicom.multival.MultiValue)) else None
    except (TypeError, ValueError):
        value = None
    if value is None or not math.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
        why = ("0 would make every pixel the same value" if value == 0
               else "expected one finite number")
        raise DicomFileError(path, f"{keyword} {tag} is {shown}; {why} (stored value x "
                                   f"RescaleSlope + RescaleIntercept gives e.g. Hounsfield units); "
                                   f"fix the export or remove the element")
    return value


def _shown(raw) -> str:
    """A header value as the file spells it, for a message (multi-values with ``\\``)."""
    if raw is None or raw == "":
        return "empty"
    return f"'{_text(raw)}'"


def _sop_class(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return "unknown" if uid is None else f"{getattr(uid, 'name', uid)}"


def _decode(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    check_transfer_syntax(ds, path)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise RuntimeError, ValueError, NotImplementedError...
        raise DicomFileError(path, _decode_failure(syntax, exc)) from None


def _decode_failure(syntax: pydicom.uid.UID | str | None, exc: Exception) -> str:
    detail = f"{type(exc).__name__}: {exc}".strip()
    if syntax is not None and str(syntax) not in pydicom.uid.AllTransferSyntaxes:
        return (f"pixel data does not decode: TransferSyntaxUID {str(syntax)!r} is not a DICOM "
                f"transfer syntax ({detail})")
    syntax = None if syntax is None else pydicom.uid.UID(str(syntax))
    if syntax is None or not syntax.is_compressed:
        what = "no transfer syntax" if syntax is None else f"{syntax.name} ({syntax})"
        return (f"pixel data does not decode ({what}): {detail}; the file may be truncated or "
                f"Rows/Columns/BitsAllocated may not match the data")
    package = _DECODERS.get(syntax, "python-gdcm")
    alternative = "" if package == "python-gdcm" else " or python-gdcm"
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        return (f"compressed transfer syntax {syntax.name} ({syntax}) cannot be decoded: no "
                f"decoder installed; install {package}{alternative} (pip install {package})")
    return (f"compressed transfer syntax {syntax.name} ({syntax}) failed to decode with the "
            f"installed decoder ({detail}); the pixel data may be corrupt, or try another "
            f"decoder: {package}{alternative}")


def to_unit(values: np.ndarray, ds: pydicom.Dataset, voi: tuple[float, float] | None,
            path: Path | None = None) -> np.ndarray:
    """Window (given, else the file's) or min..max to [0, 1]; MONOCHROME1 inverted. With
    ``path``, a file window that is not a finite number, or a non-finite result, is a
    `DicomFileError` naming it."""
    where = Path(path) if path is not None else Path(str(ds.get("filename", "") or "?"))
    windowed = _window(values, ds, voi, where)
    if windowed is None:
        lo, hi = float(values.min()), float(values.max())
        windowed = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    require_finite(where, windowed, "windowing")
    out = np.clip(windowed, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out


def _window(values: np.ndarray, ds: pydicom.Dataset, voi: tuple[float, float] | None,
            path: Path) -> np.ndarray | None:
    """pydicom's VOI windowing into [0, 1]; None when there is no (valid) window to apply."""
    from pydicom.pixels import apply_voi_lut

    if voi is None:
        if "WindowCenter" not in ds or "WindowWidth" not in ds:
            return None
        voi = (_file_window(ds, "WindowCenter", "(0028,1050)", path),
               _file_window(ds, "WindowWidth", "(0028,1051)", path))
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper() or "LINEAR"
    else:
        function = "LINEAR"
    # The values are already rescaled: describe them to pydicom as plain unsigned 16-bit data so
    # its output range is 0 .. 2**16 - 1 whatever the file's bit depth and rescale.
    params = pydicom.Dataset()
    params.PhotometricInterpretation = "MONOCHROME2"
    params.BitsStored, params.PixelRepresentation = _VOI_BITS, 0
    params.WindowCenter, params.WindowWidth = voi
    params.VOILUTFunction = function
    try:
        return apply_voi_lut(values, params, prefer_lut=False) / (2 ** _VOI_BITS - 1)
    except ValueError:
        return None   # invalid window in the file (e.g. width < 1): fall back to min..max


def _file_window(ds: pydicom.Dataset, keyword: str, tag: str, path: Path) -> float:
    """The file's first WindowCenter / WindowWidth value; `DicomFileError` unless it is a finite
    number (the run setting ``dicom_window`` replaces the file's window)."""
    raw = ds.get(keyword)
    first = raw[0] if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) and raw else raw
    try:
        value = float(first)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DicomFileError(path, f"{keyword} {tag} is {_shown(raw)}, not a finite number; set "
                                   f"the run's dicom_window (CENTER,WIDTH, e.g. --dicom-window "
                                   f"40,400) to override the file's window, or fix the export")
    return value


def _meta(ds: pydicom.Dataset, image: np.ndarray) -> dict:
    frames = int(image.shape[0]) if image.ndim == 3 else 1
    spacing = pixel_spacing(ds)
    if frames > 1:
        spacing = spacing + (slice_thickness(ds),)
    return {
        "modality": _text(ds.get("Modality", "")),
        "manufacturer": _text(ds.get("Manufacturer", "")),
        "rows": int(ds.get("Rows", image.shape[-2])),
        "cols": int(ds.get("Columns", image.shape[-1])), "frames": frames, "spacing": spacing,
        "spacing_missing": missing_spacing(ds, slices=frames > 1),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "sop_uid": str(ds.get("SOPInstanceUID", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
    }


def _text(value) -> str:
    """A header value as the file spells it: multi-values joined with ``\\`` (``CT\\MR``)."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value if value is not None else "")
