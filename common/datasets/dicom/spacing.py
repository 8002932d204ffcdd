"""A DICOM file's pixel spacing and slice thickness in mm, and which of them it does not give.

Readers take 1.0 mm for a spacing the file lacks; with the run setting ``spacing`` (resampling to
mm) such a guess would give a wrong scale, so `refuse_missing_spacing` refuses the file instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import pydicom

from common.datasets.dicom.header import DicomFileError

# Tags `pixel_spacing` / `slice_thickness` read, as error messages name them when absent.
PIXEL_SPACING = "PixelSpacing"
SLICE_SPACING = "SpacingBetweenSlices"
_SPACING_TAGS = {PIXEL_SPACING: "PixelSpacing (0028,0030) nor ImagerPixelSpacing (0018,1164)",
                 SLICE_SPACING: "SpacingBetweenSlices (0018,0088) nor SliceThickness (0018,0050)"}


def _functional(ds: pydicom.Dataset, sequence: str, keyword: str):
    """A value from the enhanced multi-frame shared functional groups, or None."""
    try:
        return getattr(getattr(ds.SharedFunctionalGroupsSequence[0], sequence)[0], keyword)
    except (AttributeError, IndexError):
        return None


def _pixel_spacing_value(ds: pydicom.Dataset) -> tuple[float, float] | None:
    value = (ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
             or _functional(ds, "PixelMeasuresSequence", "PixelSpacing"))
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        return None


def pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    """(row, column) spacing in mm; 1.0 where the file does not say."""
    value = _pixel_spacing_value(ds)
    return (1.0, 1.0) if value is None else value


def _slice_thickness_value(ds: pydicom.Dataset) -> float | None:
    for value in (ds.get("SpacingBetweenSlices"), ds.get("SliceThickness"),
                  _functional(ds, "PixelMeasuresSequence", "SpacingBetweenSlices"),
                  _functional(ds, "PixelMeasuresSequence", "SliceThickness")):
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def slice_thickness(ds: pydicom.Dataset) -> float:
    """Slice spacing in mm from SpacingBetweenSlices / SliceThickness; 1.0 where absent."""
    value = _slice_thickness_value(ds)
    return 1.0 if value is None else value


def missing_spacing(ds: pydicom.Dataset, slices: bool) -> tuple[str, ...]:
    """`PIXEL_SPACING` / `SLICE_SPACING` (the latter only if ``slices``) when the file has no
    positive, finite value for it (the readers above then take 1.0 mm, or the invalid value)."""
    row_col = _pixel_spacing_value(ds)
    usable = row_col is not None and all(math.isfinite(v) and v > 0 for v in row_col)
    missing = [] if usable else [PIXEL_SPACING]
    if slices and _slice_thickness_value(ds) is None:
        missing.append(SLICE_SPACING)
    return tuple(missing)


def refuse_missing_spacing(path: Path, missing: tuple[str, ...]) -> None:
    """With the run setting ``spacing`` a 1 mm guess would resample to a wrong scale: refuse."""
    if missing:
        tags = "; ".join(f"no usable {_SPACING_TAGS[t]}" for t in missing)
        raise DicomFileError(path, f"{tags}: the run setting spacing needs the image's own pixel "
                                   f"spacing to resample it (spacing='' stretches images instead)")
