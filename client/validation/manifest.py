"""The shareable manifest: aggregate statistics only, written atomically as JSON.

It holds counts per class, modality, manufacturer, image size and binned pixel spacing, study /
series / file counts and skipped files by reason category. It never holds a UID, a file name or
a header value that identifies a patient, clinician or hospital: skip reasons are reduced to
`reason_category` and spacings to `spacing_bin`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from client.validation.report import ValidationReport

# Pixel-spacing bin edges in mm: "<0.1", "0.1-0.2", ..., ">=5"
SPACING_EDGES_MM = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")   # DICOM UIDs, also inside decoder messages


def reason_category(reason: str) -> str:
    """A shareable, identifier-free summary of a skip reason: the text before its first ':',
    '(', ';' or '[', with UIDs and numbers removed (so byte counts do not split categories)."""
    head = re.split(r"[:(;[]", reason, maxsplit=1)[0]
    head = _UID.sub("", head)
    head = re.sub(r"\d+", "N", head)
    return " ".join(head.split()) or "other"


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
