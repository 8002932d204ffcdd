"""Fuzzing what a hospital hands the site: mutated DICOM files, labels.csv, MedMNIST .npz files
and MSD folders, each run through `fedclinic site validate` and through the loader training uses.

Every input is judged by one property: **a clean error naming the file, or a finite image of the
declared shape** (and validate counting exactly the samples the loader trains on). Outcomes:

* ``clean_error``: the mutated file is skipped and named (in the loader's skipped list and in the
  validate report, and a ``strict`` load stops on it), or the whole input is refused with a
  `DataError` naming the file (labels.csv, dataset.json, the .npz);
* ``accepted``: it loads, every image is finite, in [0, 1] and of the declared shape, labels are
  inside the task's classes, and validate's sample count equals the loader's;
* ``crash``: anything else: an unhandled exception (validate or loader), a memory blow-up or a
  hang, an error naming no file, one bad file aborting the whole load, wrong data accepted
  (non-finite pixels, one file loaded as two samples), or validate and the loader disagreeing.

Each DICOM mutant sits in a folder with four clean files (a labels.csv row for each); each MSD
mutant next to three clean cases. Writes bench/results/fuzz_inputs.json (under the ``--phase``
key, keeping the other phase's counts) and prints one summary line per category.

    .venv/bin/python -m bench.fuzz_inputs --phase after [--dicom 200 --labels 50 --npz 30 --msd 20]

The builders (`dicom_input`, `labels_input`, `npz_input`, `msd_input`) and `judge` are also what
tests/test_fuzz_inputs.py drives with hypothesis.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset as DicomDataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from bench.dicom_files import write_dicom

RESULTS = Path(__file__).resolve().parent / "results"
CATEGORIES = ("dicom", "labels", "npz", "msd")
SIZE = 16                       # image side of every input and of the loaders' output
CASE_SECONDS = 60               # one input longer than this is a hang (bench only)
MEMORY_HEADROOM = 3 << 30       # address space allowed above the start-up's (bench only)
VERDICTS = ("clean_error", "accepted", "crash")


@dataclass(frozen=True)
class FuzzInput:
    """One mutated input on disk and what the judge needs to know about it."""

    category: str
    mutation: str               # kind:detail
    data_path: Path             # what validate / the loader are given
    layout: str                 # "dicom" | "msd" | "medmnist"
    target: str                 # the name a clean error must mention
    whole_may_fail: bool        # a refusal of the whole input is clean (labels.csv, .npz, ...)
    max_samples: int | None = None    # distinct labelled files (None: not checked)
    spacing: str = ""           # run setting spacing for the loader
    must_refuse: bool = False   # it names a file outside the data folder: loading it is a bug


@dataclass(frozen=True)
class Outcome:
    category: str
    mutation: str
    verdict: str                # one of VERDICTS
    detail: str = ""


# ====================================================================== DICOM mutants

def raw_element(ds: DicomDataset, keyword: str | int, vr: str, value: bytes) -> None:
    """Put ``value`` into ``ds`` verbatim (pydicom would refuse to encode most of these)."""
    tag = Tag(keyword)
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _clean_pixels(i: int) -> np.ndarray:
    img = np.full((SIZE, SIZE), 1000 + 10 * i, dtype=np.uint16)
    img[:, : SIZE // 2] += 400 if i % 2 else 0
    return img


def clean_site(root: Path, n: int = 4) -> list[str]:
    """n clean CT files c0..c{n-1}.dcm, labels a, a, b, b ...; returns the labels.csv rows."""
    rows = []
    for i in range(n):
        write_dicom(root / f"c{i}.dcm", _clean_pixels(i), RescaleSlope=1, RescaleIntercept=-1024,
                    WindowCenter=40, WindowWidth=400, PixelSpacing=[0.7, 0.7],
                    Manufacturer="Acme")
        rows.append(f"c{i}.dcm,{'ab'[i * 2 // n]}")
    return rows


def template_dicom(path: Path, rng: random.Random) -> pydicom.Dataset:
    """A clean file's dataset (written, then read back) for a mutant to start from."""
    pixels = np.asarray([[rng.randrange(0, 4000) for _ in range(SIZE)] for _ in range(SIZE)],
                        dtype=np.uint16)
    write_dicom(path, pixels, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40,
                WindowWidth=400, PixelSpacing=[0.7, 0.7], Manufacturer="Acme",
                InstitutionName="St Elsewhere", StudyDescription="chest")
    return pydicom.dcmread(path)


_DS_JUNK = (b"abc", b"1,5", b"one", b"1e999", b"nan", b"inf", b"-inf", b"1\\x", b"--1", b"")
_WINDOW_JUNK = (b"nan", b"inf", b"-inf", b"1e400", b"NaN\\NaN", b"abc", b"", b"40\\nan", b"0",
                b"-400", b"1e308")
_UNKNOWN_VRS = ("ZZ", "XX", "QQ", "A1", "  ", "\0\0", "sq", "ox")


def _m_rescale_text(ds, rng):
    keyword = rng.choice(("RescaleSlope", "RescaleIntercept"))
    value = rng.choice(_DS_JUNK + (b"1e308", b"0", b"1e-320"))
    raw_element(ds, keyword, "DS", value)
    return f"{keyword}={value!r}"


def _m_unknown_vr(ds, rng):
    """Marks an element for `_patch_vr` (pydicom cannot write an unknown VR itself)."""
    where = rng.choice(("Manufacturer", "PatientID", "Modality", "InstitutionName",
                        "StudyDescription", "PixelSpacing", "WindowCenter", "private",
                        "nested"))
    if where == "nested":
        item = DicomDataset()
        item.ReferencedSOPClassUID = "1.2.3"
        item.PatientName = "Doe^Jane"
        ds.ReferencedStudySequence = [item]
        tag = Tag("PatientName")
    elif where == "private":
        ds.add_new(0x00091001, "LO", "ABCD")
        tag = Tag(0x00091001)
    else:
        tag = Tag(where)
    return f"{where} VR {{vr}}", (tag, rng.choice(_UNKNOWN_VRS))


def patch_vr(data: bytes, tag: Tag, vr: str) -> bytes:
    """Replace the VR code of the last element ``tag`` in explicit-VR little-endian ``data``."""
    marker = struct.pack("<HH", tag.group, tag.element)
    at = data.rfind(marker)
    return data[:at + 4] + vr.encode("latin-1") + data[at + 6:]


def _m_window(ds, rng):
    centre, width = rng.choice(_WINDOW_JUNK), rng.choice(_WINDOW_JUNK + (b"400",) * 3)
    raw_element(ds, "WindowCenter", "DS", centre)
    raw_element(ds, "WindowWidth", "DS", width)
    return f"window {centre!r},{width!r}"


def _m_modality(ds, rng):
    value = rng.choice((b"CT\\MR", b"CT\\CT", b"", b"X" * 20, b"ct"))
    raw_element(ds, "Modality", "CS", value)
    return f"Modality={value!r}"


def _m_rows_cols(ds, rng):
    keyword = rng.choice(("Rows", "Columns"))
    value = rng.choice((0, 1, 15, 17, 32, 65535))
    setattr(ds, keyword, value)
    return f"{keyword}={value}"


def _m_bits(ds, rng):
    keyword, value = rng.choice((("BitsAllocated", 0), ("BitsAllocated", 1), ("BitsAllocated", 7),
                                 ("BitsAllocated", 12), ("BitsAllocated", 24),
                                 ("BitsAllocated", 32), ("BitsAllocated", 64),
                                 ("BitsStored", 17), ("BitsStored", 0), ("HighBit", 20),
                                 ("PixelRepresentation", 2), ("PixelRepresentation", 1)))
    setattr(ds, keyword, value)
    return f"{keyword}={value}"


def _m_photometric(ds, rng):
    value = rng.choice((b"PALETTE COLOR", b"", b"monochrome2", b"YBR_FULL", b"RGB",
                        b"MONOCHROME3", b"ARGB", b"MONOCHROME1"))
    raw_element(ds, "PhotometricInterpretation", "CS", value)
    return f"PhotometricInterpretation={value!r}"


def _m_samples(ds, rng):
    value = rng.choice((0, 2, 3, 4, 65535))
    ds.SamplesPerPixel = value
    return f"SamplesPerPixel={value}"


def _m_frames(ds, rng):
    value = rng.choice((b"0", b"-1", b"abc", b"1000000", b"2", b"1.5", b"", b"nan"))
    raw_element(ds, "NumberOfFrames", "IS", value)
    return f"NumberOfFrames={value!r}"


def _m_spacing(ds, rng):
    value = rng.choice((b"nan\\nan", b"abc", b"0\\0", b"-1\\1", b"1e400\\1", b"1e-30\\1e-30",
                        b"1e6\\1e6", b"0.7", b"inf\\inf"))
    raw_element(ds, "PixelSpacing", "DS", value)
    return f"PixelSpacing={value!r}"


def _m_pixel_data(ds, rng):
    data = ds.PixelData
    how = rng.choice(("half", "odd", "empty", "double", "one-byte"))
    ds.PixelData = {"half": data[: len(data) // 2], "odd": data[:-1], "empty": b"",
                    "double": data * 2, "one-byte": data[:1]}[how]
    return f"PixelData {how}"


def _m_voi_function(ds, rng):
    function = rng.choice((b"SIGMOID", b"BOGUS", b"LINEAR_EXACT", b""))
    width = rng.choice((b"0", b"1", b"1e-300", b"400", b"-1"))
    raw_element(ds, "VOILUTFunction", "CS", function)
    raw_element(ds, "WindowWidth", "DS", width)
    return f"VOILUTFunction={function!r} width={width!r}"


def _m_float_pixels(ds, rng):
    values = np.linspace(-1, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    bad = rng.choice((np.nan, np.inf, -np.inf, 3e38))
    values[rng.randrange(SIZE), rng.randrange(SIZE)] = bad
    del ds.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope",
                    "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    return f"FloatPixelData with {bad}"


def _m_lut(ds, rng):
    item = DicomDataset()
    item.add_new(0x00283002, "US", rng.choice(([0, 0, 16], [4096, 0, 16], [2, 0, 33])))
    item.add_new(0x00283006, "US", rng.choice(([0, 1], [], [5] * 4096)))
    ds.ModalityLUTSequence = [item]
    return f"ModalityLUTSequence {item.LUTDescriptor}"


SEMANTIC = {"rescale-text": _m_rescale_text, "unknown-vr": _m_unknown_vr,
            "window-nonfinite": _m_window, "modality": _m_modality, "rows-cols": _m_rows_cols,
            "bits": _m_bits, "photometric": _m_photometric, "samples-per-pixel": _m_samples,
            "frames": _m_frames, "pixel-spacing": _m_spacing, "pixel-data": _m_pixel_data,
            "voi-function": _m_voi_function, "float-pixels": _m_float_pixels,
            "modality-lut": _m_lut}


def _element_offsets(data: bytes) -> list[int]:
    """Byte offsets of the top-level data elements after the file meta (explicit VR LE)."""
    ds = pydicom.dcmread(io.BytesIO(data), defer_size=0)
    offsets = []
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        tell = getattr(elem, "value_tell", None)
        if tell is not None:
            long_vr = str(elem.VR) in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UN",
                                       "UR", "UT")
            offsets.append(tell - (12 if long_vr else 8))
    return offsets


def _b_insert(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(132, len(data))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return data[:at] + junk + data[at:], f"{len(junk)} bytes inserted at {at}"


def _b_truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(0, len(data))
    return data[:at], f"cut at {at} of {len(data)}"


def _b_flip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    end = data.find(b"\xe0\x7f\x10\x00")          # pixel data: flips there are just pixels
    out = bytearray(data)
    spots = [rng.randrange(128, end if end > 128 else len(data)) for _ in range(rng.randint(1, 8))]
    for at in spots:
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out), f"bits flipped at {sorted(spots)}"


def _b_length(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    offsets = _element_offsets(data)
    at = rng.choice(offsets)
    out = bytearray(data)
    vr = bytes(out[at + 4: at + 6])
    if vr in (b"OB", b"OW", b"OF", b"SQ", b"UN", b"UT"):
        value = rng.choice((0x7FFFFFF0, 0xFFFFFF00, len(data) * 3))
        out[at + 8: at + 12] = struct.pack("<I", value)
    else:
        value = rng.choice((0xFFFE, 0x7FF0, 255, 3))
        out[at + 6: at + 8] = struct.pack("<H", value)
    return bytes(out), f"element at {at} ({vr!r}) length {value}"


def _b_preamble(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    how = rng.choice(("no-dicm", "text", "empty", "zeros"))
    out = {"no-dicm": data[:128] + b"DICX" + data[132:], "text": b"patient list\n" * 20,
           "empty": b"", "zeros": b"\0" * len(data)}[how]
    return out, how


def _b_transfer_syntax(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Replace the file meta's TransferSyntaxUID value (group length adjusted)."""
    value = rng.choice((b"1.2.3.4", b"", b"abc", b"1.2.840.10008.1.2.4.50",
                        b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.5",
                        b" ", b"1.2.840.10008.1.2.4.90"))
    padded = value + (b"\0" if len(value) % 2 else b"")
    at = data.find(b"\x02\x00\x10\x00UI")
    old_len = struct.unpack("<H", data[at + 6: at + 8])[0]
    new = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(padded)) + padded
    out = bytearray(data[:at] + new + data[at + 8 + old_len:])
    group = out.find(b"\x02\x00\x00\x00UL\x04\x00")
    if group >= 0:
        length = struct.unpack("<I", out[group + 8: group + 12])[0]
        out[group + 8: group + 12] = struct.pack("<I", length + len(padded) - old_len)
    return bytes(out), f"TransferSyntaxUID={value!r}"


BYTE_LEVEL = {"byte-insert": _b_insert, "byte-truncate": _b_truncate, "byte-flip": _b_flip,
              "length-overwrite": _b_length, "preamble": _b_preamble,
              "transfer-syntax": _b_transfer_syntax}
DICOM_KINDS = (*SEMANTIC, *BYTE_LEVEL, "series-position", "spacing-resample")


def _write_mutant(path: Path, kind: str, rng: random.Random) -> str:
    ds = template_dicom(path, rng)
    if kind in SEMANTIC:
        detail = SEMANTIC[kind](ds, rng)
        ds.save_as(path, enforce_file_format=False)
        if isinstance(detail, tuple):                     # an unknown VR, patched in
            detail, (tag, vr) = detail
            path.write_bytes(patch_vr(path.read_bytes(), tag, vr))
            detail = detail.format(vr=repr(vr))
        return detail
    data = path.read_bytes()
    mutated, detail = BYTE_LEVEL[kind](data, rng)
    path.write_bytes(mutated)
    return detail


def dicom_input(rng: random.Random, root: Path, kind: str | None = None) -> FuzzInput:
    """A DICOM site folder: four clean files and one mutant (``kind`` or a random one)."""
    kind = kind or rng.choice(DICOM_KINDS)
    root.mkdir(parents=True, exist_ok=True)
    if kind == "series-position":
        return _series_input(rng, root)
    rows = clean_site(root)
    spacing = ""
    if kind == "spacing-resample":             # a mutated spacing, read with the run's spacing
        ds = template_dicom(root / "mutant.dcm", rng)
        detail = _m_spacing(ds, rng)
        ds.save_as(root / "mutant.dcm", enforce_file_format=False)
        spacing = "0.7,0.7"
    else:
        detail = _write_mutant(root / "mutant.dcm", kind, rng)
    rows.insert(rng.randrange(len(rows) + 1), f"mutant.dcm,{rng.choice('ab')}")
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return FuzzInput("dicom", f"{kind}:{detail}", root, "dicom", "mutant.dcm",
                     whole_may_fail=False, max_samples=5, spacing=spacing)


def _series_input(rng: random.Random, root: Path) -> FuzzInput:
    """Series-keyed folder: two clean 3-slice series and one whose middle slice is mutated."""
    rows = []
    for s in range(3):
        series = generate_uid()
        for i in range(3):
            name = "mutant.dcm" if (s, i) == (2, 1) else f"s{s}_{i}.dcm"
            ds = write_dicom(root / name, _clean_pixels(s + i), series=series,
                             ImagePositionPatient=[0.0, 0.0, 2.0 * i],
                             ImageOrientationPatient=[1, 0, 0, 0, 1, 0], InstanceNumber=i + 1,
                             PixelSpacing=[0.7, 0.7])
        rows.append(f"{series},{'aab'[s]}" if s < 2 else f"{series},b")
    ds = pydicom.dcmread(root / "mutant.dcm")
    keyword, value = rng.choice((("ImagePositionPatient", b"abc\\0\\0"),
                                 ("ImagePositionPatient", b"nan\\nan\\nan"),
                                 ("ImagePositionPatient", b"1\\2"),
                                 ("ImagePositionPatient", b""),
                                 ("ImageOrientationPatient", b"0\\0\\0\\0\\0\\0"),
                                 ("ImageOrientationPatient", b"abc"),
                                 ("InstanceNumber", b"x"),
                                 ("ImagePositionPatient", b"0\\0\\2")))
    raw_element(ds, keyword, "IS" if keyword == "InstanceNumber" else "DS", value)
    if keyword == "InstanceNumber":
        del ds.ImagePositionPatient
    ds.save_as(root / "mutant.dcm", enforce_file_format=False)
    (root / "labels.csv").write_text("SeriesInstanceUID,label\n" + "\n".join(rows) + "\n")
    return FuzzInput("dicom", f"series-position:{keyword}={value!r}", root, "dicom",
                     "mutant.dcm", whole_may_fail=False, max_samples=3)


# ====================================================================== labels.csv mutants

def _labels_site(root: Path) -> list[str]:
    """Six clean files under sub/, labels a, a, a, b, b, b; returns their relative paths."""
    names = []
    for i in range(6):
        rel = f"sub/x{i}.dcm"
        write_dicom(root / rel, _clean_pixels(i), PixelSpacing=[0.7, 0.7])
        names.append(rel)
    return names


def _rows(names: list[str]) -> list[str]:
    return [f"{n},{'ab'[i // 3]}" for i, n in enumerate(names)]


LABEL_KINDS = ("dot-slash", "parent-hop", "double-slash", "backslash", "symlink", "hardlink",
               "escape-relative", "escape-absolute", "inside-absolute", "outside-symlink",
               "huge-label", "negative-label", "mixed-labels", "junk-bytes", "not-utf8", "empty",
               "header-only", "no-label-column", "two-key-columns", "bad-quote", "nul-bytes",
               "long-field", "bad-split", "extra-cells", "uid-whitespace", "many-classes")


def labels_input(rng: random.Random, root: Path, kind: str | None = None) -> FuzzInput:
    """A clean six-file DICOM folder with a mutated labels.csv (``kind`` or a random one)."""
    kind = kind or rng.choice(LABEL_KINDS)
    root.mkdir(parents=True, exist_ok=True)
    names = _labels_site(root)
    rows, header, distinct = _rows(names), "path,label", 6
    text: str | bytes | None = None
    first = names[0]
    if kind == "dot-slash":
        rows.append(f"./{first},a")
    elif kind == "parent-hop":
        rows.append(f"sub/../{first},a")
    elif kind == "double-slash":
        rows.append(first.replace("/", "//") + ",a")
    elif kind == "backslash":
        rows.append(first.replace("/", "\\") + ",a")
    elif kind in ("symlink", "hardlink"):
        link = root / "sub" / "alias.dcm"
        if kind == "symlink":
            link.symlink_to(Path(first).name)
        else:
            os.link(root / first, link)
        rows.append("sub/alias.dcm,b")
    elif kind == "escape-relative":
        outside = root.parent / f"{root.name}-other" / "x.dcm"
        write_dicom(outside, _clean_pixels(9))
        rows.append(f"../{root.name}-other/x.dcm,a")
    elif kind == "escape-absolute":
        outside = root.parent / f"{root.name}-abs" / "x.dcm"
        write_dicom(outside, _clean_pixels(9))
        rows.append(f"{outside},a")
    elif kind == "inside-absolute":
        rows[0] = f"{root / first},a"
    elif kind == "outside-symlink":
        outside = root.parent / f"{root.name}-linked" / "x.dcm"
        write_dicom(outside, _clean_pixels(9))
        (root / "sub" / "out.dcm").symlink_to(outside)
        rows.append("sub/out.dcm,b")
    elif kind == "huge-label":
        rows[0] = f"{first},{rng.choice(('1000000000', '10' * 20, '999999999999'))}"
        rows = [f"{n},{i % 2}" if i else rows[0] for i, n in enumerate(names)]
    elif kind == "negative-label":
        rows = [f"{n},{(-1) ** i * i}" for i, n in enumerate(names)]
    elif kind == "mixed-labels":
        rows = [f"{n},{'1' if i % 2 else 'one'}" for i, n in enumerate(names)]
    elif kind == "junk-bytes":
        text = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    elif kind == "not-utf8":
        text = ("path,label\n" + "\n".join(rows)).encode("utf-8") + b"\xff\xfe,\xe9\n"
    elif kind == "empty":
        text = b""
    elif kind == "header-only":
        rows = []
    elif kind == "no-label-column":
        header = "path,class"
    elif kind == "two-key-columns":
        header = "path,SOPInstanceUID,label"
        rows = [f"{n},1.2.{i},{'ab'[i // 3]}" for i, n in enumerate(names)]
    elif kind == "bad-quote":
        rows.append('"sub/x1.dcm,a')
    elif kind == "nul-bytes":
        rows[1] = rows[1].replace(",", "\0,")
    elif kind == "long-field":
        rows.append("a" * 200_000 + ",a")
    elif kind == "bad-split":
        header = "path,label,split"
        rows = [f"{r},{rng.choice(('train', 'TEST', 'validation', '', 'tr ain'))}" for r in rows]
    elif kind == "extra-cells":
        rows.append(f"{names[1]},a,extra")
    elif kind == "uid-whitespace":
        header = "SOPInstanceUID,label"
        uids = [str(pydicom.dcmread(root / n).SOPInstanceUID) for n in names]
        rows = [f"{u},{'ab'[i // 3]}" for i, u in enumerate(uids)] + [f" {uids[0]} ,b"]
    elif kind == "many-classes":
        rows = [f"{n},{i * 10 ** 8}" for i, n in enumerate(names)]
    if text is None:
        text = (header + "\n" + "\n".join(rows) + "\n").encode("utf-8")
    (root / "labels.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    target = "out.dcm" if kind == "outside-symlink" else "labels.csv"
    return FuzzInput("labels", kind, root, "dicom", target, whole_may_fail=True,
                     max_samples=distinct, must_refuse=kind in _ESCAPES)


# ====================================================================== npz mutants

def _npz_arrays(rng: random.Random) -> dict[str, np.ndarray]:
    nprng = np.random.default_rng(rng.randrange(1 << 30))
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = nprng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    return arrays


def _npy_bytes(array: np.ndarray, shape: tuple[int, ...] | None = None,
               descr: str | None = None) -> bytes:
    """An .npy member; ``shape`` / ``descr`` override what its header declares."""
    header = {"descr": descr or np.lib.format.dtype_to_descr(array.dtype),
              "fortran_order": False, "shape": tuple(shape if shape is not None else array.shape)}
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    out.write(np.ascontiguousarray(array).tobytes())
    return out.getvalue()


def _write_zip(path: Path, members: dict[str, bytes], compress: bool) -> None:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


NPZ_KINDS = ("text-file", "csv-file", "empty", "random-bytes", "npy-file", "gzip-file",
             "huge-shape", "huge-shape-labels", "shape-too-small", "missing-key", "float-images",
             "huge-label", "negative-label", "float-labels", "length-mismatch", "non-square",
             "zero-train", "object-array", "corrupt-header", "truncated-zip", "zip-bomb-header",
             "bad-descr", "label-width", "multilabel-junk")


def npz_input(rng: random.Random, root: Path, kind: str | None = None) -> FuzzInput:
    """One mutated MedMNIST-layout .npz file (``kind`` or a random one)."""
    kind = kind or rng.choice(NPZ_KINDS)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "site.npz"
    arrays = _npz_arrays(rng)
    members = {f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}
    raw: bytes | None = None
    if kind == "text-file":
        raw = b"this is a text file, not an archive\n" * rng.randint(1, 5)
    elif kind == "csv-file":
        raw = b"path,label\nx.dcm,1\n"
    elif kind == "empty":
        raw = b""
    elif kind == "random-bytes":
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    elif kind == "npy-file":
        raw = _npy_bytes(arrays["train_images"])
    elif kind == "gzip-file":
        import gzip
        raw = gzip.compress(b"hello")
    elif kind == "huge-shape":
        members["train_images.npy"] = _npy_bytes(arrays["train_images"],
                                                 shape=rng.choice(((10 ** 6, SIZE, SIZE),
                                                                   (12, 10 ** 5, 10 ** 5),
                                                                   (2 ** 40, 1, 1))))
    elif kind == "huge-shape-labels":
        members["val_labels.npy"] = _npy_bytes(arrays["val_labels"], shape=(10 ** 11, 1))
    elif kind == "shape-too-small":
        members["train_images.npy"] = _npy_bytes(arrays["train_images"], shape=(2, SIZE, SIZE))
    elif kind == "missing-key":
        members.pop(rng.choice(sorted(members)))
    elif kind == "float-images":
        members["train_images.npy"] = _npy_bytes(arrays["train_images"].astype(np.float32)
                                                 * np.float32(np.nan))
    elif kind == "huge-label":
        split = rng.choice(("train", "val", "test"))
        labels = arrays[f"{split}_labels"].astype(np.int64)
        labels[0, 0] = rng.choice((10 ** 9, 2 ** 40, 1000))
        members[f"{split}_labels.npy"] = _npy_bytes(labels)
    elif kind == "negative-label":
        labels = arrays["test_labels"].astype(np.int64)
        labels[1, 0] = -3
        members["test_labels.npy"] = _npy_bytes(labels)
    elif kind == "float-labels":
        members["train_labels.npy"] = _npy_bytes(arrays["train_labels"].astype(np.float32) + 0.5)
    elif kind == "length-mismatch":
        members["val_labels.npy"] = _npy_bytes(arrays["val_labels"][:2])
    elif kind == "non-square":
        members["train_images.npy"] = _npy_bytes(arrays["train_images"][:, :, :8])
    elif kind == "zero-train":
        members["train_images.npy"] = _npy_bytes(arrays["train_images"][:0])
        members["train_labels.npy"] = _npy_bytes(arrays["train_labels"][:0])
    elif kind == "object-array":
        members["train_labels.npy"] = _pickled_member()
    elif kind == "corrupt-header":
        member = bytearray(members["train_images.npy"])
        for _ in range(rng.randint(1, 6)):
            member[rng.randrange(8, 60)] = rng.randrange(32, 127)
        members["train_images.npy"] = bytes(member)
    elif kind == "truncated-zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        whole = buffer.getvalue()
        raw = whole[: rng.randrange(30, len(whole))]
    elif kind == "zip-bomb-header":
        members["train_images.npy"] = _npy_bytes(np.zeros((10 ** 4, SIZE, SIZE), np.uint8))
    elif kind == "bad-descr":
        members["train_images.npy"] = _npy_bytes(arrays["train_images"],
                                                 descr=rng.choice(("<U9", "|V3", "<c16", "|b1")))
    elif kind == "label-width":
        members["test_labels.npy"] = _npy_bytes(np.zeros((4, 3), np.uint8))
    elif kind == "multilabel-junk":
        for split in ("train", "val", "test"):
            n = len(arrays[f"{split}_labels"])
            members[f"{split}_labels.npy"] = _npy_bytes(np.full((n, 4), 7, np.uint8))
    if raw is None:
        _write_zip(path, members, compress=rng.random() < 0.5 or kind == "zip-bomb-header")
    else:
        path.write_bytes(raw)
    return FuzzInput("npz", kind, path, "medmnist", "site.npz", whole_may_fail=True)


def _pickled_member() -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True)
    return out.getvalue()


# ====================================================================== MSD mutants

def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine),
             path)


def _nifti_without_spacing(path: Path, array: np.ndarray, pixdim: float) -> None:
    """A .nii.gz whose header gives no usable voxel size (pixdim patched after nibabel wrote it:
    nibabel itself keeps header and affine consistent)."""
    import gzip

    import nibabel as nib

    raw = bytearray(nib.Nifti1Image(array, np.eye(4)).to_bytes())
    raw[80:92] = struct.pack("<3f", pixdim, pixdim, pixdim)      # pixdim[1:4]
    raw[252:256] = struct.pack("<hh", 0, 0)                       # qform_code, sform_code
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(raw)))


def _msd_case(root: Path, name: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(8, 8, 4)).astype(np.float32)
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:5, 2:5, 1:3] = 1
    _nifti(root / "imagesTr" / f"{name}.nii.gz", image)
    _nifti(root / "labelsTr" / f"{name}.nii.gz", mask)
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


MSD_KINDS = ("escape-relative", "escape-absolute", "etc-passwd", "outside-symlink",
             "duplicate-entry", "missing-file", "image-not-string", "labels-gap",
             "labels-huge", "training-empty", "bad-json", "non-finite-image",
             "huge-mask-value", "fractional-mask", "mask-shape", "channels", "text-as-nifti",
             "zero-dim", "corrupt-gzip", "bad-affine")


def msd_input(rng: random.Random, root: Path, kind: str | None = None) -> FuzzInput:
    """An MSD folder: three clean cases plus a mutated fourth case or dataset.json."""
    kind = kind or rng.choice(MSD_KINDS)
    root.mkdir(parents=True, exist_ok=True)
    training = [_msd_case(root, f"case{i}", i) for i in range(3)]
    doc: dict | list = {"name": "Fuzz", "modality": {"0": "CT"},
                        "labels": {"0": "background", "1": "lesion"}, "training": training}
    mutant = {"image": "./imagesTr/mutant.nii.gz", "label": "./labelsTr/mutant.nii.gz"}
    whole, target, spacing = False, "mutant.nii.gz", ""
    image = np.random.default_rng(7).normal(size=(8, 8, 4)).astype(np.float32)
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[1:3, 1:3, 1] = 1
    image_path = root / "imagesTr" / "mutant.nii.gz"
    label_path = root / "labelsTr" / "mutant.nii.gz"
    write_pair = True
    if kind == "escape-relative":
        other = root.parent / f"{root.name}-other"
        _nifti(other / "x.nii.gz", image)
        mutant["image"], target = f"../{root.name}-other/x.nii.gz", "x.nii.gz"
    elif kind == "escape-absolute":
        other = root.parent / f"{root.name}-abs"
        _nifti(other / "x.nii.gz", image)
        mutant["image"], target = str(other / "x.nii.gz"), "x.nii.gz"
    elif kind == "etc-passwd":
        mutant["label"], target = "/etc/passwd", "/etc/passwd"
    elif kind == "outside-symlink":
        other = root.parent / f"{root.name}-linked"
        _nifti(other / "x.nii.gz", image)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        image_path.symlink_to(other / "x.nii.gz")
        _nifti(label_path, mask)
        write_pair = False
    elif kind == "duplicate-entry":
        mutant = dict(training[0])
        target = "case0.nii.gz"
        write_pair = False
    elif kind == "missing-file":
        _nifti(label_path, mask)
        write_pair = False
    elif kind == "image-not-string":
        mutant["image"], whole, target = rng.choice((3, None, ["a"])), True, "dataset.json"
    elif kind == "labels-gap":
        doc["labels"], whole, target = {"0": "bg", "2": "x"}, True, "dataset.json"
    elif kind == "labels-huge":
        doc["labels"] = {"0": "bg", str(10 ** 9): "x"}
        whole, target = True, "dataset.json"
    elif kind == "training-empty":
        doc["training"], whole, target = [], True, "dataset.json"
    elif kind == "bad-json":
        doc, whole, target = rng.choice((None, [1, 2], "text")), True, "dataset.json"
    elif kind == "non-finite-image":
        image[0, 0, 0] = rng.choice((np.nan, np.inf, -np.inf, 3e38))
        if rng.random() < 0.5:
            image[:, :, 2] = np.nan
    elif kind == "huge-mask-value":
        mask = mask.astype(np.int32)
        mask[0, 0, 0] = 10 ** 9
    elif kind == "fractional-mask":
        mask = mask.astype(np.float32) * 0.5
    elif kind == "mask-shape":
        mask = np.zeros((8, 8, 5), np.uint8)
    elif kind == "channels":
        image = np.stack([image, image], axis=-1)
    elif kind == "text-as-nifti":
        image_path.parent.mkdir(parents=True, exist_ok=True)
        image_path.write_bytes(b"not a nifti file\n")
        _nifti(label_path, mask)
        write_pair = False
    elif kind == "zero-dim":
        image, mask = np.zeros((8, 0, 4), np.float32), np.zeros((8, 0, 4), np.uint8)
    elif kind == "corrupt-gzip":
        _nifti(image_path, image)
        _nifti(label_path, mask)
        data = bytearray(image_path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
        image_path.write_bytes(bytes(data))
        write_pair = False
    elif kind == "bad-affine":                  # no usable voxel size, no qform / sform
        for path, array in ((image_path, image), (label_path, mask)):
            _nifti_without_spacing(path, array, rng.choice((np.inf, np.nan, 1e30, 1e-30)))
        write_pair, spacing = False, "1,1,1"
    if write_pair:
        _nifti(image_path, image)
        _nifti(label_path, mask)
    if isinstance(doc, dict) and kind not in ("training-empty",):
        doc["training"] = [*doc["training"], mutant]
    text = "{not json" if doc is None else json.dumps(doc)
    (root / "dataset.json").write_text(text)
    return FuzzInput("msd", kind, root, "msd", target, whole_may_fail=whole, spacing=spacing,
                     max_samples=3 if kind == "duplicate-entry" else None,
                     must_refuse=kind in _ESCAPES)


_ESCAPES = ("escape-relative", "escape-absolute", "etc-passwd", "outside-symlink")


BUILDERS: dict[str, Callable[..., FuzzInput]] = {
    "dicom": dicom_input, "labels": labels_input, "npz": npz_input, "msd": msd_input}
KINDS = {"dicom": DICOM_KINDS, "labels": LABEL_KINDS, "npz": NPZ_KINDS, "msd": MSD_KINDS}


# ====================================================================== the judge

class Violation(Exception):
    """The property does not hold for this input (reported as a crash)."""


def judge(inp: FuzzInput, cache_dir: Path) -> Outcome:
    """Run ``inp`` through validate and the loader and classify it (see the module docstring)."""
    try:
        verdict, detail = _judge(inp, cache_dir)
    except Violation as exc:
        verdict, detail = "crash", str(exc)
    except MemoryError:
        verdict, detail = "crash", "MemoryError (an allocation the input asked for)"
    except _Hang:
        verdict, detail = "crash", f"hang (> {CASE_SECONDS} s)"
    except Exception as exc:  # noqa: BLE001 - an unhandled exception is what is counted
        verdict, detail = "crash", f"unhandled {type(exc).__name__}: {_short(exc)}"
    return Outcome(inp.category, inp.mutation, verdict, detail)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def _judge(inp: FuzzInput, cache_dir: Path) -> tuple[str, str]:
    from client.validate import validate_site_data

    try:
        report = validate_site_data(inp.data_path, layout=inp.layout, **_validate_options(inp))
    except Exception as exc:
        raise Violation(f"validate raised {type(exc).__name__}: {_short(exc)}") from None
    text = report.render()
    try:
        data = _load(inp, cache_dir, strict=False)
    except _Hang:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        return _refused(inp, exc, text)
    _check_arrays(inp, data)
    _check_counts(inp, report, data)
    skipped = [f"{where}: {why}" for where, why in data.skipped]
    named = [s for s in skipped if inp.target in s]
    if any("unexpected error" in s for s in skipped):
        raise Violation(f"a file skipped only by the catch-all: {_short(Exception(skipped[0]))}")
    if not named and inp.must_refuse:
        raise Violation("a path outside the data folder was followed and loaded")
    if not named:
        return "accepted", ""
    if inp.target not in text:
        raise Violation(f"the loader skips {inp.target} but validate does not name it")
    _check_strict(inp, cache_dir)
    return "clean_error", _short(Exception(named[0]))


def _validate_options(inp: FuzzInput) -> dict:
    """``spacing=`` when the input is read with one (validate had no such setting before
    issue 11: then every input is validated without it)."""
    import inspect

    from client.validate import validate_site_data

    if inp.spacing and "spacing" in inspect.signature(validate_site_data).parameters:
        return {"spacing": inp.spacing}
    return {}


def _refused(inp: FuzzInput, exc: Exception, report_text: str) -> tuple[str, str]:
    from common.config import ConfigError
    from common.datasets.base import DataError

    if not isinstance(exc, (DataError, ConfigError)):
        raise Violation(f"loader raised {type(exc).__name__}: {_short(exc)}")
    if not inp.whole_may_fail:
        raise Violation(f"one bad file aborted the whole load: {_short(exc)}")
    if inp.target not in str(exc):
        raise Violation(f"the error names no file ({inp.target}): {_short(exc)}")
    if "error" not in report_text.lower() and "ERROR" not in report_text:
        raise Violation("the loader refuses the input but validate passes it")
    return "clean_error", _short(exc)


def _load(inp: FuzzInput, cache_dir: Path, strict: bool):
    if inp.layout == "dicom":
        from common.datasets.dicom.loader import load_folder
        from common.datasets.dicom.options import DicomOptions

        return load_folder(inp.data_path, DicomOptions(size=SIZE, strict=strict,
                                                       cache_dir=str(cache_dir),
                                                       spacing=inp.spacing))
    if inp.layout == "msd":
        from common.datasets.msd import MsdOptions, load_folder

        return load_folder(inp.data_path, MsdOptions(size=8, spatial_dims=3, strict=strict,
                                                     cache_dir=str(cache_dir),
                                                     spacing=inp.spacing))
    from common.datasets.medmnist import read_npz

    return read_npz(inp.data_path)


def _splits(data) -> list:
    return [s for s in (data.train, data.val, data.test) if s is not None]


def _check_arrays(inp: FuzzInput, data) -> None:
    """Finite images in [0, 1] of the declared shape; labels / masks inside the classes."""
    task = data.task
    side = task.size
    for split in _splits(data):
        images = split.images
        expected = (task.channels,) + (side,) * task.spatial_dims
        if images.shape[1:] != expected:
            raise Violation(f"image shape {images.shape[1:]} but the task declares {expected}")
        if not np.all(np.isfinite(images)):
            raise Violation(f"{int((~np.isfinite(images)).sum())} non-finite pixel(s) accepted")
        if images.size and (images.min() < 0 or images.max() > 1):
            raise Violation(f"pixels outside [0, 1]: {images.min()}..{images.max()}")
        labels = np.asarray(split.labels)
        if task.kind != "multilabel" and labels.size and (
                labels.min() < 0 or labels.max() >= task.num_classes):
            raise Violation(f"label {labels.max()} outside the {task.num_classes} classes")
        if split.masks is not None and split.masks.size and split.masks.max() >= task.num_classes:
            raise Violation(f"mask value {split.masks.max()} outside the classes")
    if len(task.class_names) > 10_000 or task.num_classes > 10_000:
        raise Violation(f"{task.num_classes} classes built from the labels")


def _check_counts(inp: FuzzInput, report, data) -> None:
    """validate's sample count equals the loader's; one file is at most one sample."""
    total = sum(len(s) for s in _splits(data))
    manifest = report.manifest
    if inp.layout == "dicom":
        counted = manifest.get("samples")
    elif inp.layout == "msd":
        counted = manifest.get("cases", {}).get("usable")
        total = total if data.task.spatial_dims == 3 else counted
    else:
        counted = sum(manifest.get("samples", {}).values()) if manifest.get("samples") else None
    if counted != total:
        raise Violation(f"validate counts {counted} sample(s), the loader trains on {total}")
    if inp.max_samples is not None and total > inp.max_samples:
        raise Violation(f"{total} samples from {inp.max_samples} distinct labelled files")


def _check_strict(inp: FuzzInput, cache_dir: Path) -> None:
    from common.datasets.base import DataError

    try:
        _load(inp, cache_dir, strict=True)
    except DataError as exc:
        if inp.target not in str(exc) and inp.target not in str(getattr(exc, "path", "")):
            raise Violation(f"strict stops without naming {inp.target}: {_short(exc)}") from None
        return
    raise Violation(f"strict loads despite the bad {inp.target}")


# ====================================================================== the run

class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def _alarm(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _limit_memory(headroom: int) -> None:
    """Cap the address space at today's plus ``headroom``: a runaway allocation is a
    MemoryError (counted as a crash) instead of a machine out of memory."""
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, hard))


def run(counts: dict[str, int], seed: int, workdir: Path,
        log: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """``counts[category]`` inputs per category, kinds in turn with seeded parameters."""
    outcomes = []
    for category, n in counts.items():
        kinds = KINDS[category]
        for i in range(n):
            rng = random.Random(f"{seed}:{category}:{i}")
            root = workdir / category / f"{i:04d}"
            cache = workdir / "cache" / category / f"{i:04d}"
            with _time_limit(CASE_SECONDS):
                try:
                    inp = BUILDERS[category](rng, root / "data", kinds[i % len(kinds)])
                    outcome = judge(inp, cache)
                except _Hang:
                    outcome = Outcome(category, kinds[i % len(kinds)], "crash", "hang")
            outcomes.append(outcome)
            if log:
                log(outcome)
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
    return outcomes


def summarise(outcomes: list[Outcome]) -> dict:
    summary = {}
    for category in CATEGORIES:
        mine = [o for o in outcomes if o.category == category]
        if not mine:
            continue
        verdicts = Counter(o.verdict for o in mine)
        crashes = [o for o in mine if o.verdict == "crash"]
        summary[category] = {
            "tried": len(mine), **{v: verdicts.get(v, 0) for v in VERDICTS},
            "crash_kinds": dict(Counter(o.mutation.split(":")[0] for o in crashes)),
            "crashes": [f"{o.mutation}: {o.detail}" for o in crashes],
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", default="after", choices=("before", "after"),
                        help="key the counts are stored under (default: after)")
    for category, default in (("dicom", 200), ("labels", 50), ("npz", 30), ("msd", 20)):
        parser.add_argument(f"--{category}", type=int, default=default,
                            help=f"{category} inputs (default: {default})")
    parser.add_argument("--seed", type=int, default=0, help="mutation seed (default: 0)")
    parser.add_argument("--out", default=str(RESULTS / "fuzz_inputs.json"),
                        help="result file (default: bench/results/fuzz_inputs.json)")
    parser.add_argument("--verbose", action="store_true", help="print every outcome")
    args = parser.parse_args(argv)
    counts = {c: getattr(args, c) for c in CATEGORIES}
    warnings.simplefilter("ignore")         # pydicom / numpy warn on most mutants
    import monai.transforms  # noqa: F401 - import before the memory cap and the timers
    import nibabel  # noqa: F401
    import client.validate  # noqa: F401
    _limit_memory(MEMORY_HEADROOM)
    start = time.perf_counter()
    log = (lambda o: print(f"{o.category:6s} {o.verdict:11s} {o.mutation}  {o.detail}")
           ) if args.verbose else None
    with tempfile.TemporaryDirectory(prefix="fuzz-inputs-") as tmp:
        outcomes = run(counts, args.seed, Path(tmp), log)
    summary = summarise(outcomes)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    previous[args.phase] = {"seed": args.seed, "seconds": round(time.perf_counter() - start, 1),
                            "command": "python -m bench.fuzz_inputs --phase " + args.phase,
                            "tree": str(Path(__file__).resolve().parent.parent),
                            "categories": summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(previous, indent=2) + "\n")
    for category, s in summary.items():
        print(f"bench.fuzz_inputs [{args.phase}] {category}: {s['tried']} tried, "
              f"{s['clean_error']} clean error, {s['accepted']} accepted, {s['crash']} crash")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
