"""Validating a DICOM folder with labels.csv: every file decoded and every row matched the way
the loader (`common.datasets.dicom`) will, PHI counted, and the aggregate statistics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.check import Check
from client.phi import count_phi
from client.validation.checks import (
    bad_files_check, class_balance, histogram, names, relative, uniform_check,
)
from client.validation.manifest import reason_category, spacing_bin
from common.datasets.base import DataError


@dataclass(frozen=True)
class _Image:
    """What validation keeps of one decodable DICOM file: no pixels; the UIDs only to count
    studies and series (they never reach the manifest)."""

    modality: str
    manufacturer: str
    size: str
    spacing_mm: float | None
    study_uid: str
    series_uid: str


def validate_dicom(root: Path, window: str, strict: bool, spacing: str = ""
                   ) -> tuple[list[Check], dict, dict[str, int]]:
    """(checks, manifest statistics, PHI counts) of a DICOM site's folder. Every labelled
    sample goes through the loader's own row matching and preprocessing (``window``,
    ``spacing``; 2D, nothing cached), so the sample count is the one training loads."""
    from common.datasets.dicom.scan import scan_folder
    from common.datasets.labels import LABELS_FILE

    if not root.is_dir():
        return [Check("data folder", "error", f"{root} is not a folder; a DICOM site needs a "
                                              f"folder of DICOM files with {LABELS_FILE}")], {}, {}
    labels, labels_check = _read_labels(root)
    found = scan_folder(root)
    headers = found.headers
    images, undecodable = _decode_all(headers, window)
    bad = found.bad + undecodable
    n_files = len(headers) + len(found.bad)
    bad_rel = [(relative(p, root), reason) for p, reason in bad]
    checks = [labels_check, _files_check(len(images), n_files),
              bad_files_check(bad_rel, n_files, strict)]
    class_counts: dict[str, int] = {}
    used = images                # the images training reads: the labelled ones, if labels load
    if labels is not None:
        read = _read_like_training(root, labels, found, window, spacing)
        matching, class_counts, used = _match_labels(labels, read, images, root, strict)
        checks += matching
    checks += [_modality_check(used), _size_check(used)]
    if labels is not None:
        checks.append(class_balance(class_counts, "labelled, readable"))
    phi = count_phi(headers.values())
    checks.append(_phi_check(phi, len(headers)))
    return checks, _dicom_stats(used, len(images), bad, class_counts, labels, n_files), phi


def _read_labels(root: Path):
    from common.datasets.labels import LABELS_FILE, read_labels

    path = root / LABELS_FILE
    if not path.is_file():
        return None, Check("labels file", "error",
                           f"{path} not found; a DICOM site needs {LABELS_FILE} with a key column "
                           f"(path | SOPInstanceUID | SeriesInstanceUID | StudyInstanceUID) and a "
                           f"'label' column")
    try:
        labels = read_labels(path)
    except DataError as exc:
        return None, Check("labels file", "error", str(exc))
    splits = f", splits {histogram(Counter(labels.splits))}" if labels.splits else ""
    return labels, Check("labels file", "ok",
                         f"{len(labels)} row(s) keyed by {labels.key_column}, "
                         f"{len(labels.class_names)} class(es){splits}")


def _decode_all(headers: dict, window: str
                ) -> tuple[dict[Path, _Image], list[tuple[Path, str]]]:
    """Decode every file's pixels as training will: the images, and the files that fail."""
    from common.datasets.dicom.header import DicomFileError
    from common.datasets.dicom.pixels import read_pixels

    images: dict[Path, _Image] = {}
    bad: list[tuple[Path, str]] = []
    for path, header in headers.items():
        try:
            _, meta = read_pixels(path, window)
        except DicomFileError as exc:
            bad.append((path, exc.reason))
            continue
        images[path] = _image(header, meta)
    return images, bad


def _image(header, meta: dict) -> _Image:
    size = f"{meta['rows']}x{meta['cols']}"
    if meta["frames"] > 1:
        size += f"x{meta['frames']} frames"
    has_spacing = any(k in header for k in ("PixelSpacing", "ImagerPixelSpacing",
                                            "SharedFunctionalGroupsSequence"))
    spacing = float(np.mean(meta["spacing"][:2])) if has_spacing else None
    return _Image(meta["modality"] or "unknown", meta["manufacturer"].strip() or "unknown", size,
                  spacing, meta["study_uid"], meta["series_uid"])


def _files_check(n_images: int, total: int) -> Check:
    if n_images == 0:
        return Check("DICOM images", "error",
                     f"no readable DICOM image among {total} file(s)")
    return Check("DICOM images", "ok", f"{n_images} of {total} file(s) decode as DICOM images")


def _read_like_training(root: Path, labels, found, window: str, spacing: str):
    """The loader's `read_labelled` over the already scanned folder, caching nothing."""
    from common.datasets.cache import NullCache
    from common.datasets.dicom.loader import read_labelled
    from common.datasets.dicom.options import DicomOptions

    return read_labelled(root, labels, DicomOptions(window=window, spacing=spacing),
                         NullCache(), scan=found)


def _match_labels(labels, read, images: dict[Path, _Image], root: Path, strict: bool
                  ) -> tuple[list[Check], dict[str, int], dict[Path, _Image]]:
    """Orphan images, label rows that give no sample (fatal to a strict training run), per-class
    counts of the rows that do, and the images those rows read: the loader's own outcome."""
    from common.datasets.dicom.keys import relative_path

    column = labels.key_column
    named = {f for m in read.matches if m.problem is None for f in m.files}
    unlabelled = sorted(relative_path(p, root) for p in images if p not in named)
    reasons = {row: _row_reason(read.matches[row].key, where, reason, root)
               for row, where, reason in read.skipped_rows}
    missing = [f"{read.matches[row].key} (line {read.matches[row].line})"
               + (f": {why}" if why else "") for row, why in reasons.items()]
    skip = "strict: training would stop" if strict else "training skips them"
    checks = [_orphans("images without labels", unlabelled, len(images),
                       f"readable image(s) have no row in labels.csv (by {column}); training "
                       f"ignores them"),
              _orphans("labels without images", missing, len(labels),
                       f"labels.csv row(s) give no sample ({skip})",
                       "error" if strict else "warning")]
    usable = list(read.kept)
    checks.append(_usable_check(labels, usable))
    counts = Counter(labels.labels[i] for i in usable)
    files = {f for row in usable for f in read.matches[row].files}
    used = {p: images[p] for p in images if p in files}
    return checks, {name: counts.get(name, 0) for name in _class_order(labels)}, used


def _row_reason(key: str, where: str, reason: str, root: Path) -> str:
    """A skipped row's reason for the report: '' for a plain orphan (no such file), else the
    file at fault (when not the key itself) and the reason, without the 'labels.csv line N:'
    prefix and the data folder's path."""
    if "no readable DICOM file under" in reason:
        return ""
    reason = reason.replace(str(root).rstrip("/") + "/", "")
    head, sep, rest = reason.partition(": ")
    reason = rest if sep and head.startswith("labels.csv line") else reason
    shown = relative(Path(where), root) if where != key else ""
    return f"{shown}: {reason}" if shown else reason


def _class_order(labels) -> list[str]:
    """Class names as labels.csv spells them (integer classes: '1' and '01' are one class)."""
    if labels.integer_labels:
        spelled = {int(lab): lab for lab in labels.labels}
        return [spelled[int(name)] for name in labels.class_names]
    return list(labels.class_names)


def _usable_check(labels, usable: list[int]) -> Check:
    """Errors the DICOM loader would stop on: no usable row, one class, no training row."""
    name, column = "labelled images", labels.key_column
    if not usable:
        return Check(name, "error", f"none of the {len(labels)} labels.csv row(s) matches a "
                                    f"readable image by {column}; check the key column")
    if len(labels.class_names) < 2:
        return Check(name, "error", f"labels.csv has one class ({labels.class_names[0]!r}); "
                                    f"classification needs at least two")
    if labels.splits is not None and not any(labels.splits[i] == "train" for i in usable):
        return Check(name, "error", f"no usable row has split 'train' (usable rows: "
                                    f"{histogram(Counter(labels.splits[i] for i in usable))})")
    return Check(name, "ok", f"{len(usable)} sample(s) to train on")


def _orphans(name: str, items: list[str], total: int, what: str,
             status: str = "warning") -> Check:
    if not items:
        return Check(name, "ok", f"none (of {total})")
    return Check(name, status, f"{len(items)} of {total} {what}: {names(items)}")


def _modality_check(images: dict[Path, _Image]) -> Check:
    counts = Counter(im.modality for im in images.values())
    multi = Counter({m: n for m, n in counts.items() if "\\" in m})
    if multi:                      # Modality (0008,0060) has one value in DICOM
        return Check("modalities", "warning",
                     f"{sum(multi.values())} file(s) with a multi-valued Modality (0008,0060): "
                     f"{histogram(multi)}; DICOM allows one value per file: fix the export (the "
                     f"files are used); all: {histogram(counts)}")
    return uniform_check("modalities", counts,
                         "mixed modalities ({histogram}); a model usually needs one; keep one "
                         "modality per site, or check the labels.csv rows")


def _size_check(images: dict[Path, _Image]) -> Check:
    return uniform_check("image sizes", Counter(im.size for im in images.values()),
                         "{n} different sizes ({histogram}); images are resized to one size for "
                         "training, which distorts differing aspect ratios")


def _phi_check(phi: dict[str, int], n_files: int) -> Check:
    if not phi:
        return Check("patient identifiers", "ok",
                     f"no PHI attributes with a value in {n_files} header(s)")
    files = max(phi.values())
    return Check("patient identifiers", "warning",
                 f"{len(phi)} PHI attribute(s) present in up to {files} of {n_files} file(s) "
                 f"(table below); they stay at this site")


def _dicom_stats(used: dict[Path, _Image], n_images: int, bad: list[tuple[Path, str]],
                 class_counts: dict[str, int], labels, n_files: int) -> dict:
    """The shareable aggregate statistics of a DICOM site (no UIDs, names or header values
    beyond modality / manufacturer); image statistics cover the images training uses."""
    values = list(used.values())
    return {
        "files": {"total": n_files, "images": n_images, "used": len(values),
                  "skipped": len(bad),
                  "skipped_by_reason": dict(Counter(reason_category(r) for _, r in bad))},
        "studies": len({im.study_uid for im in values if im.study_uid}),
        "series": len({im.series_uid for im in values if im.series_uid}),
        "samples": sum(class_counts.values()),
        "label_key": labels.key_column if labels is not None else None,
        "labels": class_counts,
        "splits": dict(Counter(labels.splits)) if labels is not None and labels.splits else {},
        "modalities": dict(Counter(im.modality for im in values)),
        "manufacturers": dict(Counter(im.manufacturer for im in values)),
        "image_sizes": dict(Counter(im.size for im in values)),
        "pixel_spacing_mm": dict(Counter(spacing_bin(im.spacing_mm) for im in values)),
    }
