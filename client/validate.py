"""`fedclinic site validate DATA_DIR`: check a hospital's data before the site joins a federation.

Every file is opened the way training will open it, and each problem is reported as a
`client.check.Check` with a verdict: ``error`` (the site cannot train: `fedclinic site` refuses
to start), ``warning`` (training runs but skips or mistrusts something) or ``ok``. The report also
counts, per DICOM attribute, the files that carry patient identifiers (values are never read
out). Each layout has its module in `client.validation`; the shareable manifest (aggregate
statistics only) is `client.validation.manifest`.
"""

from __future__ import annotations

from pathlib import Path

from client.check import Check
from client.validation.dicom import validate_dicom
from client.validation.medmnist import validate_medmnist
from client.validation.msd import validate_msd
from client.validation.report import ValidationReport, build_report
from common.datasets.base import DataError
from common.datasets.reading import reading

LAYOUTS = ("auto", "dicom", "msd", "medmnist")
DEFAULT_MANIFEST = "manifest.json"


def validate_site_data(data_dir: Path, layout: str = "auto", window: str = "",
                       strict: bool = False, spacing: str = "") -> ValidationReport:
    """Check the site's data folder (or MedMNIST ``.npz`` file) the way training will read it.

    ``layout``: one of `LAYOUTS` ("auto" detects it). ``window``: DICOM VOI window
    "CENTER,WIDTH" or "" (checked up front: a bad value raises ConfigError). ``strict``: bad
    image files become errors instead of warnings, as they would stop a strict training run.
    ``spacing``: the run setting ``spacing`` (mm, "" = stretch): samples are preprocessed with
    it, so files a resampling run refuses are counted as such.

    One bad file is one named entry in the report, never an exception; an error no check
    foresaw while reading a file escapes with a note naming the file (the CLI prints it).
    """
    if layout not in LAYOUTS:
        raise DataError(f"layout={layout!r}: unknown; expected one of {', '.join(LAYOUTS)}")
    from common.datasets.dicom.pixels import parse_window
    from common.spacing_spec import parse_spacing

    parse_window(window)
    parse_spacing(spacing)
    data_dir = Path(data_dir).expanduser()
    if not data_dir.exists():
        check = Check("data folder", "error", f"{data_dir} does not exist")
        return build_report(data_dir, layout, [check], {}, {})
    detected, check = _layout(data_dir, layout)
    if detected is None:
        return build_report(data_dir, layout, [check], {}, {})
    validator = {"dicom": validate_dicom, "msd": validate_msd,
                 "medmnist": validate_medmnist}[detected]
    with reading(data_dir):
        checks, stats, phi = validator(data_dir, window, strict, spacing=spacing)
    return build_report(data_dir, detected, [check, *checks], stats, phi)


def _layout(data_dir: Path, layout: str) -> tuple[str | None, Check]:
    if layout != "auto":
        return layout, Check("layout", "ok", f"{layout} (as requested)")
    from common.datasets.layout import detect_layout

    try:
        found = detect_layout(data_dir)
    except DataError as exc:
        return None, Check("layout", "error", f"{exc} (or pass --layout)")
    return found, Check("layout", "ok", f"{found} (detected)")
