"""One DICOM series: its slices in order along the slice normal, and the assembled volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from common.datasets.base import DataError
from common.datasets.dicom.header import DicomFileError, read_dataset
from common.datasets.dicom.pixels import grey_values, parse_window, to_unit
from common.datasets.dicom.spacing import (
    missing_spacing, pixel_spacing, refuse_missing_spacing, slice_thickness,
)

_SPACING_TOLERANCE = 0.1       # a series' slice gaps may differ from the median by 10 %


def slice_order(headers: list[pydicom.Dataset], paths: list[Path]
                ) -> tuple[list[int], float]:
    """Indices sorting one series' slices along the slice normal, and the slice spacing (mm).

    Position = ImagePositionPatient . (row x column direction from ImageOrientationPatient).
    Without positions: InstanceNumber order, spacing from SpacingBetweenSlices/SliceThickness.
    """
    if len(headers) == 1:
        return [0], slice_thickness(headers[0])
    if _positioned(headers):
        normal = _slice_normal(headers[0], paths[0])
        pos = np.array([np.dot(_numbers(h, "ImagePositionPatient", 3, p), normal)
                        for h, p in zip(headers, paths)])
        order = [int(i) for i in np.argsort(pos, kind="stable")]
        return order, _even_spacing(np.diff(pos[order]), [paths[i] for i in order])
    if all("InstanceNumber" in h for h in headers):
        numbers = [_instance_number(h, p) for h, p in zip(headers, paths)]
        order = sorted(range(len(headers)), key=lambda i: numbers[i])
        return order, slice_thickness(headers[0])
    missing = next(p for p, h in zip(paths, headers)
                   if "ImagePositionPatient" not in h and "InstanceNumber" not in h)
    raise DicomFileError(missing, "no ImagePositionPatient/ImageOrientationPatient nor "
                                  "InstanceNumber: cannot order the series' slices")


_TAGS = {"ImagePositionPatient": "(0020,0032)", "ImageOrientationPatient": "(0020,0037)",
         "InstanceNumber": "(0020,0013)"}


def _numbers(header: pydicom.Dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    """``count`` finite numbers from a multi-valued header element, else `DicomFileError`."""
    raw = header.get(keyword)
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        shown = "\\".join(str(v) for v in raw) if isinstance(raw, (list, MultiValue)) else raw
        raise DicomFileError(path, f"{keyword} {_TAGS[keyword]} is {str(shown or '')!r}; "
                                   f"expected {count} finite numbers: cannot place the slice "
                                   f"in its series")
    return np.array(values)


def _slice_normal(header: pydicom.Dataset, path: Path) -> np.ndarray:
    orient = _numbers(header, "ImageOrientationPatient", 6, path)
    normal = np.cross(orient[:3], orient[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise DicomFileError(path, f"ImageOrientationPatient (0020,0037) "
                                   f"{tuple(orient.tolist())}: the row and column directions are "
                                   f"zero or parallel, so there is no slice normal")
    return normal / length


def _instance_number(header: pydicom.Dataset, path: Path) -> int:
    try:
        return int(header.InstanceNumber)
    except (TypeError, ValueError):
        raise DicomFileError(path, f"InstanceNumber (0020,0013) is "
                                   f"{str(header.get('InstanceNumber', ''))!r}, not an integer: "
                                   f"cannot order the series' slices") from None


def _positioned(headers: list[pydicom.Dataset]) -> bool:
    return all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers)


def _even_spacing(gaps: np.ndarray, ordered: list[Path]) -> float:
    if np.any(gaps < 1e-4):
        i = int(np.argmax(gaps < 1e-4))
        raise DataError(f"series of {ordered[0].parent}: {ordered[i].name} and "
                        f"{ordered[i + 1].name} are at the same position; the series holds "
                        f"more than one acquisition (split it by AcquisitionNumber)")
    spacing = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - spacing)))
    if abs(gaps[worst] - spacing) > _SPACING_TOLERANCE * spacing:
        raise DataError(f"series of {ordered[0].parent}: uneven slice spacing, {gaps[worst]:.3g} "
                        f"mm between {ordered[worst].name} and {ordered[worst + 1].name} but "
                        f"{spacing:.3g} mm elsewhere (missing slices?)")
    return spacing


def assemble_series(paths: list[Path], window: str = "", *, require_spacing: bool = False
                    ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """One series' slices as a (slices, H, W) float32 volume in [0, 1] and its spacing.

    The spacing is in the volume's axis order: (slice, row, column), in mm. The window (or
    min..max) is applied to the whole volume at once, so all slices share one intensity scale.
    A spacing the files do not give is taken as 1.0 mm, or with ``require_spacing`` raises
    `DicomFileError` naming the first file and the missing tag.
    """
    if not paths:
        raise DataError("assemble_series: no files given")
    paths = [Path(p) for p in paths]
    voi = parse_window(window)
    datasets = [read_dataset(p) for p in paths]
    first = datasets[0]
    _check_alike(paths, datasets)
    order, gap = slice_order(datasets, paths)
    if require_spacing:
        refuse_missing_spacing(paths[0], missing_spacing(
            first, slices=len(datasets) == 1 or not _positioned(datasets)))
    slices = []
    for i in order:
        values = grey_values(datasets[i], paths[i])
        if values.ndim != 2:
            raise DicomFileError(paths[i], f"multi-frame image ({values.shape[0]} frames) inside "
                                           f"a series of single images")
        slices.append(values)
    volume = to_unit(np.stack(slices), first, voi, paths[0]).astype(np.float32)
    row, col = pixel_spacing(first)
    return volume, (gap, row, col)


def _check_alike(paths: list[Path], datasets: list[pydicom.Dataset]) -> None:
    """Every file is of the first one's series and has its Rows x Columns."""
    first = datasets[0]
    for p, ds in zip(paths, datasets):
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise DicomFileError(p, f"SeriesInstanceUID {ds.get('SeriesInstanceUID')} differs "
                                    f"from {paths[0].name}'s {first.get('SeriesInstanceUID')}")
        if (ds.get("Rows"), ds.get("Columns")) != (first.get("Rows"), first.get("Columns")):
            raise DicomFileError(p, f"{ds.get('Rows')}x{ds.get('Columns')} pixels but "
                                    f"{paths[0].name} in the same series has "
                                    f"{first.get('Rows')}x{first.get('Columns')}")
