"""`fedclinic site validate`: checks, PHI counts and the identifier-free manifest."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from client.check import Check
from client.phi import PHI_KEYWORDS, count_phi, phi_keywords_present
from client.validate import validate_site_data
from client.validation.manifest import reason_category, spacing_bin, write_manifest
from client.validation.report import ValidationReport
from common.config import ConfigError
from common.datasets.base import DataError
from common.datasets.dicom.loader import load_folder
from common.datasets.dicom.options import DicomOptions
from common.datasets.labels import KEY_COLUMNS
from fedclinic.cli.site import add_validate_arguments, run_validate

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


# --------------------------------------------------------------------------- fixtures

def write_dicom(path: Path, *, modality: str = "CT", rows: int = 16, cols: int = 16,
                pixels: bool = True, tags: dict | None = None, study: str = "",
                series: str = "") -> FileDataset:
    """A small valid DICOM file (16-bit grey, explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = modality
    ds.Manufacturer = "Acme Imaging"
    ds.PixelSpacing = [0.7, 0.7]
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    if pixels:
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        rng = np.random.default_rng(len(path.name))
        ds.PixelData = rng.integers(0, 4000, (rows, cols), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_labels(root: Path, rows: list[tuple[str, str]], key: str = "path") -> None:
    text = f"{key},label\n" + "".join(f"{k},{v}\n" for k, v in rows)
    (root / "labels.csv").write_text(text, encoding="utf-8")


def clean_site(root: Path) -> Path:
    """Four CT images, two per class, no PHI, all labelled."""
    rows = []
    for i, label in enumerate(["normal", "normal", "pneumonia", "pneumonia"]):
        write_dicom(root / f"img{i}.dcm")
        rows.append((f"img{i}.dcm", label))
    write_labels(root, rows)
    return root


def check(report: ValidationReport, name: str) -> Check:
    return next(c for c in report.checks if c.name == name)


# --------------------------------------------------------------------------- DICOM layout

def test_clean_two_class_collection_is_ok_without_warnings(tmp_path):
    report = validate_site_data(clean_site(tmp_path), layout="dicom")
    assert report.ok and report.errors == () and report.warnings == ()
    assert all(c.status == "ok" for c in report.checks)
    assert report.phi == {}
    m = report.manifest
    assert m["labels"] == {"normal": 2, "pneumonia": 2}
    assert m["modalities"] == {"CT": 4}
    assert m["manufacturers"] == {"Acme Imaging": 4}
    assert m["image_sizes"] == {"16x16": 4}
    assert m["pixel_spacing_mm"] == {"0.5-1": 4}
    assert m["files"] == {"total": 4, "images": 4, "used": 4, "skipped": 0,
                          "skipped_by_reason": {}}
    assert (m["studies"], m["series"], m["samples"]) == (4, 4, 4)
    assert m["layout"] == "dicom" and m["valid"] is True and m["errors"] == 0


def test_missing_labels_csv_is_an_error(tmp_path):
    clean_site(tmp_path)
    (tmp_path / "labels.csv").unlink()
    report = validate_site_data(tmp_path, layout="dicom")
    assert not report.ok
    assert check(report, "labels file").status == "error"
    assert "labels.csv not found" in check(report, "labels file").detail
    assert "FAILED: 1 error(s)" in report.render()


def test_labels_csv_parse_error_names_the_line(tmp_path):
    clean_site(tmp_path)
    write_labels(tmp_path, [("img0.dcm", "normal"), ("img0.dcm", "pneumonia")])
    report = validate_site_data(tmp_path, layout="dicom")
    problem = check(report, "labels file")
    assert problem.status == "error" and not report.ok
    assert "line 3" in problem.detail and "duplicate" in problem.detail


def test_orphan_image_and_orphan_label_are_counted_and_named(tmp_path):
    clean_site(tmp_path)
    write_dicom(tmp_path / "sub" / "extra.dcm")
    write_labels(tmp_path, [("img0.dcm", "normal"), ("img1.dcm", "normal"),
                            ("img2.dcm", "pneumonia"), ("img3.dcm", "pneumonia"),
                            ("./gone.dcm", "normal")])
    report = validate_site_data(tmp_path, layout="dicom")
    assert report.ok
    images = check(report, "images without labels")
    assert images.status == "warning"
    assert "1 of 5 readable image(s)" in images.detail and "sub/extra.dcm" in images.detail
    labels = check(report, "labels without images")
    assert labels.status == "warning"
    assert "1 of 5 labels.csv row(s)" in labels.detail and "gone.dcm (line 6)" in labels.detail
    # statistics cover what trains: the four labelled images, not the orphan
    assert report.manifest["samples"] == 4 and report.manifest["files"]["used"] == 4
    assert report.manifest["files"]["images"] == 5


def test_orphan_label_is_an_error_under_strict(tmp_path):
    clean_site(tmp_path)
    write_labels(tmp_path, [(f"img{i}.dcm", "ab"[i % 2]) for i in range(4)] + [("x.dcm", "a")])
    report = validate_site_data(tmp_path, layout="dicom", strict=True)
    assert [c.name for c in report.errors] == ["labels without images"]
    assert "x.dcm (line 6)" in report.errors[0].detail


def test_one_class_or_no_train_split_is_an_error(tmp_path):
    clean_site(tmp_path)
    write_labels(tmp_path, [(f"img{i}.dcm", "normal") for i in range(4)])
    usable = check(validate_site_data(tmp_path, layout="dicom"), "labelled images")
    assert usable.status == "error" and "one class ('normal')" in usable.detail
    (tmp_path / "labels.csv").write_text(
        "path,label,split\n" + "".join(f"img{i}.dcm,{'ab'[i % 2]},test\n" for i in range(4)))
    usable = check(validate_site_data(tmp_path, layout="dicom"), "labelled images")
    assert usable.status == "error" and "no usable row has split 'train'" in usable.detail


def bad_files_site(root: Path) -> Path:
    clean_site(root)
    write_dicom(root / "truncated.dcm", rows=64, cols=64)
    data = (root / "truncated.dcm").read_bytes()
    (root / "truncated.dcm").write_bytes(data[:len(data) - 3000])
    (root / "notes.dcm").write_text("this is a text file, not DICOM\n")
    write_dicom(root / "nopixels.dcm", pixels=False)
    return root


def test_bad_files_are_warnings_naming_file_and_reason(tmp_path):
    report = validate_site_data(bad_files_site(tmp_path), layout="dicom")
    bad = check(report, "bad files")
    assert bad.status == "warning" and report.ok
    assert "3 of 7 file(s) unusable" in bad.detail
    assert "truncated.dcm: truncated" in bad.detail
    assert "notes.dcm: not a DICOM file" in bad.detail
    assert "nopixels.dcm: no PixelData" in bad.detail
    assert check(report, "DICOM images").detail.startswith("4 of 7")
    reasons = report.manifest["files"]["skipped_by_reason"]
    assert reasons == {"truncated": 1, "not a DICOM file": 1, "no PixelData element": 1}


def test_bad_files_are_errors_under_strict(tmp_path):
    report = validate_site_data(bad_files_site(tmp_path), layout="dicom", strict=True)
    assert not report.ok
    assert [c.name for c in report.errors] == ["bad files"]
    assert "strict" in report.errors[0].detail


def test_mixed_modalities_and_sizes_are_warnings_with_counts(tmp_path):
    rows = []
    for i, (modality, side) in enumerate([("CT", 16), ("CT", 16), ("CT", 8), ("MR", 16)]):
        write_dicom(tmp_path / f"f{i}.dcm", modality=modality, rows=side, cols=side)
        rows.append((f"f{i}.dcm", str(i % 2)))
    write_labels(tmp_path, rows)
    report = validate_site_data(tmp_path, layout="dicom")
    modalities = check(report, "modalities")
    assert modalities.status == "warning" and "CT: 3, MR: 1" in modalities.detail
    sizes = check(report, "image sizes")
    assert sizes.status == "warning" and "16x16: 3, 8x8: 1" in sizes.detail
    assert report.manifest["modalities"] == {"CT": 3, "MR": 1}
    assert report.manifest["image_sizes"] == {"16x16": 3, "8x8": 1}
    assert report.manifest["labels"] == {"0": 2, "1": 2}


def test_class_with_one_sample_is_a_warning(tmp_path):
    clean_site(tmp_path)
    write_labels(tmp_path, [("img0.dcm", "normal"), ("img1.dcm", "normal"),
                            ("img2.dcm", "normal"), ("img3.dcm", "pneumonia")])
    balance = check(validate_site_data(tmp_path, layout="dicom"), "class balance")
    assert balance.status == "warning" and "'pneumonia': 1" in balance.detail


def test_labels_keyed_by_series_uid_match_all_slices(tmp_path):
    series = [generate_uid(), generate_uid()]
    for i in range(4):
        write_dicom(tmp_path / f"s{i}.dcm", series=series[i % 2],
                    tags={"InstanceNumber": i // 2 + 1})
    write_labels(tmp_path, [(series[0], "a"), (series[1], "b"), ("1.2.3.999", "a")],
                 key="SeriesInstanceUID")
    report = validate_site_data(tmp_path, layout="dicom")
    assert check(report, "images without labels").status == "ok"
    assert "1.2.3.999 (line 4)" in check(report, "labels without images").detail
    assert report.manifest["labels"] == {"a": 1, "b": 1}
    assert report.manifest["series"] == 2 and report.manifest["files"]["used"] == 4


def test_a_series_the_loader_cannot_order_is_no_sample_in_validate_either(tmp_path):
    """Validate preprocesses each row as the loader does: unorderable slices give no sample."""
    series = [generate_uid(), generate_uid()]
    for i in range(4):               # series[0] has InstanceNumber, series[1] has nothing
        write_dicom(tmp_path / f"s{i}.dcm", series=series[i % 2],
                    tags={"InstanceNumber": i // 2 + 1} if i % 2 == 0 else None)
    write_labels(tmp_path, [(series[0], "a"), (series[1], "b")], key="SeriesInstanceUID")
    report = validate_site_data(tmp_path, layout="dicom")
    orphan = check(report, "labels without images").detail
    assert f"{series[1]} (line 3): " in orphan and "cannot order the series" in orphan
    assert report.manifest["samples"] == 1 and report.manifest["labels"] == {"a": 1, "b": 0}
    data = load_folder(tmp_path, DicomOptions(cache_dir=str(tmp_path / "cache")))
    assert sum(len(s) for s in (data.train, data.val, data.test) if s is not None) == 1


def test_no_labelled_image_is_an_error(tmp_path):
    clean_site(tmp_path)
    write_labels(tmp_path, [("elsewhere/a.dcm", "x"), ("elsewhere/b.dcm", "y")])
    report = validate_site_data(tmp_path, layout="dicom")
    assert check(report, "labelled images").status == "error" and not report.ok


@pytest.mark.parametrize("key", KEY_COLUMNS)
def test_sample_count_is_what_the_loader_trains_on(tmp_path, key):
    """For every key column the loader supports, validate counts the samples it trains on."""
    root = tmp_path / "site"
    rows: dict[str, str] = {}                     # key value -> label
    for s in range(6):                            # six studies, three per class
        study, label = generate_uid(), "ab"[s % 2]
        for series_no in range(2 if s == 0 else 1):   # study 0: a second, one-slice series
            series = generate_uid()
            for i in range(1 if series_no else 2):
                rel = f"p{s}/se{series_no}/im{i}.dcm"
                ds = write_dicom(root / rel, study=study, series=series,
                                 tags={"InstanceNumber": i + 1})
                rows[{"path": rel, "SOPInstanceUID": ds.SOPInstanceUID,
                      "SeriesInstanceUID": series, "StudyInstanceUID": study}[key]] = label
    write_dicom(root / "extra" / "unlabelled.dcm")    # no row: neither reads it
    (root / "notes.dcm").write_text("not DICOM")
    entries = list(rows.items())
    if key == "path":                                 # spellings the loader accepts
        entries[0] = (f"./{entries[0][0]}", entries[0][1])
        entries[1] = (entries[1][0].replace("/", "\\"), entries[1][1])
    write_labels(root, [*entries, ("gone.dcm" if key == "path" else "1.2.3.999", "a")], key=key)
    report = validate_site_data(root, layout="dicom")
    data = load_folder(root, DicomOptions(cache_dir=str(tmp_path / "cache")))
    trained = sum(len(s) for s in (data.train, data.val, data.test) if s is not None)
    assert report.manifest["samples"] == trained == len(rows)
    assert check(report, "images without labels").detail.endswith("extra/unlabelled.dcm")
    assert "(line " in check(report, "labels without images").detail


PHI_VALUES = {"PatientName": "Doe^Jane", "PatientID": "MRN-448812",
              "PatientBirthDate": "19610412", "InstitutionName": "St Elsewhere Hospital",
              "ReferringPhysicianName": "House^Gregory", "AccessionNumber": "ACC99871"}


def phi_site(root: Path) -> tuple[Path, list[str]]:
    """Files with known PHI: PatientName in 3, PatientID in 2 (one empty), the rest once."""
    uids = []
    tags = [dict(PHI_VALUES),
            {"PatientName": "Roe^Richard", "PatientID": "MRN-11"},
            {"PatientName": "Poe^Edgar", "PatientID": ""},
            {"PatientName": ""}]
    for i, t in enumerate(tags):
        ds = write_dicom(root / f"phi{i}.dcm", tags=t)
        uids += [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
    write_labels(root, [(f"phi{i}.dcm", "ab"[i % 2]) for i in range(4)])
    return root, uids


def test_phi_counts_are_exact_and_values_never_printed(tmp_path):
    root, _ = phi_site(tmp_path)
    report = validate_site_data(root, layout="dicom")
    assert report.phi == {"PatientName": 3, "PatientID": 2, "PatientBirthDate": 1,
                          "InstitutionName": 1, "ReferringPhysicianName": 1,
                          "AccessionNumber": 1}
    assert list(report.phi) == [k for k in PHI_KEYWORDS if k in report.phi]
    assert check(report, "patient identifiers").status == "warning" and report.ok
    text = report.render()
    assert "must not leave this site" in text and "de-identification" in text
    assert re.search(r"^ +PatientName +3 file\(s\)$", text, re.MULTILINE)
    for value in [*PHI_VALUES.values(), "Roe^Richard", "Poe^Edgar", "MRN-11"]:
        assert value not in text


def test_manifest_holds_no_phi_uids_or_file_names(tmp_path):
    root, uids = phi_site(tmp_path / "site")
    (root / "broken.dcm").write_bytes(b"DICM garbage")
    report = validate_site_data(root, layout="dicom")
    out = tmp_path / "manifest.json"
    write_manifest(report, out)
    text = out.read_text(encoding="utf-8")
    assert json.loads(text) == json.loads(json.dumps(report.manifest))
    for value in [*PHI_VALUES.values(), "Roe^Richard", "Poe^Edgar", "MRN-11", "Doe", "Jane"]:
        assert value not in text
    for uid in uids:
        assert uid not in text
    for name in ["phi0", "phi1", "broken", ".dcm", str(root), "site"]:
        assert name not in text
    assert "1.2.840.10008" not in text
    assert report.manifest["files"]["skipped_by_reason"] == {"not a DICOM file": 1}
    assert list(tmp_path.glob("*.tmp")) == []


def test_pydicom_sample_files_report_modalities_and_phi(tmp_path):
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copy(PYDICOM_FILES / name, tmp_path / name)
    write_labels(tmp_path, [("CT_small.dcm", "ct"), ("MR_small.dcm", "mr"),
                            ("rtplan.dcm", "ct")])
    report = validate_site_data(tmp_path, layout="dicom")
    assert report.manifest["modalities"] == {"CT": 1, "MR": 1}
    assert report.manifest["image_sizes"] == {"128x128": 1, "64x64": 1}
    assert "CT: 1, MR: 1" in check(report, "modalities").detail
    for keyword in ("PatientName", "PatientID", "InstitutionName", "StudyID"):
        assert report.phi[keyword] == 3
    assert report.phi["OperatorsName"] == 2          # CT_small has none
    bad = check(report, "bad files")
    assert bad.status == "warning" and "rtplan.dcm: no PixelData" in bad.detail
    assert "rtplan.dcm (line 4)" in check(report, "labels without images").detail
    for header in (pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm"),):
        assert str(header.PatientName) not in report.render()
        assert header.SOPInstanceUID not in json.dumps(report.manifest)


def test_bad_window_and_layout_raise_clear_errors(tmp_path):
    clean_site(tmp_path)
    with pytest.raises(ConfigError, match="CENTER,WIDTH"):
        validate_site_data(tmp_path, layout="dicom", window="40")
    with pytest.raises(DataError, match="expected one of auto, dicom, msd, medmnist"):
        validate_site_data(tmp_path, layout="nifti")


def test_missing_data_dir_is_an_error(tmp_path):
    report = validate_site_data(tmp_path / "nowhere")
    assert not report.ok and "does not exist" in report.errors[0].detail


# --------------------------------------------------------------------------- PHI helpers

def test_phi_detection_ignores_blank_values_and_finds_nested_ones():
    ds = pydicom.Dataset()
    ds.PatientName = "^^^"
    ds.PatientID = "  "
    ds.OperatorsName = ["", "Tech^A"]
    item = pydicom.Dataset()
    item.AccessionNumber = "A1"
    ds.RequestAttributesSequence = [item]
    assert phi_keywords_present(ds) == {"OperatorsName", "AccessionNumber"}
    assert count_phi([ds, ds]) == {"AccessionNumber": 2, "OperatorsName": 2}


# --------------------------------------------------------------------------- MSD layout

def write_msd(root: Path, masks: list[np.ndarray], labels: dict | None = None,
              missing: int | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    for i, mask in enumerate(masks):
        image = rng.normal(size=(8, 8, 4)).astype(np.float32)
        if i != missing:
            nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine),
                 root / "labelsTr" / f"case{i}.nii.gz")
        training.append({"image": f"./imagesTr/case{i}.nii.gz",
                         "label": f"./labelsTr/case{i}.nii.gz"})
    spec = {"name": "Task99_Tiny", "modality": {"0": "CT"},
            "labels": labels or {"0": "background", "1": "lesion"},
            "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def lesion_mask(value: int = 1) -> np.ndarray:
    mask = np.zeros((8, 8, 4), dtype=np.uint8)
    mask[2:5, 2:5, 1:3] = value
    return mask


def test_msd_clean_folder_is_ok(tmp_path):
    root = write_msd(tmp_path, [lesion_mask(), lesion_mask(), lesion_mask()])
    report = validate_site_data(root, layout="msd")
    assert report.ok and report.warnings == ()
    m = report.manifest
    assert m["cases"]["usable"] == 3 and m["cases"]["skipped"] == 0
    assert m["labels"] == {"background": 3, "lesion": 3}
    assert m["modalities"] == {"CT": 3}
    assert m["image_sizes"] == {"4x8x8": 3}             # (D, H, W) after reorientation
    assert m["pixel_spacing_mm"] == {"0.5-1": 3}
    assert "case0" not in json.dumps(m)


def test_msd_bad_cases_are_named_with_reasons(tmp_path):
    root = write_msd(tmp_path, [lesion_mask(), lesion_mask(3), lesion_mask(), lesion_mask()],
                     missing=2)
    report = validate_site_data(root, layout="msd")
    bad = check(report, "bad cases")
    assert bad.status == "warning" and "2 of 4 case(s)" in bad.detail
    assert "case1.nii.gz" in bad.detail and "class ids [0, 3]" in bad.detail
    assert "case2.nii.gz" in bad.detail and "not found" in bad.detail
    assert report.manifest["cases"]["skipped_by_reason"] == {"mask holds class ids": 1,
                                                             "not found": 1}
    assert "case" not in json.dumps(report.manifest["cases"])
    assert not validate_site_data(root, layout="msd", strict=True).ok


def test_msd_shape_mismatch_and_missing_dataset_json(tmp_path):
    root = write_msd(tmp_path / "a", [lesion_mask(), np.zeros((8, 8, 5), np.uint8)])
    detail = check(validate_site_data(root, layout="msd"), "bad cases").detail
    assert "case1.nii.gz" in detail and "shape" in detail
    (root / "dataset.json").unlink()
    report = validate_site_data(root, layout="msd")
    assert not report.ok and "dataset.json" in report.errors[0].detail


# --------------------------------------------------------------------------- MedMNIST layout

def write_npz(path: Path, n_val: int = 4) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 10), ("val", n_val), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(path, **arrays)
    return path


def test_medmnist_file_and_folder(tmp_path):
    npz = write_npz(tmp_path / "site.npz")
    report = validate_site_data(npz, layout="medmnist")
    assert report.ok and report.warnings == ()
    assert report.manifest["samples"] == {"train": 10, "val": 4, "test": 4}
    assert report.manifest["labels"]["train"] == {"0": 5, "1": 5}
    assert validate_site_data(tmp_path, layout="medmnist").manifest["samples"]["train"] == 10


def test_medmnist_empty_val_warns_and_corrupt_file_errors(tmp_path):
    report = validate_site_data(write_npz(tmp_path / "a.npz", n_val=0), layout="medmnist")
    assert check(report, "splits").status == "warning" and report.ok
    (tmp_path / "b.npz").write_bytes(b"not a zip")
    report = validate_site_data(tmp_path / "b.npz", layout="medmnist")
    assert not report.ok and "not a readable .npz" in report.errors[0].detail
    report = validate_site_data(tmp_path, layout="medmnist")      # two .npz files: ambiguous
    assert not report.ok and "2 .npz files" in report.errors[0].detail


# --------------------------------------------------------------------------- helpers + CLI

def test_reason_category_drops_numbers_and_uids():
    assert reason_category("truncated: 120 bytes but its elements need 4000") == "truncated"
    assert reason_category("compressed transfer syntax JPEG 2000 (1.2.840.10008.1.2.4.91) "
                           "cannot be decoded") == "compressed transfer syntax JPEG N"
    assert reason_category("SOP 1.2.3.4.5 is odd") == "SOP is odd"


@pytest.mark.parametrize("mm, expected", [(0.05, "<0.1"), (0.1, "0.1-0.2"), (0.7, "0.5-1"),
                                          (1.0, "1-2"), (7.0, ">=5"), (None, "unknown"),
                                          (0.0, "unknown")])
def test_spacing_bins(mm, expected):
    assert spacing_bin(mm) == expected


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    return parser.parse_args(argv)


def test_cli_help_states_defaults():
    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    for action in parser._actions[1:]:
        assert action.help.endswith(")") and "(default: " in action.help, action.dest
    args = parse(["data"])
    assert (args.layout, args.window, args.strict, args.manifest) == \
        ("auto", "", False, "manifest.json")


def test_run_validate_exit_codes_and_manifest(tmp_path, capsys):
    site = clean_site(tmp_path / "site")
    manifest = tmp_path / "out" / "manifest.json"
    assert run_validate(parse([str(site), "--layout", "dicom", "--manifest", str(manifest)])) == 0
    out = capsys.readouterr().out
    assert "PASSED: no problems found." in out and str(manifest) in out
    assert json.loads(manifest.read_text())["labels"] == {"normal": 2, "pneumonia": 2}
    bad_files_site(tmp_path / "bad")
    args = ["--layout", "dicom", "--manifest", str(manifest)]
    assert run_validate(parse([str(tmp_path / "bad"), *args])) == 0      # warnings only
    assert run_validate(parse([str(tmp_path / "bad"), "--strict", *args])) == 1
    assert json.loads(manifest.read_text())["valid"] is False
    (site / "labels.csv").unlink()
    assert run_validate(parse([str(site), "--layout", "dicom", "--manifest", ""])) == 1
    assert "FAILED" in capsys.readouterr().out


def test_run_validate_refuses_a_manifest_inside_the_data_dir(tmp_path, monkeypatch):
    site = clean_site(tmp_path)
    monkeypatch.chdir(site)
    with pytest.raises(DataError, match="inside the data folder"):
        run_validate(parse([str(site), "--layout", "dicom"]))
    assert not (site / "manifest.json").exists()


def test_auto_layout_detects_each_kind(tmp_path):
    dicom = validate_site_data(clean_site(tmp_path / "dicom"))
    assert dicom.layout == "dicom" and check(dicom, "layout").detail == "dicom (detected)"
    assert dicom.ok and dicom.manifest["layout"] == "dicom"
    msd = validate_site_data(write_msd(tmp_path / "msd", [lesion_mask(), lesion_mask()]))
    assert msd.layout == "msd" and msd.ok
    npz = validate_site_data(write_npz(tmp_path / "x.npz"))
    assert npz.layout == "medmnist" and npz.ok
    (tmp_path / "dicom" / "labels.csv").unlink()
    unknown = validate_site_data(tmp_path / "dicom")
    assert not unknown.ok and check(unknown, "layout").status == "error"
    assert "labels.csv" in check(unknown, "layout").detail


# --------------------------------------------------------------------------- bad input (issue 11)

from bench.fuzz_inputs import patch_vr, raw_element  # noqa: E402


def _corrupt(path: Path, edit) -> Path:
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=False)
    return path


def _trained_on(root: Path, tmp_path: Path, **options) -> int:
    data = load_folder(root, DicomOptions(cache_dir=str(tmp_path / "cache"), **options))
    return sum(len(s) for s in (data.train, data.val, data.test) if s is not None)


def test_bad_files_of_every_seen_kind_are_named_and_the_report_still_comes(tmp_path):
    """Text RescaleSlope, a transfer syntax that is none, an unknown VR (read by the PHI scan
    too) and a NaN window: each one named, skipped file; validate counts what training loads."""
    site = clean_site(tmp_path / "site")
    rows = [(f"img{i}.dcm", "normal" if i < 2 else "pneumonia") for i in range(4)]
    for name, edit in (
            ("slope.dcm", lambda ds: raw_element(ds, "RescaleSlope", "DS", b"one")),
            ("window.dcm", lambda ds: raw_element(ds, "WindowCenter", "DS", b"nan")),
            ("vr.dcm", lambda ds: None)):
        write_dicom(site / name, tags={"WindowCenter": 40, "WindowWidth": 400,
                                       "RescaleSlope": 1, "RescaleIntercept": 0})
        _corrupt(site / name, edit)
        rows.append((name, "normal"))
    vr = site / "vr.dcm"
    vr.write_bytes(patch_vr(vr.read_bytes(), pydicom.tag.Tag("Manufacturer"), "QQ"))
    write_labels(site, rows)
    report = validate_site_data(site, layout="dicom")
    bad = check(report, "bad files").detail
    assert "3 of 7 file(s) unusable" in bad
    assert "slope.dcm: RescaleSlope (0028,1053) is 'one'" in bad
    assert "window.dcm: WindowCenter (0028,1050) is 'nan', not a finite number" in bad
    assert ("vr.dcm: unknown value representation (VR) code 'QQ' in element (0008,0070) "
            "Manufacturer") in bad
    assert report.manifest["files"]["skipped_by_reason"] == {
        "RescaleSlope": 1, "WindowCenter": 1, "unknown value representation": 1}
    assert report.manifest["samples"] == _trained_on(site, tmp_path) == 4
    assert not validate_site_data(site, layout="dicom", strict=True).ok


def test_a_multi_valued_modality_is_reported_as_such(tmp_path):
    site = clean_site(tmp_path)
    _corrupt(site / "img0.dcm", lambda ds: raw_element(ds, "Modality", "CS", b"CT\\MR"))
    report = validate_site_data(site, layout="dicom")
    modalities = check(report, "modalities")
    assert modalities.status == "warning"
    assert "multi-valued Modality (0008,0060)" in modalities.detail
    assert "CT\\MR: 1" in modalities.detail and "['CT', 'MR']" not in report.render()
    assert report.manifest["modalities"] == {"CT": 3, "CT\\MR": 1}


@pytest.mark.parametrize("alias", ["dot-slash", "symlink", "hardlink"])
def test_two_names_of_one_file_are_one_sample_in_validate_and_training(tmp_path, alias):
    import os

    site = clean_site(tmp_path / "site")
    rows = [(f"img{i}.dcm", "normal" if i < 2 else "pneumonia") for i in range(4)]
    if alias == "dot-slash":
        write_labels(site, rows + [("./img0.dcm", "pneumonia")])
        report = validate_site_data(site, layout="dicom")
        problem = check(report, "labels file")
        assert problem.status == "error" and "duplicate path './img0.dcm'" in problem.detail
        return
    if alias == "symlink":
        (site / "other.dcm").symlink_to("img0.dcm")
    else:
        os.link(site / "img0.dcm", site / "other.dcm")
    write_labels(site, rows + [("other.dcm", "pneumonia")])
    report = validate_site_data(site, layout="dicom")
    orphan = check(report, "labels without images").detail
    assert "other.dcm (line 6): " in orphan and "same file" in orphan and "line 2" in orphan
    assert report.manifest["samples"] == _trained_on(site, tmp_path) == 4
    assert report.manifest["files"]["total"] == 4                 # the alias is no extra file


def test_paths_leaving_the_data_folder_are_refused_with_the_shared_rule(tmp_path):
    site = clean_site(tmp_path / "site")
    write_dicom(tmp_path / "other" / "x.dcm")
    rows = [(f"img{i}.dcm", "normal" if i < 2 else "pneumonia") for i in range(4)]
    write_labels(site, rows + [("../other/x.dcm", "normal"), (str(site / "img0.dcm"), "a")])
    detail = check(validate_site_data(site, layout="dicom"), "labels without images").detail
    assert "../other/x.dcm (line 6): path '../other/x.dcm' leads outside the data folder" in detail
    assert "is an absolute path" in detail
    msd_root = write_msd(tmp_path / "msd", [lesion_mask(), lesion_mask()])
    doc = json.loads((msd_root / "dataset.json").read_text())
    doc["training"].append({"image": "../site/img0.dcm", "label": "/etc/passwd"})
    (msd_root / "dataset.json").write_text(json.dumps(doc))
    report = validate_site_data(msd_root, layout="msd")
    bad = check(report, "bad cases").detail
    assert "1 of 3 case(s)" in bad and "training[2] image '../site/img0.dcm' leads outside" in bad
    assert report.manifest["cases"] == {"total": 3, "usable": 2, "skipped": 1,
                                        "skipped_by_reason": {"leads outside the data folder": 1}}


def test_validate_with_the_runs_spacing_counts_what_a_resampling_run_loads(tmp_path):
    site = clean_site(tmp_path / "site")
    _corrupt(site / "img3.dcm", lambda ds: delattr(ds, "PixelSpacing"))
    write_dicom(site / "img4.dcm")
    write_labels(site, [(f"img{i}.dcm", "normal" if i < 2 else "pneumonia") for i in range(5)])
    assert validate_site_data(site, layout="dicom").manifest["samples"] == 5
    report = validate_site_data(site, layout="dicom", spacing="0.7")
    assert "img3.dcm (line 5): img3.dcm: no usable PixelSpacing" in check(
        report, "labels without images").detail
    assert report.manifest["samples"] == _trained_on(site, tmp_path, spacing="0.7") == 4
    with pytest.raises(ConfigError, match="spacing='x'"):
        validate_site_data(site, spacing="x")


def test_site_validate_spacing_option_reaches_the_checks(tmp_path, capsys):
    """`fedclinic site validate --spacing MM`: in the help with its default, and the images are
    checked as a resampling run reads them (a file without PixelSpacing is refused)."""
    from common.spacing_spec import SPACING_HELP

    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--spacing MM[,MM...] check the images as a run with this --spacing reads them" in text
    assert f"{SPACING_HELP} (default: '')" in text
    assert parse(["data"]).spacing == ""
    site = clean_site(tmp_path / "site")
    _corrupt(site / "img3.dcm", lambda ds: delattr(ds, "PixelSpacing"))
    write_dicom(site / "img4.dcm")
    write_labels(site, [(f"img{i}.dcm", "normal" if i < 2 else "pneumonia") for i in range(5)])
    manifest = tmp_path / "out" / "manifest.json"
    args = [str(site), "--layout", "dicom", "--manifest", str(manifest)]
    assert run_validate(parse(args)) == 0
    assert json.loads(manifest.read_text())["samples"] == 5
    assert "no usable PixelSpacing" not in capsys.readouterr().out
    assert run_validate(parse([*args, "--spacing", "0.7"])) == 0
    assert "img3.dcm: no usable PixelSpacing" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["samples"] == 4
    with pytest.raises(ConfigError, match="spacing='x'"):
        run_validate(parse([*args, "--spacing", "x"]))


def test_the_cli_names_the_file_being_read_when_an_unexpected_error_escapes(tmp_path, capsys,
                                                                            monkeypatch):
    from common.datasets import labels as labels_module
    from fedclinic.cli.errors import FAILED, run_command

    site = clean_site(tmp_path / "site")

    def broken(text, source="labels.csv"):
        raise TypeError("something nobody foresaw")

    monkeypatch.setattr(labels_module, "parse_labels", broken)
    args = argparse.Namespace(debug=False)
    code = run_command(lambda a: load_folder(site, DicomOptions()) and 0, args)
    err = capsys.readouterr().err
    assert code == FAILED
    assert (f"fedclinic: error: TypeError: something nobody foresaw (while reading "
            f"{site / 'labels.csv'}; rerun with --debug") in err


def test_skip_reasons_in_the_manifest_name_no_file(tmp_path):
    """A link leading outside the folder is a bad file; its manifest category names no path."""
    site = clean_site(tmp_path / "site")
    write_dicom(tmp_path / "Doe_Jane_MRN448812.dcm")
    (site / "link.dcm").symlink_to(tmp_path / "Doe_Jane_MRN448812.dcm")
    report = validate_site_data(site, layout="dicom")
    assert "link.dcm: a link leading outside the data folder" in check(report, "bad files").detail
    assert report.manifest["files"]["skipped_by_reason"] == {
        "a link leading outside the data folder": 1}
    assert "Doe" not in json.dumps(report.manifest) and "link.dcm" not in json.dumps(
        report.manifest)
