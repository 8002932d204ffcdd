"""`fedclinic site validate DATA_DIR`: check a hospital's data before the site joins a federation.

Every file is opened the way training will open it, and each problem is reported as a `Check`
with a verdict: ``error`` (the site cannot train: `fedclinic site` refuses to start), ``warning``
(training runs but skips or mistrusts something) or ``ok``. The report also counts, per DICOM
attribute, the files that carry patient identifiers (values are never read out).

The manifest (`write_manifest`) holds aggregate statistics only, meant to be shared with the
consortium: counts per class, modality, manufacturer, image size and binned pixel spacing, study /
series / file counts and skipped files by reason category. It never holds a UID, a file name or
a header value that identifies a patient, clinician or hospital.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from client.phi import count_phi
from common.datasets.base import DataError
from fedclinic import __version__

STATUSES = ("ok", "warning", "error")
LAYOUTS = ("auto", "dicom", "msd", "medmnist")
DEFAULT_MANIFEST = "manifest.json"
LISTED = 5                       # names shown per check before "... and N more"
# Pixel-spacing bin edges in mm: "<0.1", "0.1-0.2", ..., ">=5"
SPACING_EDGES_MM = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")   # DICOM UIDs, also inside decoder messages


@dataclass(frozen=True)
class Check:
    name: str
    status: str                  # one of STATUSES
    detail: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name!r}: status {self.status!r}; expected one of "
                             f"{', '.join(STATUSES)}")


@dataclass(frozen=True)
class ValidationReport:
    data_dir: str
    layout: str
    checks: tuple[Check, ...]
    manifest: dict
    phi: dict[str, int]          # PHI keyword -> number of files with a non-empty value

    @property
    def errors(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "error")

    @property
    def warnings(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        """The human report: one line per check, the PHI table, and the verdict."""
        lines = [f"fedclinic site validate: {self.data_dir} (layout: {self.layout})", ""]
        width = max((len(c.name) for c in self.checks), default=0)
        marks = {"ok": "OK   ", "warning": "WARN ", "error": "ERROR"}
        lines += [f"  [{marks[c.status]}] {c.name.ljust(width)}  {c.detail}" for c in self.checks]
        lines += self._render_phi()
        lines += ["", self._verdict()]
        return "\n".join(lines)

    def _render_phi(self) -> list[str]:
        if not self.phi:
            return []
        width = max(len(k) for k in self.phi)
        rows = [f"    {k.ljust(width)}  {n} file(s)" for k, n in self.phi.items()]
        return ["", "Patient identifiers (PHI) found in DICOM headers (values not shown):", *rows,
                "  These identifiers must not leave this site. fedclinic shares only model "
                "updates and the aggregate manifest, never headers; remove them with your "
                "de-identification tool (DICOM PS3.15 basic profile) before any data export."]

    def _verdict(self) -> str:
        n_err, n_warn = len(self.errors), len(self.warnings)
        if n_err:
            return (f"FAILED: {n_err} error(s), {n_warn} warning(s); fix the errors before this "
                    f"site joins a federation.")
        if n_warn:
            return f"PASSED with {n_warn} warning(s): the site can train; review the warnings."
        return "PASSED: no problems found."


# --------------------------------------------------------------------------- entry point

def validate_site_data(data_dir: Path, layout: str = "auto", window: str = "",
                       strict: bool = False) -> ValidationReport:
    """Check the site's data folder (or MedMNIST ``.npz`` file) the way training will read it.

    ``layout``: one of `LAYOUTS` ("auto" detects it). ``window``: DICOM VOI window
    "CENTER,WIDTH" or "" (checked up front: a bad value raises ConfigError). ``strict``: bad
    image files become errors instead of warnings, as they would stop a strict training run.
    """
    if layout not in LAYOUTS:
        raise DataError(f"layout={layout!r}: unknown; expected one of {', '.join(LAYOUTS)}")
    from common.datasets.dicom import parse_window

    parse_window(window)
    data_dir = Path(data_dir).expanduser()
    if not data_dir.exists():
        check = Check("data folder", "error", f"{data_dir} does not exist")
        return _report(data_dir, layout, [check], {}, {})
    detected, check = _layout(data_dir, layout)
    if detected is None:
        return _report(data_dir, layout, [check], {}, {})
    validator = {"dicom": _validate_dicom, "msd": _validate_msd,
                 "medmnist": _validate_medmnist}[detected]
    checks, stats, phi = validator(data_dir, window, strict)
    return _report(data_dir, detected, [check, *checks], stats, phi)


def _layout(data_dir: Path, layout: str) -> tuple[str | None, Check]:
    if layout != "auto":
        return layout, Check("layout", "ok", f"{layout} (as requested)")
    from common.datasets.layout import detect_layout

    try:
        found = detect_layout(data_dir)
    except DataError as exc:
        return None, Check("layout", "error", f"{exc} (or pass --layout)")
    return found, Check("layout", "ok", f"{found} (detected)")


def _report(data_dir: Path, layout: str, checks: list[Check], stats: dict,
            phi: dict[str, int]) -> ValidationReport:
    manifest = {
        "fedclinic_version": __version__,
        "layout": layout,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "valid": not any(c.status == "error" for c in checks),
        "errors": sum(c.status == "error" for c in checks),
        "warnings": sum(c.status == "warning" for c in checks),
        **stats,
    }
    return ValidationReport(str(data_dir), layout, tuple(checks), manifest, dict(phi))


# --------------------------------------------------------------------------- shared helpers

def _names(items: list[str], limit: int = LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _histogram(counter: Counter) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(counter.items(), key=lambda kv: (-kv[1],
                                                                                     kv[0])))


def _bad_files_check(bad: list[tuple[str, str]], total: int, strict: bool,
                     what: str = "file") -> Check:
    """The skipped files, each named with its reason (error under strict)."""
    if not bad:
        return Check(f"bad {what}s", "ok", f"none of {total} {what}(s)")
    status = "error" if strict else "warning"
    consequence = "strict: training would stop" if strict else "training skips them"
    listed = "; ".join(f"{name}: {reason}" for name, reason in bad[:LISTED])
    more = f"; ... and {len(bad) - LISTED} more" if len(bad) > LISTED else ""
    return Check(f"bad {what}s", status,
                 f"{len(bad)} of {total} {what}(s) unusable ({consequence}): {listed}{more}")


def reason_category(reason: str) -> str:
    """A shareable, identifier-free summary of a skip reason: the text before its first ':',
    '(', ';' or '[', with UIDs and numbers removed (so byte counts do not split categories)."""
    head = re.split(r"[:(;[]", reason, maxsplit=1)[0]
    head = _UID.sub("", head)
    head = re.sub(r"\d+", "N", head)
    return " ".join(head.split()) or "other"


def _class_balance(counts: dict[str, int], where: str) -> Check:
    few = [f"{name!r}: {n}" for name, n in counts.items() if n < 2]
    summary = _histogram(Counter(counts)) or "no samples"
    if few:
        return Check("class balance", "warning",
                     f"class(es) with fewer than 2 {where} samples ({', '.join(few)}); a class "
                     f"needs samples to both train and test on; all: {summary}")
    return Check("class balance", "ok", summary)


def spacing_bin(mm: float | None) -> str:
    """Pixel-spacing histogram bin (see SPACING_EDGES_MM) of one in-plane spacing."""
    if mm is None or not np.isfinite(mm) or mm <= 0:
        return "unknown"
    edges = SPACING_EDGES_MM
    if mm < edges[0]:
        return f"<{edges[0]:g}"
    for lo, hi in zip(edges, edges[1:]):
        if mm < hi:
            return f"{lo:g}-{hi:g}"
    return f">={edges[-1]:g}"


# --------------------------------------------------------------------------- DICOM folders

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


def _validate_dicom(root: Path, window: str, strict: bool
                    ) -> tuple[list[Check], dict, dict[str, int]]:
    from common.datasets.dicom import scan_headers
    from common.datasets.labels import LABELS_FILE

    if not root.is_dir():
        return [Check("data folder", "error", f"{root} is not a folder; a DICOM site needs a "
                                              f"folder of DICOM files with {LABELS_FILE}")], {}, {}
    labels, labels_check = _read_labels(root)
    headers, unread = scan_headers(root)
    images, undecodable = _decode_all(headers, window)
    bad = unread + undecodable
    n_files = len(headers) + len(unread)
    rel = {p: p.relative_to(root).as_posix() for p in headers}
    bad_rel = [(_rel(p, root), reason) for p, reason in bad]
    checks = [labels_check, _files_check(len(images), n_files),
              _bad_files_check(bad_rel, n_files, strict)]
    class_counts: dict[str, int] = {}
    used = images                # the images training reads: the labelled ones, if labels load
    if labels is not None:
        matching, class_counts, used = _match_labels(labels, images, headers, rel, strict)
        checks += matching
    checks += [_modality_check(used), _size_check(used)]
    if labels is not None:
        checks.append(_class_balance(class_counts, "labelled, readable"))
    phi = count_phi(headers.values())
    checks.append(_phi_check(phi, len(headers)))
    return checks, _dicom_stats(used, len(images), bad, class_counts, labels, n_files), phi


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


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
    splits = f", splits {_histogram(Counter(labels.splits))}" if labels.splits else ""
    return labels, Check("labels file", "ok",
                         f"{len(labels)} row(s) keyed by {labels.key_column}, "
                         f"{len(labels.class_names)} class(es){splits}")


def _decode_all(headers: dict, window: str
                ) -> tuple[dict[Path, _Image], list[tuple[Path, str]]]:
    """Decode every file's pixels as training will: the images, and the files that fail."""
    from common.datasets.dicom import DicomFileError, read_pixels

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


def _file_key(key_column: str, header, rel: str) -> str:
    """The labels.csv key a file answers to (same rules as the DICOM loader)."""
    if key_column == "path":
        return rel
    return str(header.get(key_column, "") or "").strip()


def _normalise_key(key: str, key_column: str) -> str:
    if key_column != "path":
        return key
    return re.sub(r"^(\./)+", "", key.replace("\\", "/"))


def _match_labels(labels, images: dict[Path, _Image], headers: dict, rel: dict[Path, str],
                  strict: bool) -> tuple[list[Check], dict[str, int], dict[Path, _Image]]:
    """Orphan images, orphan label rows (fatal to a strict training run), per-class counts of
    the usable rows, and the images those rows select."""
    column = labels.key_column
    wanted = {_normalise_key(k, column): i for i, k in enumerate(labels.keys)}
    file_keys = {p: _file_key(column, headers[p], rel[p]) for p in images}
    unlabelled = sorted(rel[p] for p, key in file_keys.items() if key not in wanted)
    found = set(file_keys.values())
    missing = [(labels.lines[i] if labels.lines else i + 2, k)
               for k, i in wanted.items() if k not in found]
    skip = "strict: training would stop" if strict else "training skips them"
    checks = [_orphans("images without labels", unlabelled, len(images),
                       f"readable image(s) have no row in labels.csv (by {column}); training "
                       f"ignores them"),
              _orphans("labels without images", [f"{k} (line {line})" for line, k in missing],
                       len(labels), f"labels.csv row(s) match no readable image ({skip})",
                       "error" if strict else "warning")]
    usable = [i for k, i in wanted.items() if k in found]
    checks.append(_usable_check(labels, usable))
    counts = Counter(labels.labels[i] for i in usable)
    used = {p: images[p] for p, key in file_keys.items() if key in wanted}
    return checks, {name: counts.get(name, 0) for name in _class_order(labels)}, used


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
                                    f"{_histogram(Counter(labels.splits[i] for i in usable))})")
    return Check(name, "ok", f"{len(usable)} sample(s) to train on")


def _orphans(name: str, items: list[str], total: int, what: str,
             status: str = "warning") -> Check:
    if not items:
        return Check(name, "ok", f"none (of {total})")
    return Check(name, status, f"{len(items)} of {total} {what}: {_names(items)}")


def _modality_check(images: dict[Path, _Image]) -> Check:
    counts = Counter(im.modality for im in images.values())
    if len(counts) > 1:
        return Check("modalities", "warning",
                     f"mixed modalities ({_histogram(counts)}); a model usually needs one; "
                     f"keep one modality per site, or check the labels.csv rows")
    return Check("modalities", "ok", _histogram(counts) or "no images")


def _size_check(images: dict[Path, _Image]) -> Check:
    counts = Counter(im.size for im in images.values())
    if len(counts) > 1:
        return Check("image sizes", "warning",
                     f"{len(counts)} different sizes ({_histogram(counts)}); images are resized "
                     f"to one size for training, which distorts differing aspect ratios")
    return Check("image sizes", "ok", _histogram(counts) or "no images")


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


# --------------------------------------------------------------------------- MSD folders

@dataclass(frozen=True)
class _Case:
    """One training case as training reads it: its volume shape, spacing and mask classes."""

    shape: str
    spacing_mm: float | None
    label_values: tuple[int, ...]


def _validate_msd(root: Path, window: str, strict: bool
                  ) -> tuple[list[Check], dict, dict[str, int]]:
    from common.datasets.msd import read_manifest

    if not root.is_dir():
        return [Check("data folder", "error", f"{root} is not a folder; an MSD site needs "
                                              f"dataset.json, imagesTr/ and labelsTr/")], {}, {}
    try:
        manifest = read_manifest(root)
    except DataError as exc:
        return [Check("dataset.json", "error", str(exc))], {}, {}
    cases, bad = _read_cases(root, manifest)
    total = len(manifest.cases)
    names = manifest.class_names
    counts = {name: sum(i in c.label_values for c in cases) for i, name in enumerate(names)}
    checks = [Check("dataset.json", "ok",
                    f"{manifest.name}: {total} training case(s), classes "
                    f"{', '.join(f'{i}={n}' for i, n in enumerate(names))}, channels "
                    f"{', '.join(manifest.modalities)}"),
              _cases_check(len(cases), total),
              _bad_files_check(bad, total, strict, "case"),
              _msd_size_check(cases), _class_balance(counts, "training-case")]
    return checks, _msd_stats(manifest, cases, bad, counts), {}


def _read_cases(root: Path, manifest) -> tuple[list[_Case], list[tuple[str, str]]]:
    """Every training case read exactly as training reads it; the unusable ones with reasons."""
    from common.datasets.msd import read_case

    cases, bad = [], []
    for image_path, label_path in manifest.cases:
        try:
            image, mask = read_case(image_path, label_path, len(manifest.class_names),
                                    len(manifest.modalities))
        except DataError as exc:
            bad.append((_rel(image_path, root), _strip_paths(str(exc), root)))
            continue
        shape = "x".join(map(str, image.shape[1:]))
        cases.append(_Case(shape, _nifti_spacing(image_path),
                           tuple(int(v) for v in np.unique(mask))))
    return cases, bad


def _strip_paths(message: str, root: Path) -> str:
    """A loader message with the data folder's path removed (names stay relative)."""
    return message.replace(str(root).rstrip("/") + "/", "")


def _nifti_spacing(path: Path) -> float | None:
    """Mean in-plane voxel size in mm from the NIfTI header (header only, cheap)."""
    import nibabel as nib

    try:
        zooms = nib.load(str(path)).header.get_zooms()[:2]
    except Exception:  # noqa: BLE001 - the case already read; spacing is only a statistic
        return None
    return float(np.mean(zooms)) if len(zooms) == 2 else None


def _cases_check(n_ok: int, total: int) -> Check:
    if n_ok == 0:
        return Check("training cases", "error", f"none of the {total} training case(s) is usable")
    return Check("training cases", "ok", f"{n_ok} of {total} case(s) readable with matching "
                                         f"masks")


def _msd_size_check(cases: list[_Case]) -> Check:
    counts = Counter(c.shape for c in cases)
    return Check("volume sizes", "ok", f"(D x H x W) {_histogram(counts)}" if counts
                 else "no cases")


def _msd_stats(manifest, cases: list[_Case], bad: list[tuple[str, str]],
               counts: dict[str, int]) -> dict:
    return {
        "cases": {"total": len(manifest.cases), "usable": len(cases), "skipped": len(bad),
                  "skipped_by_reason": dict(Counter(reason_category(_after_name(r))
                                                    for _, r in bad))},
        "labels": counts,
        "modalities": {m: len(cases) for m in manifest.modalities},
        "image_sizes": dict(Counter(c.shape for c in cases)),
        "pixel_spacing_mm": dict(Counter(spacing_bin(c.spacing_mm) for c in cases)),
    }


def _after_name(message: str) -> str:
    """'imagesTr/x.nii.gz: not found' -> 'not found' (the manifest names no files)."""
    head, sep, rest = message.partition(": ")
    return rest if sep and ("/" in head or "." in head) else message


# --------------------------------------------------------------------------- MedMNIST files

def _validate_medmnist(path: Path, window: str, strict: bool
                       ) -> tuple[list[Check], dict, dict[str, int]]:
    from common.datasets.medmnist import read_npz

    npz, problem = _find_npz(path)
    if npz is None:
        return [Check("npz file", "error", problem)], {}, {}
    try:
        data = read_npz(npz)
    except DataError as exc:
        return [Check("npz file", "error", str(exc))], {}, {}
    splits = {"train": data.train, "val": data.val, "test": data.test}
    sizes = {k: 0 if s is None else len(s) for k, s in splits.items()}
    task = data.task
    checks = [Check("npz file", "ok", f"{npz.name}: {task.kind}, {task.num_classes} classes, "
                                      f"{task.spatial_dims}D {task.size}px, {task.channels} "
                                      f"channel(s)"),
              _splits_check(sizes)]
    names = task.class_names or tuple(str(i) for i in range(task.num_classes))
    per_split = {k: _class_counts(data.class_labels(s), names) for k, s in splits.items()
                 if s is not None and len(s)}
    checks.append(_class_balance(per_split.get("train", {}), "train"))
    side = "x".join([str(task.size)] * task.spatial_dims)
    stats = {"task_kind": task.kind, "samples": sizes, "labels": per_split,
             "image_sizes": {side: sum(sizes.values())}, "channels": task.channels}
    return checks, stats, {}


def _find_npz(path: Path) -> tuple[Path | None, str]:
    """The .npz file itself, or a folder's only .npz file; else (None, what is wrong)."""
    if path.is_file():
        return path, ""
    found = sorted(path.glob("*.npz"))
    if len(found) == 1:
        return found[0], ""
    what = (f"{len(found)} .npz files ({_names([f.name for f in found])})" if found
            else "no .npz file")
    return None, (f"{path}: {what}; expected exactly one MedMNIST .npz file, or pass the file "
                  f"itself")


def _splits_check(sizes: dict[str, int]) -> Check:
    summary = ", ".join(f"{k} {n}" for k, n in sizes.items())
    if sizes["train"] == 0:
        return Check("splits", "error", f"train split is empty ({summary})")
    empty = [k for k in ("val", "test") if sizes[k] == 0]
    if empty:
        return Check("splits", "warning", f"empty {' and '.join(empty)} split ({summary}); the "
                                          f"site cannot report a local test score")
    return Check("splits", "ok", summary)


def _class_counts(labels: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(names))
    return {names[i] if i < len(names) else str(i): int(n) for i, n in enumerate(counts)}


# --------------------------------------------------------------------------- manifest + CLI

def write_manifest(report: ValidationReport, path: Path) -> None:
    """Write the report's aggregate manifest as JSON, atomically (temporary file + rename)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.manifest, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `fedclinic site validate`."""
    parser.add_argument("data_dir", metavar="DATA_DIR", type=Path,
                        help="the site's data: a DICOM folder with labels.csv, an MSD folder "
                             "with dataset.json, or a MedMNIST .npz file (default: required)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="how DATA_DIR is organised; auto detects it (default: auto)")
    parser.add_argument("--window", default="", metavar="CENTER,WIDTH",
                        help="DICOM VOI window in stored units after rescale, e.g. '40,400'; '' "
                             "= each file's own window (default: '')")
    parser.add_argument("--strict", action="store_true",
                        help="treat unusable image files and labels.csv rows without an image as "
                             "errors, as a strict training run would (default: off, they are "
                             "warnings)")
    parser.add_argument("--manifest", default=DEFAULT_MANIFEST, metavar="PATH",
                        help="where to write the shareable aggregate manifest (JSON); must be "
                             "outside DATA_DIR; '' = do not write one "
                             f"(default: ./{DEFAULT_MANIFEST})")


def run_validate(args: argparse.Namespace) -> int:
    """Print the report and write the manifest; 0 when there are no errors, else 1."""
    manifest = Path(args.manifest).expanduser() if args.manifest else None
    data_dir = Path(args.data_dir).expanduser()
    if manifest is not None and _inside(manifest, data_dir):
        raise DataError(f"--manifest {manifest}: inside the data folder {data_dir}; choose a "
                        f"path outside it (the data folder should hold only the site's data)")
    report = validate_site_data(data_dir, layout=args.layout, window=args.window,
                                strict=args.strict)
    print(report.render())
    if manifest is not None:
        write_manifest(report, manifest)
        print(f"manifest (aggregate statistics only, shareable): {manifest}")
    return 0 if report.ok else 1


def _inside(path: Path, folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return path.resolve().is_relative_to(folder.resolve())
