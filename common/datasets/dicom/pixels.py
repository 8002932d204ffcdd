"""One DICOM file's pixels: decode, modality LUT, VOI window (or min..max) to [0, 1] float32.

The pipeline is described in the package docstring (`common.datasets.dicom`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom

from common.datasets.dicom.header import DicomFileError, dcmread
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
    ds = dcmread(path)
    values = grey_values(ds, path)
    image = to_unit(values, ds, voi).astype(np.float32)
    return image, _meta(ds, image)


def grey_values(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Grey values after the modality LUT (float64), frames first if multi-frame."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomFileError(path, "no PixelData element (7FE0,0010): not an image "
                                   f"(SOP class {_sop_class(ds)})")
    if photometric not in GREY + COLOUR:
        raise DicomFileError(path, f"PhotometricInterpretation {photometric or '(missing)'!r} "
                                   f"unsupported; expected one of {', '.join(GREY + COLOUR)}")
    arr = _decode(ds, path)
    if photometric in COLOUR:
        if arr.shape[-1] != 3:
            raise DicomFileError(path, f"{photometric} image without 3 samples per pixel "
                                       f"(shape {arr.shape})")
        return arr.astype(np.float64) @ _LUMA
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def _sop_class(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return "unknown" if uid is None else f"{getattr(uid, 'name', uid)}"


def _decode(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise RuntimeError, ValueError, NotImplementedError...
        raise DicomFileError(path, _decode_failure(syntax, exc)) from None


def _decode_failure(syntax: pydicom.uid.UID | None, exc: Exception) -> str:
    detail = f"{type(exc).__name__}: {exc}".strip()
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


def to_unit(values: np.ndarray, ds: pydicom.Dataset, voi: tuple[float, float] | None
            ) -> np.ndarray:
    """Window (given, else the file's) or min..max to [0, 1]; MONOCHROME1 inverted."""
    windowed = _window(values, ds, voi)
    if windowed is None:
        lo, hi = float(values.min()), float(values.max())
        windowed = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    out = np.clip(windowed, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out


def _window(values: np.ndarray, ds: pydicom.Dataset, voi: tuple[float, float] | None
            ) -> np.ndarray | None:
    """pydicom's VOI windowing into [0, 1]; None when there is no (valid) window to apply."""
    from pydicom.pixels import apply_voi_lut

    if voi is None:
        if "WindowCenter" not in ds or "WindowWidth" not in ds:
            return None
        voi = (_first(ds.WindowCenter), _first(ds.WindowWidth))
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


def _first(value) -> float:
    return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                 else value)


def _meta(ds: pydicom.Dataset, image: np.ndarray) -> dict:
    frames = int(image.shape[0]) if image.ndim == 3 else 1
    spacing = pixel_spacing(ds)
    if frames > 1:
        spacing = spacing + (slice_thickness(ds),)
    return {
        "modality": str(ds.get("Modality", "")), "manufacturer": str(ds.get("Manufacturer", "")),
        "rows": int(ds.get("Rows", image.shape[-2])),
        "cols": int(ds.get("Columns", image.shape[-1])), "frames": frames, "spacing": spacing,
        "spacing_missing": missing_spacing(ds, slices=frames > 1),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "sop_uid": str(ds.get("SOPInstanceUID", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
    }
