"""Which reader a site's data path needs: a MedMNIST ``.npz``, an MSD folder or a DICOM folder."""

from __future__ import annotations

import os
from pathlib import Path

from common.datasets.base import DataError
from common.datasets.labels import LABELS_FILE

LAYOUTS = ("medmnist", "msd", "dicom")
_DICM_OFFSET, _DICM = 128, b"DICM"


def detect_layout(path: Path) -> str:
    """``"medmnist"`` (a .npz file), ``"msd"`` (dataset.json + imagesTr/) or ``"dicom"`` (a folder
    with labels.csv and at least one DICOM file); `DataError` saying what was looked for."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "medmnist"
        raise DataError(f"{path}: a file but not a MedMNIST .npz; expected a .npz file, an MSD "
                        f"folder (dataset.json + imagesTr/) or a DICOM folder ({LABELS_FILE} + "
                        f"DICOM files)")
    if not path.is_dir():
        raise DataError(f"{path}: not found; expected a MedMNIST .npz file, an MSD folder "
                        f"(dataset.json + imagesTr/) or a DICOM folder ({LABELS_FILE} + DICOM "
                        f"files)")
    if (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
        return "msd"
    has_labels = (path / LABELS_FILE).is_file()
    if has_labels and _has_dicom(path):
        return "dicom"
    found = sorted(p.name for p in path.iterdir())[:10]
    missing = (f"{LABELS_FILE} is there but no DICOM file ('DICM' at byte 128) was found"
               if has_labels else f"no {LABELS_FILE}, no dataset.json + imagesTr/")
    raise DataError(f"{path}: unknown data layout ({missing}); expected an MSD folder "
                    f"(dataset.json + imagesTr/) or a DICOM folder ({LABELS_FILE} + DICOM files). "
                    f"Found: {', '.join(found) or 'nothing'}")


def _has_dicom(root: Path) -> bool:
    """True at the first file under root with the DICOM magic (no full parse)."""
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and _is_dicom(Path(parent) / name):
                return True
    return False


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICM_OFFSET)
            return fh.read(4) == _DICM
    except OSError:
        return False
