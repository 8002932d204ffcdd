"""Validating a Medical Segmentation Decathlon folder: every training case read as training
reads it, and the aggregate statistics."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.check import Check
from client.validation.checks import bad_files_check, class_balance, histogram, relative
from client.validation.manifest import reason_category, spacing_bin
from common.datasets.base import DataError


@dataclass(frozen=True)
class _Case:
    """One training case as training reads it: its volume shape, spacing and mask classes."""

    shape: str
    spacing_mm: float | None
    label_values: tuple[int, ...]


def validate_msd(root: Path, window: str, strict: bool, spacing: str = ""
                 ) -> tuple[list[Check], dict, dict[str, int]]:
    """(checks, manifest statistics, no PHI counts) of an MSD site's folder (``window`` unused:
    NIfTI has none). Each case is read and preprocessed as 3D training does (``spacing``
    included), so the usable count is the loader's."""
    from common.datasets.msd import read_manifest

    if not root.is_dir():
        return [Check("data folder", "error", f"{root} is not a folder; an MSD site needs "
                                              f"dataset.json, imagesTr/ and labelsTr/")], {}, {}
    try:
        manifest = read_manifest(root)
    except DataError as exc:
        return [Check("dataset.json", "error", str(exc))], {}, {}
    cases, bad = _read_cases(root, manifest, spacing)
    bad = [(entry, _strip_paths(reason, root)) for entry, reason in manifest.refused] + bad
    total = len(manifest.cases) + len(manifest.refused)
    names = manifest.class_names
    counts = {name: sum(i in c.label_values for c in cases) for i, name in enumerate(names)}
    checks = [Check("dataset.json", "ok",
                    f"{manifest.name}: {total} training case(s), classes "
                    f"{', '.join(f'{i}={n}' for i, n in enumerate(names))}, channels "
                    f"{', '.join(manifest.modalities)}"),
              _cases_check(len(cases), total),
              bad_files_check(bad, total, strict, "case"),
              _msd_size_check(cases), class_balance(counts, "training-case")]
    return checks, _msd_stats(manifest, cases, bad, counts), {}


def _read_cases(root: Path, manifest, spacing: str = ""
                ) -> tuple[list[_Case], list[tuple[str, str]]]:
    """Every training case read and preprocessed exactly as (3D) training does; the unusable
    ones with reasons."""
    from common.datasets.msd import MsdOptions, check_case, preprocess_case, read_case

    opts = MsdOptions(spacing=spacing)
    cases, bad = [], []
    for image_path, label_path in manifest.cases:
        try:
            image, mask = read_case(image_path, label_path, len(manifest.class_names),
                                    len(manifest.modalities))
            check_case(preprocess_case(image, mask, image_path, opts), image_path,
                       len(manifest.modalities), opts)
        except DataError as exc:
            bad.append((relative(image_path, root), _strip_paths(str(exc), root)))
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
    return Check("volume sizes", "ok", f"(D x H x W) {histogram(counts)}" if counts
                 else "no cases")


def _msd_stats(manifest, cases: list[_Case], bad: list[tuple[str, str]],
               counts: dict[str, int]) -> dict:
    return {
        "cases": {"total": len(manifest.cases) + len(manifest.refused), "usable": len(cases),
                  "skipped": len(bad),
                  "skipped_by_reason": dict(Counter(reason_category(_after_name(r))
                                                    for _, r in bad))},
        "labels": counts,
        "modalities": {m: len(cases) for m in manifest.modalities},
        "image_sizes": dict(Counter(c.shape for c in cases)),
        "pixel_spacing_mm": dict(Counter(spacing_bin(c.spacing_mm) for c in cases)),
    }


def _after_name(message: str) -> str:
    """'imagesTr/x.nii.gz: not found' -> 'not found', "dataset.json: training[3] image '../x'
    leads outside ..." -> 'leads outside ...' (the manifest names no files)."""
    head, sep, rest = message.partition(": ")
    message = rest if sep and ("/" in head or "." in head) else message
    return _ENTRY.sub("", message)


_ENTRY = re.compile(r"^training\[\d+\] (image|label) ('[^']*' )?")
