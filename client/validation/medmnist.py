"""Validating a MedMNIST ``.npz`` file (or a folder holding exactly one): splits and classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from client.check import Check
from client.validation.checks import class_balance, names
from common.datasets.base import DataError


def validate_medmnist(path: Path, window: str, strict: bool, spacing: str = ""
                      ) -> tuple[list[Check], dict, dict[str, int]]:
    """(checks, manifest statistics, no PHI counts) of a MedMNIST site (``window``, ``strict``
    and ``spacing`` unused: the arrays are already preprocessed)."""
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
    class_names = task.class_names or tuple(str(i) for i in range(task.num_classes))
    per_split = {k: _class_counts(data.class_labels(s), class_names) for k, s in splits.items()
                 if s is not None and len(s)}
    checks.append(class_balance(per_split.get("train", {}), "train"))
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
    what = (f"{len(found)} .npz files ({names([f.name for f in found])})" if found
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


def _class_counts(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {class_names[i] if i < len(class_names) else str(i): int(n)
            for i, n in enumerate(counts)}
