"""DICOM at the site: read headers and pixels, assemble series, and load a labelled folder.

Pixel pipeline (`read_pixels`, `assemble_series`): decode (pydicom; JPEG, JPEG-LS and JPEG 2000
through the pylibjpeg plugins) -> modality LUT / RescaleSlope+Intercept (stored values become
e.g. Hounsfield units) -> VOI window (the ``window`` argument "CENTER,WIDTH" if given, else the
file's first WindowCenter/WindowWidth, both through pydicom's `apply_voi_lut`; else the image's
own min..max) -> [0, 1] float32, inverted for MONOCHROME1 (so bright is always "dense").
RGB and YBR images are converted to grey (ITU-R BT.601 luma) and take the window or min..max.

Folder layout (`load`): any tree of DICOM files (any extension or none) plus a ``labels.csv``
(see `common.datasets.labels`) whose key column joins rows to files:

* ``SOPInstanceUID`` / ``path`` (relative to the folder): one file per sample; a multi-frame file
  is a volume.
* ``SeriesInstanceUID``: the series' slices, sorted along the slice normal.
* ``StudyInstanceUID``: the study's largest series (most files; ties: smallest UID).

With ``spatial_dims == 3`` a sample is the whole volume; with ``spatial_dims == 2`` it is the
volume's middle slice (middle frame of a multi-frame file). Samples are resized to
``image_size`` per side (3D: stretched to a cube, as MedMNIST 3D does) with MONAI's ``Resize``,
or, with the run setting ``spacing``, resampled to that spacing in mm and padded/cropped about
the centre (`common.datasets.spacing`; a file without its pixel spacing is then a bad file), and
cached by file content (`common.datasets.cache`). Bad files are skipped and listed in
``Dataset.skipped`` unless ``strict``, where the first one raises `DicomFileError`.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from common.config import parse_spacing
from common.datasets.base import Dataset, DataError, Split, TaskInfo
from common.datasets.cache import TAG_FILE, ArrayCache, array_cache
from common.datasets.labels import LABELS_FILE, Labels, read_labels
from common.datasets.spacing import fit_to_spacing

if TYPE_CHECKING:
    from common.config import RunConfig

# Per-sample header values kept for `by-tag:KEYWORD` partitions (plus the one the run asks for).
DEFAULT_TAGS = ("Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName",
                "Modality")
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")   # converted to grey
_VOI_BITS = 16                 # output range of the VOI step: 0 .. 2**16 - 1, then / that
_SPACING_TOLERANCE = 0.1       # a series' slice gaps may differ from the median by 10 %
_LUMA = np.array([0.299, 0.587, 0.114])
_SAMPLE_VERSION = "dicom-sample-1"
# Tags `_pixel_spacing` / `_slice_thickness` read, as error messages name them when absent.
PIXEL_SPACING = "PixelSpacing"
SLICE_SPACING = "SpacingBetweenSlices"
_SPACING_TAGS = {PIXEL_SPACING: "PixelSpacing (0028,0030) nor ImagerPixelSpacing (0018,1164)",
                 SLICE_SPACING: "SpacingBetweenSlices (0018,0088) nor SliceThickness (0018,0050)"}

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


class DicomFileError(DataError):
    """One file cannot be used: not DICOM, truncated, no pixels, undecodable, unsupported."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # keep (path, reason) through pickling (Ray workers, multiprocessing)
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------- reading one file

def _dcmread(path: Path, **kwargs) -> pydicom.Dataset:
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
    header = _dcmread(path, stop_before_pixels=True)
    if len(header) == 0:
        raise DicomFileError(path, "truncated or empty: no data elements after the file meta "
                                   "header")
    size = _size(path)
    deferred = _dcmread(path, defer_size=256)   # large values (pixels) are skipped, not read
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
    keywords `PIXEL_SPACING` / `SLICE_SPACING` whose value was absent and taken as 1.0),
    study_uid, series_uid, sop_uid, photometric.
    """
    path = Path(path)
    voi = parse_window(window)
    ds = _dcmread(path)
    values = _values(ds, path)
    image = _to_unit(values, ds, voi).astype(np.float32)
    return image, _meta(ds, image)


def _values(ds: pydicom.Dataset, path: Path) -> np.ndarray:
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


def _to_unit(values: np.ndarray, ds: pydicom.Dataset, voi: tuple[float, float] | None
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
    spacing = _pixel_spacing(ds)
    if frames > 1:
        spacing = spacing + (_slice_thickness(ds),)
    return {
        "modality": str(ds.get("Modality", "")), "manufacturer": str(ds.get("Manufacturer", "")),
        "rows": int(ds.get("Rows", image.shape[-2])),
        "cols": int(ds.get("Columns", image.shape[-1])), "frames": frames, "spacing": spacing,
        "spacing_missing": _missing_spacing(ds, slices=frames > 1),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "sop_uid": str(ds.get("SOPInstanceUID", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
    }


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


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
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


def _slice_thickness(ds: pydicom.Dataset) -> float:
    value = _slice_thickness_value(ds)
    return 1.0 if value is None else value


def _missing_spacing(ds: pydicom.Dataset, slices: bool) -> tuple[str, ...]:
    """`PIXEL_SPACING` / `SLICE_SPACING` (the latter only if ``slices``) when the file has no
    positive, finite value for it (the readers above then take 1.0 mm, or the invalid value)."""
    row_col = _pixel_spacing_value(ds)
    usable = row_col is not None and all(math.isfinite(v) and v > 0 for v in row_col)
    missing = [] if usable else [PIXEL_SPACING]
    if slices and _slice_thickness_value(ds) is None:
        missing.append(SLICE_SPACING)
    return tuple(missing)


def _require_spacing(path: Path, missing: tuple[str, ...]) -> None:
    """With the run setting ``spacing`` a 1 mm guess would resample to a wrong scale: refuse."""
    if missing:
        tags = "; ".join(f"no usable {_SPACING_TAGS[t]}" for t in missing)
        raise DicomFileError(path, f"{tags}: the run setting spacing needs the image's own pixel "
                                   f"spacing to resample it (spacing='' stretches images instead)")


# --------------------------------------------------------------------------- series

def slice_order(headers: list[pydicom.Dataset], paths: list[Path]
                ) -> tuple[list[int], float]:
    """Indices sorting one series' slices along the slice normal, and the slice spacing (mm).

    Position = ImagePositionPatient . (row x column direction from ImageOrientationPatient).
    Without positions: InstanceNumber order, spacing from SpacingBetweenSlices/SliceThickness.
    """
    if len(headers) == 1:
        return [0], _slice_thickness(headers[0])
    if _positioned(headers):
        orient = np.array([float(v) for v in headers[0].ImageOrientationPatient])
        normal = np.cross(orient[:3], orient[3:])
        pos = np.array([np.dot([float(v) for v in h.ImagePositionPatient], normal)
                        for h in headers])
        order = [int(i) for i in np.argsort(pos, kind="stable")]
        return order, _even_spacing(np.diff(pos[order]), [paths[i] for i in order])
    if all("InstanceNumber" in h for h in headers):
        order = sorted(range(len(headers)), key=lambda i: int(headers[i].InstanceNumber))
        return order, _slice_thickness(headers[0])
    missing = next(p for p, h in zip(paths, headers)
                   if "ImagePositionPatient" not in h and "InstanceNumber" not in h)
    raise DicomFileError(missing, "no ImagePositionPatient/ImageOrientationPatient nor "
                                  "InstanceNumber: cannot order the series' slices")


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
    datasets = [_dcmread(p) for p in paths]
    first = datasets[0]
    for p, ds in zip(paths, datasets):
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise DicomFileError(p, f"SeriesInstanceUID {ds.get('SeriesInstanceUID')} differs "
                                    f"from {paths[0].name}'s {first.get('SeriesInstanceUID')}")
        if (ds.get("Rows"), ds.get("Columns")) != (first.get("Rows"), first.get("Columns")):
            raise DicomFileError(p, f"{ds.get('Rows')}x{ds.get('Columns')} pixels but "
                                    f"{paths[0].name} in the same series has "
                                    f"{first.get('Rows')}x{first.get('Columns')}")
    order, gap = slice_order(datasets, paths)
    if require_spacing:
        _require_spacing(paths[0], _missing_spacing(
            first, slices=len(datasets) == 1 or not _positioned(datasets)))
    slices = []
    for i in order:
        values = _values(datasets[i], paths[i])
        if values.ndim != 2:
            raise DicomFileError(paths[i], f"multi-frame image ({values.shape[0]} frames) inside "
                                           f"a series of single images")
        slices.append(values)
    volume = _to_unit(np.stack(slices), first, voi).astype(np.float32)
    row, col = _pixel_spacing(first)
    return volume, (gap, row, col)


# --------------------------------------------------------------------------- folder scan

def _skip_dir(parent: str, name: str) -> bool:
    return name.startswith(".") or os.path.exists(os.path.join(parent, name, TAG_FILE))


def _candidates(root: Path) -> list[Path]:
    """Every file under root except dotfiles/dot-folders, labels.csv and cache folders."""
    out = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _skip_dir(parent, d))
        for name in sorted(files):
            if name.startswith(".") or name.lower() == LABELS_FILE or name == TAG_FILE:
                continue
            out.append(Path(parent) / name)
    return out


def scan_headers(root: Path) -> tuple[dict[Path, pydicom.Dataset], list[tuple[Path, str]]]:
    """Headers of every readable DICOM file under root, and the bad files with their reason."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a folder of DICOM files with "
                        f"{LABELS_FILE}")
    headers: dict[Path, pydicom.Dataset] = {}
    bad: list[tuple[Path, str]] = []
    for path in _candidates(root):
        try:
            headers[path] = read_header(path)
        except DicomFileError as exc:
            bad.append((path, exc.reason))
    return headers, bad


def scan(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """All DICOM files under ``root`` (any nesting, any extension) and the bad files + reason."""
    headers, bad = scan_headers(root)
    return list(headers), bad


# --------------------------------------------------------------------------- labelled folder

@dataclass(frozen=True)
class DicomOptions:
    """The run-config fields a DICOM load depends on (the registry caches by these)."""

    window: str = ""
    spacing: str = ""
    size: int = 28
    spatial_dims: int = 2
    strict: bool = False
    cache_dir: str = ""
    test_fraction: float = 0.2
    seed: int = 0
    tags: tuple[str, ...] = DEFAULT_TAGS

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "DicomOptions":
        tag = cfg.partition_spec.tag
        tags = DEFAULT_TAGS + ((tag,) if tag and tag not in DEFAULT_TAGS else ())
        return cls(window=cfg.dicom_window, spacing=cfg.spacing, size=cfg.image_size,
                   spatial_dims=cfg.spatial_dims,
                   strict=cfg.strict, cache_dir=cfg.cache_dir, test_fraction=cfg.test_fraction,
                   seed=cfg.seed, tags=tags)


def load(data_path: str | Path, cfg: RunConfig) -> Dataset:
    """A labelled DICOM folder as a classification `Dataset` (see the module docstring)."""
    return load_folder(Path(data_path), DicomOptions.from_config(cfg))


def load_folder(root: Path, opts: DicomOptions) -> Dataset:
    root = Path(root).expanduser()
    if not str(root) or not root.is_dir():
        raise DataError(f"dicom data_path={str(root)!r}: not a folder; expected a folder of "
                        f"DICOM files with a {LABELS_FILE}")
    _check_tags(opts.tags)
    parse_window(opts.window)
    parse_spacing(opts.spacing, opts.spatial_dims)
    labels = read_labels(root / LABELS_FILE)
    headers, bad = scan_headers(root)
    if opts.strict and bad:
        raise DicomFileError(*bad[0])
    skipped: list[tuple[str, str]] = [(str(p), reason) for p, reason in bad]
    groups = _groups(labels.key_column, headers, root)
    cache = array_cache(opts.cache_dir)
    ids = labels.class_ids()
    kept, images, tag_values = [], [], []
    for row, key in enumerate(labels.keys):
        try:
            files = _files_for(key, row, labels, groups, bad, root)
            images.append(_sample(files, headers, opts, cache))
        except DataError as exc:
            if opts.strict:
                raise
            where = exc.path if isinstance(exc, DicomFileError) else key
            skipped.append((str(where), exc.reason if isinstance(exc, DicomFileError)
                            else str(exc)))
            continue
        kept.append(row)
        tag_values.append([_tag_value(headers[files[0]], t) for t in opts.tags])
    if not kept:
        first = "; ".join(f"{w}: {r}" for w, r in skipped[:3])
        raise DataError(f"{root}: none of the {len(labels)} rows of {LABELS_FILE} gave an image "
                        f"(first problems: {first or 'none'})")
    return _dataset(root, labels, np.array(kept), np.stack(images), ids,
                    np.array(tag_values, dtype=str).reshape(len(kept), len(opts.tags)), opts,
                    tuple(skipped))


def _check_tags(tags: tuple[str, ...]) -> None:
    from pydicom.datadict import tag_for_keyword

    for tag in tags:
        if tag_for_keyword(tag) is None:
            raise DataError(f"by-tag:{tag}: {tag!r} is not a DICOM keyword; use one such as "
                            f"{', '.join(DEFAULT_TAGS)}")


def _tag_value(header: pydicom.Dataset, keyword: str) -> str:
    value = header.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value if value is not None else "").strip()


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _groups(key_column: str, headers: dict[Path, pydicom.Dataset], root: Path
            ) -> dict[str, list[Path]]:
    """Key value -> the files it names (sorted paths)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path, header in headers.items():
        key = _relative(path, root) if key_column == "path" else str(header.get(key_column, ""))
        if key:
            groups[key].append(path)
    return groups


def _files_for(key: str, row: int, labels: Labels, groups: dict[str, list[Path]],
               bad: list[tuple[Path, str]], root: Path) -> list[Path]:
    column = labels.key_column
    lookup = re.sub(r"^(\./)+", "", key.replace("\\", "/")) if column == "path" else key
    files = groups.get(lookup)
    if files:
        return files
    line = labels.lines[row] if labels.lines else row + 2
    for path, reason in bad:
        if column == "path" and _relative(path, root) == lookup:
            raise DicomFileError(path, reason)
    raise DataError(f"{LABELS_FILE} line {line}: no readable DICOM file under {root} has "
                    f"{column} {key!r}")


def _sample(files: list[Path], headers: dict[Path, pydicom.Dataset], opts: DicomOptions,
            cache: ArrayCache) -> np.ndarray:
    """One sample's (1, S, S[, S]) float32 image, through the content-keyed cache."""
    if len(files) > 1:
        files = _largest_series(files, headers)
        order, _ = slice_order([headers[f] for f in files], files)
        files = [files[i] for i in order]
    key = (_SAMPLE_VERSION, *files, opts.window, opts.size, opts.spatial_dims)
    target = parse_spacing(opts.spacing, opts.spatial_dims)
    if target is not None:   # appended only when set: keys (and cached arrays) of '' unchanged
        key += ("spacing", target)
    return cache.get_or_compute(key, lambda: _compute_sample(files, opts))


def _largest_series(files: list[Path], headers: dict[Path, pydicom.Dataset]) -> list[Path]:
    series: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        series[str(headers[f].get("SeriesInstanceUID", ""))].append(f)
    uid = min(series, key=lambda u: (-len(series[u]), u))
    return series[uid]


def _compute_sample(files: list[Path], opts: DicomOptions) -> np.ndarray:
    target = parse_spacing(opts.spacing, opts.spatial_dims)
    image, source = _read_sample(files, opts, require_spacing=target is not None)
    if target is None:
        return resize(image, opts.size)
    return fit_to_spacing(image, source, target, opts.size)


def _read_sample(files: list[Path], opts: DicomOptions, require_spacing: bool
                 ) -> tuple[np.ndarray, tuple[float, ...]]:
    """The sample's (H, W) or (D, H, W) image and its spacing in mm, in the same axis order."""
    if opts.spatial_dims == 3 and len(files) > 1:
        return assemble_series(files, opts.window, require_spacing=require_spacing)
    path = files[len(files) // 2]
    image, meta = read_pixels(path, opts.window)
    row_col = tuple(meta["spacing"][:2])
    if opts.spatial_dims == 2:
        if require_spacing:
            _require_spacing(path, tuple(t for t in meta["spacing_missing"] if t == PIXEL_SPACING))
        return (image[image.shape[0] // 2] if image.ndim == 3 else image), row_col
    if image.ndim != 3:
        raise DicomFileError(path, "a single 2D image but spatial_dims=3 needs a volume: "
                                   "key labels.csv by SeriesInstanceUID or "
                                   "StudyInstanceUID, or use multi-frame files")
    if require_spacing:
        _require_spacing(path, meta["spacing_missing"])
    return image, (meta["spacing"][2], *row_col)


def resize(image: np.ndarray, size: int, mode: str = "linear") -> np.ndarray:
    """(H, W) or (D, H, W) -> (1, size, ...) float32 with MONAI's Resize (anti-aliased when
    shrinking); ``mode="nearest"`` for label masks."""
    from monai.transforms import Resize

    dims = image.ndim
    interp = "nearest" if mode == "nearest" else ("bilinear" if dims == 2 else "trilinear")
    transform = Resize((size,) * dims, mode=interp, anti_aliasing=mode != "nearest")
    out = np.asarray(transform(np.ascontiguousarray(image[None], dtype=np.float32)))
    return out.astype(np.float32) if mode == "nearest" else np.clip(out, 0, 1).astype(np.float32)


def _dataset(root: Path, labels: Labels, kept: np.ndarray, images: np.ndarray, ids: np.ndarray,
             tag_values: np.ndarray, opts: DicomOptions,
             skipped: tuple[tuple[str, str], ...]) -> Dataset:
    y = ids[kept]
    tags = {t: tag_values[:, i] for i, t in enumerate(opts.tags)}
    if labels.splits is not None:
        names = np.array(labels.splits)[kept]
    else:
        names = np.where(stratified_test(y, opts.test_fraction, opts.seed), "test", "train")
    parts = {}
    for name in ("train", "val", "test"):
        idx = np.flatnonzero(names == name)
        parts[name] = (Split(images[idx], y[idx], tags={t: v[idx] for t, v in tags.items()})
                       if len(idx) else None)
    if parts["train"] is None:
        raise DataError(f"{root / LABELS_FILE}: no usable 'train' rows (split column)")
    if len(labels.class_names) < 2:
        raise DataError(f"{root / LABELS_FILE}: only one class ({labels.class_names[0]!r}); "
                        f"classification needs at least two")
    n_classes = len(labels.class_names)
    task = TaskInfo(kind="binary" if n_classes == 2 else "multiclass", num_classes=n_classes,
                    spatial_dims=opts.spatial_dims, channels=1, size=opts.size,
                    class_names=labels.class_names)
    return Dataset(f"dicom:{root.name}", task, parts["train"], parts["test"], parts["val"],
                   skipped=skipped)


def stratified_test(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: round(n_c * fraction) random samples of each class c (seeded)."""
    rng = np.random.default_rng([seed, 0xD1C0])
    test = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        where = np.flatnonzero(labels == cls)
        n_test = math.floor(len(where) * fraction + 0.5)
        test[rng.permutation(where)[:n_test]] = True
    return test
