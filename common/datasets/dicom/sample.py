"""One labelled sample: its files read as a 2D image or 3D volume, resized or resampled, cached
by file content."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom

from common.spacing_spec import parse_spacing
from common.datasets.base import DataError
from common.datasets.cache import ArrayCache
from common.datasets.dicom.header import DicomFileError
from common.datasets.dicom.options import DicomOptions
from common.datasets.dicom.pixels import read_pixels, require_finite, unexpected
from common.datasets.dicom.series import assemble_series, slice_order
from common.datasets.dicom.spacing import PIXEL_SPACING, refuse_missing_spacing
from common.datasets.resize import resize
from common.datasets.spacing import fit_to_spacing

_SAMPLE_VERSION = "dicom-sample-1"


def read_sample(files: list[Path], headers: dict[Path, pydicom.Dataset], opts: DicomOptions,
                cache: ArrayCache) -> np.ndarray:
    """One sample's (1, S, S[, S]) float32 image, through the content-keyed cache.

    Every failure is a `DataError`; one naming a file is a `DicomFileError` (an error no check
    foresaw too: the sample is skipped, never the whole folder). The image is checked finite
    and of the declared shape after preprocessing, cached or not.
    """
    try:
        if len(files) > 1:
            files = _largest_series(files, headers)
            order, _ = slice_order([headers[f] for f in files], files)
            files = [files[i] for i in order]
        key = (_SAMPLE_VERSION, *files, opts.window, opts.size, opts.spatial_dims)
        target = parse_spacing(opts.spacing, opts.spatial_dims)
        if target is not None:   # appended only when set: keys (cached arrays) of '' unchanged
            key += ("spacing", target)
        image = cache.get_or_compute(key, lambda: _compute_sample(files, opts))
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad sample is one named, skipped sample
        raise DicomFileError(files[len(files) // 2], unexpected(exc)) from None
    _check_image(image, files, opts)
    return image


def _check_image(image: np.ndarray, files: list[Path], opts: DicomOptions) -> None:
    path = files[len(files) // 2]
    expected = (1,) + (opts.size,) * opts.spatial_dims
    if image.shape != expected:
        raise DicomFileError(path, f"preprocessed to shape {image.shape}, expected {expected}")
    require_finite(path, image, "preprocessing (resize / resampling)")


def _largest_series(files: list[Path], headers: dict[Path, pydicom.Dataset]) -> list[Path]:
    series: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        series[str(headers[f].get("SeriesInstanceUID", ""))].append(f)
    uid = min(series, key=lambda u: (-len(series[u]), u))
    return series[uid]


def _compute_sample(files: list[Path], opts: DicomOptions) -> np.ndarray:
    target = parse_spacing(opts.spacing, opts.spatial_dims)
    image, source = _read_image(files, opts, require_spacing=target is not None)
    if target is None:
        return resize(image, opts.size)
    try:
        return fit_to_spacing(image, source, target, opts.size)
    except DicomFileError:
        raise
    except DataError as exc:                   # an implausible spacing: name the file
        raise DicomFileError(files[len(files) // 2], str(exc)) from None


def _read_image(files: list[Path], opts: DicomOptions, require_spacing: bool
                ) -> tuple[np.ndarray, tuple[float, ...]]:
    """The sample's (H, W) or (D, H, W) image and its spacing in mm, in the same axis order."""
    if opts.spatial_dims == 3 and len(files) > 1:
        return assemble_series(files, opts.window, require_spacing=require_spacing)
    path = files[len(files) // 2]
    image, meta = read_pixels(path, opts.window)
    row_col = tuple(meta["spacing"][:2])
    if opts.spatial_dims == 2:
        if require_spacing:
            refuse_missing_spacing(path, tuple(t for t in meta["spacing_missing"]
                                               if t == PIXEL_SPACING))
        return (image[image.shape[0] // 2] if image.ndim == 3 else image), row_col
    if image.ndim != 3:
        raise DicomFileError(path, "a single 2D image but spatial_dims=3 needs a volume: "
                                   "key labels.csv by SeriesInstanceUID or "
                                   "StudyInstanceUID, or use multi-frame files")
    if require_spacing:
        refuse_missing_spacing(path, meta["spacing_missing"])
    return image, (meta["spacing"][2], *row_col)
