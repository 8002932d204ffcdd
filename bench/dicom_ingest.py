"""Time to ingest a DICOM collection, cold (decode + resample) and warm (array cache).

Writes N single-slice CT files (256 x 256 int16 with RescaleSlope/Intercept, two manufacturers,
two classes, a labels.csv keyed by SOPInstanceUID) with pydicom, then loads the folder twice with
`common.datasets.dicom.loader.load_folder` into a fresh cache. Also prints `fedclinic site
validate` on pydicom's bundled test files. Writes bench/results/dicom_ingest.json, prints one
summary line.

    .venv/bin/python -m bench.dicom_ingest [--files 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from bench.dicom_files import write_dicom
from common.datasets.dicom.loader import load_folder
from common.datasets.dicom.options import DicomOptions

RESULTS = Path(__file__).resolve().parent / "results"


def write_ct(path: Path, pixels: np.ndarray, manufacturer: str) -> str:
    """One CT slice (HU = stored - 1024, 0.7 mm pixels); returns its SOPInstanceUID."""
    sop = generate_uid()
    write_dicom(path, pixels, modality="CT", sop=sop, Manufacturer=manufacturer,
                RescaleSlope=1, RescaleIntercept=-1024, PixelSpacing=[0.7, 0.7])
    return sop


def write_collection(root: Path, files: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = ["SOPInstanceUID,label"]
    yy, xx = np.mgrid[:256, :256]
    for i in range(files):
        label = i % 2
        image = rng.normal(1024 + 40, 20, (256, 256))
        if label:        # a bright round lesion
            cy, cx = rng.integers(60, 196, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < 20 ** 2] += 300
        sop = write_ct(root / f"{i // 100:02d}" / f"img{i:05d}.dcm",
                       np.clip(image, 0, 4095).astype(np.uint16), ("Acme", "Globex")[i % 2])
        rows.append(f"{sop},{'lesion' if label else 'normal'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="DICOM slices (default: 1000)")
    parser.add_argument("--size", type=int, default=64, choices=(28, 64),
                        help="model input side after resampling (default: 64)")
    parser.add_argument("--out", default=str(RESULTS / "dicom_ingest.json"),
                        help="result file (default: bench/results/dicom_ingest.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        start = time.perf_counter()
        write_collection(root, args.files)
        written = time.perf_counter() - start
        options = DicomOptions(size=args.size, cache_dir=str(Path(tmp) / "cache"))
        import monai.transforms  # noqa: F401 - import cost (~10 s here) is not ingestion
        timings = []
        for _ in ("cold", "warm"):
            start = time.perf_counter()
            data = load_folder(root, options)
            timings.append(time.perf_counter() - start)
        samples = len(data.train) + (len(data.test) if data.test is not None else 0)
        validate = _validate_bundled(Path(tmp) / "bundled")
    report = {"files": args.files, "pixels": "256x256 int16 CT", "resampled_to": args.size,
              "write_seconds": round(written, 2), "cold_seconds": round(timings[0], 2),
              "warm_seconds": round(timings[1], 2), "samples": samples,
              "speedup": round(timings[0] / timings[1], 1),
              "validate_pydicom_bundled": validate}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench.dicom_ingest: {args.files} slices cold {timings[0]:.1f} s, warm "
          f"{timings[1]:.2f} s ({report['speedup']}x) -> {args.out}")


def _validate_bundled(folder: Path) -> str:
    """`fedclinic site validate` on a few of pydicom's own test files (listed directly)."""
    from client.validate import validate_site_data

    source = Path(pydicom.data.__file__).parent / "test_files"
    folder.mkdir(parents=True)
    rows = ["path,label"]
    for i, name in enumerate(("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm",
                              "MR2_J2KI.dcm", "emri_small.dcm")):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
            rows.append(f"{name},{'a' if i % 2 else 'b'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return validate_site_data(folder).render()


if __name__ == "__main__":
    main()
