"""A labelled DICOM folder as a classification `Dataset` (see the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from common.spacing_spec import parse_spacing
from common.datasets.base import Dataset, DataError, Split, TaskInfo
from common.datasets.cache import ArrayCache, array_cache
from common.datasets.dicom.header import DicomFileError
from common.datasets.dicom.keys import RowMatch, match_rows
from common.datasets.dicom.options import DEFAULT_TAGS, DicomOptions
from common.datasets.dicom.pixels import parse_window
from common.datasets.dicom.sample import read_sample
from common.datasets.dicom.scan import FolderScan, scan_folder
from common.datasets.labels import LABELS_FILE, Labels, read_labels
from common.datasets.reading import reading

if TYPE_CHECKING:
    from common.config import RunConfig


def load(data_path: str | Path, cfg: RunConfig) -> Dataset:
    """A labelled DICOM folder as a classification `Dataset` (see the package docstring)."""
    return load_folder(Path(data_path), DicomOptions.from_config(cfg))


@dataclass(frozen=True)
class LabelledImages:
    """What a labelled DICOM folder gives, row by row (shared by the loader and validate)."""

    labels: Labels
    scan: FolderScan
    matches: tuple[RowMatch, ...]
    kept: tuple[int, ...]                       # rows that gave an image, in row order
    images: tuple[np.ndarray, ...]              # one per kept row
    skipped_rows: tuple[tuple[int, str, str], ...]  # (row, file or key, reason)


def load_folder(root: Path, opts: DicomOptions, cache: ArrayCache | None = None) -> Dataset:
    root = Path(root).expanduser()
    with reading(root):
        return _load_folder(root, opts, cache)


def _load_folder(root: Path, opts: DicomOptions, cache: ArrayCache | None) -> Dataset:
    if not str(root) or not root.is_dir():
        raise DataError(f"dicom data_path={str(root)!r}: not a folder; expected a folder of "
                        f"DICOM files with a {LABELS_FILE}")
    _check_tags(opts.tags)
    parse_window(opts.window)
    parse_spacing(opts.spacing, opts.spatial_dims)
    labels = read_labels(root / LABELS_FILE)
    found = read_labelled(root, labels, opts, cache or array_cache(opts.cache_dir))
    skipped = [(str(p), reason) for p, reason in found.scan.bad]
    skipped += [(where, reason) for _, where, reason in found.skipped_rows]
    if not found.kept:
        first = "; ".join(f"{w}: {r}" for w, r in skipped[:3])
        raise DataError(f"{root}: none of the {len(labels)} rows of {LABELS_FILE} gave an image "
                        f"(first problems: {first or 'none'})")
    headers = found.scan.headers
    tag_values = [[_tag_value(headers[found.matches[row].files[0]], t) for t in opts.tags]
                  for row in found.kept]
    return _dataset(root, labels, np.array(found.kept), np.stack(found.images),
                    labels.class_ids(),
                    np.array(tag_values, dtype=str).reshape(len(found.kept), len(opts.tags)),
                    opts, tuple(skipped))


def read_labelled(root: Path, labels: Labels, opts: DicomOptions, cache: ArrayCache,
                  scan: FolderScan | None = None) -> LabelledImages:
    """Every labels.csv row read as a sample, or skipped with its reason (the first problem
    raises under ``opts.strict``); ``scan``: the folder's `scan_folder`, if already made."""
    found = scan if scan is not None else scan_folder(root)
    if opts.strict and found.bad:
        raise DicomFileError(*found.bad[0])
    matches = match_rows(labels, found, root)
    kept, images, skipped = [], [], []
    for match in matches:
        try:
            if match.problem is not None:
                raise match.problem
            images.append(read_sample(list(match.files), found.headers, opts, cache))
        except DataError as exc:
            if opts.strict:
                raise
            where = exc.path if isinstance(exc, DicomFileError) else match.key
            skipped.append((match.row, str(where), exc.reason if isinstance(exc, DicomFileError)
                            else str(exc)))
            continue
        kept.append(match.row)
    return LabelledImages(labels, found, tuple(matches), tuple(kept), tuple(images),
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
