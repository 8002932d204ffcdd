"""DICOM reading: rescale, windows, MONOCHROME1, multi-frame, series order, bad files, the folder
loader (labels join, splits, tags, skipping, strict) and the content-keyed array cache."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, JPEGLSLossless, generate_uid

from bench.dicom_files import write_dicom
from common.config import ConfigError, RunConfig
from common.datasets import load_dataset
from common.datasets.base import DataError
from common.datasets.cache import ArrayCache, TAG_FILE, cache_key
from common.datasets.dicom import loader, sample
from common.datasets.dicom.header import DicomFileError, read_header
from common.datasets.dicom.pixels import _decode_failure, read_pixels
from common.datasets.dicom.scan import scan, scan_headers
from common.datasets.dicom.series import assemble_series

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"   # bundled, no network


def write_series(folder: Path, values: list[np.ndarray], gap: float = 2.5, shuffle: bool = True,
                 **attrs) -> tuple[str, list[Path]]:
    """One axial series, slice i at z = 10 + gap * i; files written (and named) in random order."""
    series = generate_uid()
    order = list(range(len(values)))
    if shuffle:
        random.Random(1).shuffle(order)
    paths = []
    for name, i in enumerate(order):
        paths.append(write_dicom(folder / f"img{name:03d}", values[i], series=series,
                                 ImagePositionPatient=[0.0, 0.0, 10.0 + gap * i],
                                 ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                                 PixelSpacing=[0.8, 0.6], **attrs))
    return series, paths


# --------------------------------------------------------------------------- pixels

def _ct_values() -> np.ndarray:
    # stored s -> HU = 2 s - 1024: -424, -160, 40, 240, 576 (and a second row)
    return np.array([[300, 432, 532, 632, 800]] * 2, dtype=np.int16)


def test_ct_rescale_then_window_maps_hu_as_expected(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", _ct_values(), RescaleSlope=2, RescaleIntercept=-1024)
    image, meta = read_pixels(path, window="40,400")        # HU -160 .. 240
    assert image.dtype == np.float32 and image.shape == (2, 5)
    np.testing.assert_allclose(image[0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=0.005)
    assert meta["modality"] == "CT" and (meta["rows"], meta["cols"], meta["frames"]) == (2, 5, 1)


def test_file_window_is_used_when_no_window_given_and_min_max_otherwise(tmp_path):
    own = write_dicom(tmp_path / "own.dcm", _ct_values(), RescaleSlope=2,
                      RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    np.testing.assert_allclose(read_pixels(own)[0][0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=0.005)
    # the window argument overrides the file's: a wide window keeps all HU values apart
    wide = read_pixels(own, window="0,2000")[0][0]
    np.testing.assert_allclose(wide, (np.array([-424, -160, 40, 240, 576]) + 1000) / 2000,
                               atol=0.002)
    plain = write_dicom(tmp_path / "plain.dcm", _ct_values(), RescaleSlope=2,
                        RescaleIntercept=-1024)
    np.testing.assert_allclose(read_pixels(plain)[0][0],
                               (np.array([300, 432, 532, 632, 800]) - 300) / 500, atol=1e-6)


def test_mr_min_max_and_spacing(tmp_path):
    pixels = np.arange(48, dtype=np.uint16).reshape(6, 8) * 10 + 100
    path = write_dicom(tmp_path / "mr", pixels, modality="MR", PixelSpacing=[0.5, 0.7],
                       Manufacturer="Siemens")
    image, meta = read_pixels(path)
    assert image.min() == 0.0 and image.max() == 1.0
    np.testing.assert_allclose(image, (pixels - 100) / 470, atol=1e-6)
    assert meta["spacing"] == (0.5, 0.7) and meta["manufacturer"] == "Siemens"
    assert meta["modality"] == "MR" and meta["photometric"] == "MONOCHROME2"


def test_monochrome1_is_inverted(tmp_path):
    pixels = np.array([[0, 100, 200], [300, 400, 500]], dtype=np.uint16)
    path = write_dicom(tmp_path / "cr.dcm", pixels, modality="CR", photometric="MONOCHROME1")
    image, meta = read_pixels(path)
    np.testing.assert_allclose(image, 1.0 - pixels / 500, atol=1e-6)
    assert image[0, 0] == 1.0 and image[1, 2] == 0.0 and meta["photometric"] == "MONOCHROME1"


def test_multiframe_gives_frames_first(tmp_path):
    frames = np.stack([np.full((4, 6), v, dtype=np.uint16) for v in (0, 50, 100)])
    path = write_dicom(tmp_path / "mf.dcm", frames, modality="MR", SliceThickness=3.0,
                       PixelSpacing=[1.0, 1.0])
    image, meta = read_pixels(path)
    assert image.shape == (3, 4, 6) and meta["frames"] == 3
    np.testing.assert_allclose(image[:, 0, 0], [0.0, 0.5, 1.0])   # one scale for all frames
    assert meta["spacing"] == (1.0, 1.0, 3.0)


def test_shuffled_series_is_sorted_along_the_normal_with_spacing(tmp_path):
    values = [np.full((4, 4), 100 * i, dtype=np.uint16) for i in range(5)]
    _, paths = write_series(tmp_path, values, gap=2.5)
    volume, spacing = assemble_series(paths)
    assert volume.shape == (5, 4, 4)
    np.testing.assert_allclose(volume[:, 0, 0], [0.0, 0.25, 0.5, 0.75, 1.0])
    assert spacing == pytest.approx((2.5, 0.8, 0.6))


def test_series_with_different_slice_sizes_is_rejected(tmp_path):
    values = [np.zeros((4, 4), np.uint16)] * 3
    series, paths = write_series(tmp_path, values, shuffle=False)
    odd = write_dicom(tmp_path / "odd", np.zeros((5, 4), np.uint16), series=series,
                      ImagePositionPatient=[0, 0, 30.0], ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    with pytest.raises(DicomFileError, match="5x4 pixels") as err:
        assemble_series(paths + [odd])
    assert err.value.path == odd


def test_series_with_a_missing_slice_is_rejected(tmp_path):
    values = [np.zeros((4, 4), np.uint16)] * 5
    _, paths = write_series(tmp_path, values, shuffle=False)
    with pytest.raises(DataError, match="uneven slice spacing"):
        assemble_series(paths[:2] + paths[3:])


def test_bundled_ct_and_mr_files_read(tmp_path):
    ct, meta = read_pixels(TEST_FILES / "CT_small.dcm")
    assert ct.shape == (128, 128) and ct.dtype == np.float32
    assert ct.min() == 0.0 and ct.max() == 1.0 and meta["modality"] == "CT"
    mr, meta = read_pixels(TEST_FILES / "MR_small.dcm")   # has its own window (600, 1600)
    assert mr.shape == (64, 64) and 0.0 <= mr.min() and mr.max() <= 1.0
    assert meta["modality"] == "MR" and len(meta["sop_uid"]) > 0
    j2k, meta = read_pixels(TEST_FILES / "JPEG2000.dcm")  # decoded by pylibjpeg-openjpeg
    assert j2k.shape == (1024, 256) and j2k.max() == 1.0


def test_rgb_is_converted_to_grey_and_palette_is_refused():
    grey, meta = read_pixels(TEST_FILES / "SC_rgb_small_odd.dcm")
    assert grey.ndim == 2 and meta["photometric"] == "RGB"
    with pytest.raises(DicomFileError, match="PALETTE COLOR.*unsupported"):
        read_pixels(TEST_FILES / "examples_palette.dcm")


def _garbage_jpeg2000(path: Path) -> Path:
    ds = pydicom.dcmread(write_dicom(path, np.zeros((8, 8), np.uint16)))
    ds.file_meta.TransferSyntaxUID = JPEG2000
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00not a jpeg 2000 codestream" * 3])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_undecodable_compressed_pixels_name_syntax_and_decoder(tmp_path):
    path = _garbage_jpeg2000(tmp_path / "j2k.dcm")
    read_header(path)                                      # the header itself is fine
    with pytest.raises(DicomFileError) as err:
        read_pixels(path)
    message = str(err.value)
    assert str(path) in message and "JPEG 2000 Image Compression" in message
    assert "1.2.840.10008.1.2.4.91" in message and "pylibjpeg-openjpeg" in message


def test_missing_decoder_message_names_the_package(monkeypatch):
    class Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    reason = _decode_failure(JPEGLSLossless, RuntimeError("no plugin"))
    assert "JPEG-LS Lossless" in reason and JPEGLSLossless in reason
    assert "no decoder installed" in reason and "pylibjpeg-libjpeg" in reason


def test_truncated_files_are_reported(tmp_path):
    full = write_dicom(tmp_path / "full.dcm", np.zeros((16, 16), np.uint16))
    data = full.read_bytes()
    cut_pixels = tmp_path / "cut_pixels.dcm"
    cut_pixels.write_bytes(data[:-100])
    cut_header = tmp_path / "cut_header.dcm"
    cut_header.write_bytes(data[:140])
    for path in (cut_pixels, cut_header, TEST_FILES / "MR_truncated.dcm"):
        with pytest.raises(DicomFileError, match="truncated") as err:
            read_header(path)
        assert err.value.path == path and str(err.value) == f"{path}: {err.value.reason}"
    with pytest.raises(DicomFileError, match="pixel data does not decode"):
        read_pixels(cut_pixels)


def test_not_dicom_empty_and_no_pixels(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("patient list\n" * 20)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(DicomFileError, match="not a DICOM file"):
        read_header(text)
    with pytest.raises(DicomFileError, match="empty file"):
        read_header(empty)
    no_pixels = write_dicom(tmp_path / "sr.dcm", np.zeros(0))
    assert read_header(no_pixels).Modality == "CT"
    for path in (no_pixels, TEST_FILES / "rtplan.dcm"):
        with pytest.raises(DicomFileError, match="no PixelData"):
            read_pixels(path)


def test_bad_window_string_is_a_config_error(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", _ct_values())
    for bad in ("40", "a,b", "40,0", "40,400,1"):
        with pytest.raises(ConfigError, match="dicom_window"):
            read_pixels(path, window=bad)


def test_dicom_file_error_survives_pickling(tmp_path):
    import pickle

    err = pickle.loads(pickle.dumps(DicomFileError(tmp_path / "x.dcm", "empty file")))
    assert err.path == tmp_path / "x.dcm" and err.reason == "empty file"
    assert isinstance(err, DataError) and str(err) == f"{tmp_path / 'x.dcm'}: empty file"


# --------------------------------------------------------------------------- scan

def test_scan_finds_nested_files_of_any_name_and_lists_bad_ones(tmp_path):
    a = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint16))
    b = write_dicom(tmp_path / "p1" / "study" / "IM0001", np.zeros((4, 4), np.uint16))
    c = write_dicom(tmp_path / "p2" / "x.ima", np.zeros((4, 4), np.uint16))
    (tmp_path / "labels.csv").write_text("path,label\na.dcm,0\n")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    write_dicom(tmp_path / ".hidden" / "h.dcm", np.zeros((4, 4), np.uint16))
    (tmp_path / "cache" / "ab").mkdir(parents=True)
    (tmp_path / "cache" / TAG_FILE).write_text("Signature: x\n")
    (tmp_path / "cache" / "ab" / "x.npy").write_bytes(b"junk")
    (tmp_path / "README.txt").write_text("not an image")
    good, bad = scan(tmp_path)
    assert sorted(good) == sorted([a, b, c])
    assert [(p.name, "not a DICOM file" in r) for p, r in bad] == [("README.txt", True)]


# --------------------------------------------------------------------------- folder loading

def _cfg(tmp_path: Path, **kw) -> RunConfig:
    return RunConfig(**{"dataset": "dicom", "data_path": str(tmp_path / "data"),
                        "cache_dir": str(tmp_path / "cache"), "test_fraction": 0.25, **kw})


def _image(label: int, i: int, size: int = 12) -> np.ndarray:
    """Class 0: bright left half, class 1: bright right half (plus a per-image offset)."""
    img = np.full((size, size), 100 + i, dtype=np.uint16)
    cols = slice(0, size // 2) if label == 0 else slice(size // 2, size)
    img[:, cols] = 1000 + i
    return img


def _classification_folder(root: Path, n: int = 8, key: str = "SOPInstanceUID") -> list[str]:
    """n single images (alternating labels 'normal'/'pneumonia', two manufacturers) + labels.csv."""
    rows = [f"{key},label"]
    for i in range(n):
        label = i % 2
        sop = generate_uid()
        rel = f"pat{i}/IM{i}"
        write_dicom(root / rel, _image(label, i), modality="CR", sop=sop,
                    Manufacturer=("Acme", "Zeta")[i // (n // 2)], InstitutionName="Site General")
        rows.append(f"{sop if key == 'SOPInstanceUID' else './' + rel},"
                    f"{('normal', 'pneumonia')[label]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return rows


def test_load_classification_folder(tmp_path):
    _classification_folder(tmp_path / "data")
    (tmp_path / "data" / "notes.txt").write_text("not dicom")
    data = loader.load(tmp_path / "data", _cfg(tmp_path))
    assert data.task.kind == "binary" and data.task.class_names == ("normal", "pneumonia")
    assert data.task.spatial_dims == 2 and data.task.size == 28 and data.task.channels == 1
    assert data.train.images.shape == (6, 1, 28, 28) and data.test.images.shape == (2, 1, 28, 28)
    assert data.val is None
    for split in (data.train, data.test):
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int64
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        # class 1 is bright on the right: the label is recoverable from the pixels
        right = split.images[:, 0, :, 14:].mean(axis=(1, 2)) > split.images[:, 0, :, :14].mean(
            axis=(1, 2))
        np.testing.assert_array_equal(right.astype(np.int64), split.labels)
    assert np.bincount(data.test.labels).tolist() == [1, 1]     # stratified
    assert sorted(np.concatenate([data.train.tags["Manufacturer"],
                                  data.test.tags["Manufacturer"]]).tolist()) == ["Acme"] * 4 + [
        "Zeta"] * 4
    assert set(data.train.tags["InstitutionName"]) == {"Site General"}
    assert [(Path(p).name, "not a DICOM file" in r) for p, r in data.skipped] == [
        ("notes.txt", True)]


def test_strict_raises_on_the_first_bad_file(tmp_path):
    _classification_folder(tmp_path / "data")
    (tmp_path / "data" / "broken.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(DicomFileError) as err:
        loader.load(tmp_path / "data", _cfg(tmp_path, strict=True))
    assert err.value.path.name == "broken.dcm"


def test_path_key_split_column_and_missing_rows(tmp_path):
    rows = _classification_folder(tmp_path / "data", key="path")
    splits = ["train", "train", "val", "test", "train", "train", "test", "val"]
    text = [rows[0] + ",split"] + [f"{r},{s}" for r, s in zip(rows[1:], splits)]
    text.append("./pat99/missing.dcm,normal,train")
    (tmp_path / "data" / "labels.csv").write_text("\n".join(text) + "\n")
    data = loader.load(tmp_path / "data", _cfg(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
    assert data.val.labels.tolist() == [0, 1] and data.test.labels.tolist() == [1, 0]
    assert data.skipped == ((("./pat99/missing.dcm", data.skipped[0][1]),))
    assert "line 10" in data.skipped[0][1]
    with pytest.raises(DataError, match="line 10.*missing.dcm"):
        loader.load(tmp_path / "data", _cfg(tmp_path, strict=True))


def _series_folder(root: Path, n: int = 4) -> list[tuple[str, list[Path]]]:
    rows, made = ["SeriesInstanceUID,label"], []
    for s in range(n):
        values = [np.full((8, 8), 100 * i + s, dtype=np.uint16) for i in range(5)]
        series, paths = write_series(root / f"series{s}", values, Manufacturer="Acme")
        rows.append(f"{series},{s % 2}")
        made.append((series, paths))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return made


def test_series_key_gives_volumes_in_3d_and_the_middle_slice_in_2d(tmp_path, monkeypatch):
    made = _series_folder(tmp_path / "data")
    data = loader.load(tmp_path / "data", _cfg(tmp_path, spatial_dims=3))
    assert data.train.images.shape[1:] == (1, 28, 28, 28) and len(data.train) + len(data.test) == 4
    assert data.task.spatial_dims == 3 and data.task.class_names == ("0", "1")
    profile = data.train.images[0, 0, :, 14, 14]
    assert profile[0] == pytest.approx(0.0, abs=0.02)
    assert profile[-1] == pytest.approx(1.0, abs=0.02)
    assert np.all(np.diff(profile) >= -1e-6)                  # slices in position order

    read = []
    real = sample.read_pixels
    monkeypatch.setattr(sample, "read_pixels", lambda p, w="": read.append(Path(p)) or real(p, w))
    flat = loader.load(tmp_path / "data", _cfg(tmp_path, spatial_dims=2))
    assert flat.train.images.shape[1:] == (1, 28, 28)
    middles = set()
    for _, paths in made:      # the file at z = 10 + 2.5 * 2
        middles |= {p for p in paths if read_header(p).ImagePositionPatient[2] == 15.0}
    assert set(read) == middles and len(read) == 4


def test_single_images_cannot_be_3d_samples(tmp_path):
    _classification_folder(tmp_path / "data")
    with pytest.raises(DicomFileError, match="spatial_dims=3 needs a volume"):
        loader.load(tmp_path / "data", _cfg(tmp_path, spatial_dims=3, strict=True))


def test_second_load_hits_the_cache_and_changed_bytes_miss_it(tmp_path, monkeypatch):
    _classification_folder(tmp_path / "data")
    calls = []
    real = sample.read_pixels
    monkeypatch.setattr(sample, "read_pixels", lambda p, w="": calls.append(p) or real(p, w))
    first = loader.load(tmp_path / "data", _cfg(tmp_path))
    assert len(calls) == 8
    second = loader.load(tmp_path / "data", _cfg(tmp_path))
    assert len(calls) == 8                                          # all from the cache
    np.testing.assert_array_equal(first.train.images, second.train.images)
    target = tmp_path / "data" / "pat3" / "IM3"
    ds = pydicom.dcmread(target)
    ds.PixelData = (ds.pixel_array + 7).astype(np.uint16).tobytes()
    ds.save_as(target)
    loader.load(tmp_path / "data", _cfg(tmp_path))
    assert calls[8:] == [target]                                    # only the changed file
    other_window = loader.load(tmp_path / "data", _cfg(tmp_path, dicom_window="500,1000"))
    assert len(calls) == 17 and other_window.train.images.shape == first.train.images.shape


def test_array_cache_counts_and_atomic_files(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    computed = []

    def compute():
        computed.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    a = cache.get_or_compute((src, 28, "x"), compute)
    b = cache.get_or_compute((src, 28, "x"), compute)
    np.testing.assert_array_equal(a, b)
    assert len(computed) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert cache.get_or_compute((src, 64, "x"), compute) is not None and len(computed) == 2
    key = cache_key((src, 28, "x"))
    src.write_bytes(b"abd")
    assert cache_key((src, 28, "x")) != key
    cache.get_or_compute((src, 28, "x"), compute)
    assert len(computed) == 3
    files = sorted(p.name for p in (tmp_path / "c").rglob("*") if p.is_file())
    assert TAG_FILE in files and not any(f.startswith(".tmp") for f in files)
    cache.path_for(key).write_bytes(b"corrupt")                    # recomputed, not raised
    src.write_bytes(b"abc")
    np.testing.assert_array_equal(cache.get_or_compute((src, 28, "x"), compute), a)


def test_registry_loads_dicom(tmp_path):
    _classification_folder(tmp_path / "data")
    data = load_dataset(_cfg(tmp_path))
    assert data.name == "dicom:data" and len(data.train) == 6
    assert load_dataset(_cfg(tmp_path)) is data                    # cached per process


def test_default_cache_root_respects_config_and_environment(tmp_path, monkeypatch):
    from common.datasets.cache import default_cache_root

    monkeypatch.delenv("FEDCLINIC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "fedclinic" / "arrays"
    assert default_cache_root(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "fedclinic" / "arrays"


def test_detect_layout(tmp_path):
    from common.datasets.layout import detect_layout

    npz = tmp_path / "pneumoniamnist.npz"
    npz.write_bytes(b"PK")
    assert detect_layout(npz) == "medmnist"
    (tmp_path / "msd" / "imagesTr").mkdir(parents=True)
    (tmp_path / "msd" / "dataset.json").write_text("{}")
    assert detect_layout(tmp_path / "msd") == "msd"
    _classification_folder(tmp_path / "dcm", n=2)
    assert detect_layout(tmp_path / "dcm") == "dicom"
    (tmp_path / "labels_only").mkdir()
    (tmp_path / "labels_only" / "labels.csv").write_text("path,label\n")
    (tmp_path / "labels_only" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="labels.csv is there but no DICOM file.*Found: a.txt"):
        detect_layout(tmp_path / "labels_only")
    with pytest.raises(DataError, match="no labels.csv, no dataset.json"):
        detect_layout(tmp_path / "msd" / "imagesTr")
    with pytest.raises(DataError, match="not found"):
        detect_layout(tmp_path / "nowhere")
    with pytest.raises(DataError, match="not a MedMNIST .npz"):
        detect_layout(tmp_path / "labels_only" / "a.txt")


# ------------------------------------------------------------------------- hospital files that lie
# (issue 11): every one is a DicomFileError naming the file and the element, never a NaN image
# or an unhandled exception; in a folder it is one named, skipped file.

from bench.fuzz_inputs import patch_vr, raw_element  # noqa: E402


def _mutant(path: Path, edit) -> Path:
    """A clean CT file whose dataset ``edit(ds)`` changes before it is written."""
    write_dicom(path, _ct_values(), RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40,
                WindowWidth=400, PixelSpacing=[0.7, 0.7])
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path, enforce_file_format=False)
    return path


@pytest.mark.parametrize("keyword, value, shown", [
    ("RescaleSlope", b"one", "'one'"), ("RescaleIntercept", b"", "empty"),
    ("RescaleSlope", b"nan", "'nan'"), ("RescaleIntercept", b"1\\2", "'1\\2'"),
    ("RescaleSlope", b"0", "'0"),
])
def test_rescale_that_is_not_one_finite_number_names_the_element(tmp_path, keyword, value,
                                                                  shown):
    path = _mutant(tmp_path / "ct.dcm", lambda ds: raw_element(ds, keyword, "DS", value))
    with pytest.raises(DicomFileError) as err:
        read_pixels(path)
    assert err.value.path == path and f"{keyword} (0028,105" in err.value.reason
    assert shown in err.value.reason


@pytest.mark.parametrize("syntax, expected", [
    (b"1.2.3.4", "'1.2.3.4' is not a DICOM transfer syntax"), (b"", "is empty"),
    (b"abc", "'abc' is not a DICOM transfer syntax")])
def test_a_transfer_syntax_that_is_not_one_is_a_named_bad_file(tmp_path, syntax, expected):
    import struct

    path = write_dicom(tmp_path / "ts.dcm", _ct_values())
    data = path.read_bytes()
    at = data.find(b"\x02\x00\x10\x00UI")
    old = struct.unpack("<H", data[at + 6: at + 8])[0]
    value = syntax + (b"\0" if len(syntax) % 2 else b"")
    path.write_bytes(data[:at + 6] + struct.pack("<H", len(value)) + value
                     + data[at + 8 + old:])
    for read in (read_header, read_pixels):
        with pytest.raises(DicomFileError, match=f"TransferSyntaxUID \\(0002,0010\\).*{expected}"):
            read(path)
    # the decode-failure message itself never crashes on such a value (it called is_compressed)
    assert "not a DICOM transfer syntax" in _decode_failure("1.2.3.4", ValueError("x"))


@pytest.mark.parametrize("where", ["Manufacturer", "nested"])
def test_an_unknown_vr_code_is_a_named_bad_file_and_the_phi_scan_survives(tmp_path, where):
    from client.phi import count_phi
    from pydicom.dataset import Dataset as DicomDataset

    def edit(ds):
        if where == "nested":
            item = DicomDataset()
            item.PatientName = "Doe^Jane"
            ds.ReferencedStudySequence = [item]
        else:
            ds.Manufacturer = "Acme"

    path = _mutant(tmp_path / "vr.dcm", edit)
    tag = pydicom.tag.Tag("PatientName" if where == "nested" else "Manufacturer")
    path.write_bytes(patch_vr(path.read_bytes(), tag, "QQ"))
    with pytest.raises(DicomFileError) as err:
        read_header(path)
    assert f"({tag.group:04X},{tag.element:04X})" in err.value.reason
    assert "'QQ'" in err.value.reason or "VR" in err.value.reason
    good = write_dicom(tmp_path / "good.dcm", _ct_values(), PatientID="x")
    headers, bad = scan_headers(tmp_path)
    assert [p.name for p, _ in bad] == ["vr.dcm"] and list(headers) == [good]
    assert count_phi(headers.values()) == {"PatientID": 1}


@pytest.mark.parametrize("centre, width", [(b"nan", b"400"), (b"40", b"inf"), (b"abc", b"400"),
                                           (b"", b"")])
def test_a_file_window_that_is_not_finite_is_refused_unless_the_run_sets_one(tmp_path, centre,
                                                                             width):
    def edit(ds):
        raw_element(ds, "WindowCenter", "DS", centre)
        raw_element(ds, "WindowWidth", "DS", width)

    path = _mutant(tmp_path / "w.dcm", edit)
    with pytest.raises(DicomFileError, match="not a finite number; set the run's dicom_window"):
        read_pixels(path)
    image, _ = read_pixels(path, window="40,400")     # the run's window replaces the file's
    assert np.isfinite(image).all()
    np.testing.assert_allclose(image[0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=0.005)


def test_any_non_finite_pixel_after_the_modality_lut_is_refused(tmp_path):
    def edit(ds):
        values = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
        values[1, 2] = np.nan
        del ds.PixelData
        for keyword in ("BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope",
                        "RescaleIntercept", "WindowCenter", "WindowWidth"):
            delattr(ds, keyword)
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated = 32
        ds.FloatPixelData = values.tobytes()

    path = _mutant(tmp_path / "f.dcm", edit)
    with pytest.raises(DicomFileError, match="1 of 16 pixel values are NaN or infinite"):
        read_pixels(path)


def test_overflowing_rescale_is_refused_not_trained_as_inf(tmp_path):
    path = _mutant(tmp_path / "big.dcm", lambda ds: raw_element(ds, "RescaleSlope", "DS",
                                                                b"1e308"))
    with pytest.raises(DicomFileError, match="NaN or infinite after decoding"):
        read_pixels(path)


def test_inserted_bytes_are_not_reported_as_truncation(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", _ct_values(), Manufacturer="Acme",
                       StudyDescription="chest")
    data = path.read_bytes()
    at = data.find(b"Acme") + 2                   # inside an element's value
    path.write_bytes(data[:at] + b"\x8b\x00\x0c\x9e\x41\x42\x43\x44\x45\x46\x47" + data[at:])
    with pytest.raises(DicomFileError) as err:
        read_header(path)
    assert "truncated" not in err.value.reason
    assert "inserted or overwritten" in err.value.reason or "VR" in err.value.reason


@pytest.mark.parametrize("keyword, value, message", [
    ("ImagePositionPatient", b"abc\\0\\0", "ImagePositionPatient \\(0020,0032\\)"),
    ("ImagePositionPatient", b"1\\2", "expected 3 finite numbers"),
    ("ImagePositionPatient", b"nan\\nan\\nan", "expected 3 finite numbers"),
    ("ImageOrientationPatient", b"0\\0\\0\\0\\0\\0", "zero or parallel"),
])
def test_a_slice_whose_position_is_not_numbers_names_the_file(tmp_path, keyword, value, message):
    _, paths = write_series(tmp_path, [np.full((4, 4), v, np.uint16) for v in (1, 2, 3)])
    bad = paths[0] if keyword == "ImageOrientationPatient" else paths[1]  # the first one's counts
    ds = pydicom.dcmread(bad)
    raw_element(ds, keyword, "DS", value)
    ds.save_as(bad, enforce_file_format=False)
    headers = [pydicom.dcmread(p) for p in paths]
    from common.datasets.dicom.series import slice_order

    with pytest.raises(DicomFileError, match=message):
        slice_order(headers, paths)
    with pytest.raises(DataError, match=message):
        assemble_series(paths)


def _folder_with(root: Path, mutant_edit) -> Path:
    """Four clean files (0.7 mm pixels) + one mutant, keyed by path."""
    rows = ["path,label"]
    for i in range(4):
        write_dicom(root / f"c{i}.dcm", _image(i % 2, i), PixelSpacing=[0.7, 0.7])
        rows.append(f"c{i}.dcm,{'ab'[i % 2]}")
    _mutant(root / "bad.dcm", mutant_edit)
    rows.append("bad.dcm,a")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_an_implausible_spacing_is_a_named_file_not_a_resampling_crash(tmp_path):
    root = _folder_with(tmp_path / "data", lambda ds: raw_element(ds, "PixelSpacing", "DS",
                                                                   b"1e6\\1e6"))
    data = loader.load(root, _cfg(tmp_path, spacing="0.7,0.7"))
    assert len(data.train) + len(data.test) == 4
    (where, reason), = data.skipped
    assert Path(where).name == "bad.dcm" and "would give" in reason and "implausible" in reason


def test_one_bad_file_is_one_named_skipped_file_in_the_loader_and_fatal_when_strict(tmp_path):
    root = _folder_with(tmp_path / "data", lambda ds: raw_element(ds, "RescaleSlope", "DS",
                                                                   b"one"))
    data = loader.load(root, _cfg(tmp_path))
    assert len(data.train) + len(data.test) == 4
    assert [(Path(p).name, "RescaleSlope (0028,1053) is 'one'" in r) for p, r in data.skipped] \
        == [("bad.dcm", True)]
    with pytest.raises(DicomFileError) as err:
        loader.load(root, _cfg(tmp_path, strict=True))
    assert err.value.path.name == "bad.dcm"


def test_simulate_and_a_deployed_site_skip_the_bad_file_by_name(tmp_path):
    """The loaders are shared: `fedclinic simulate` names the skipped file, a deployed site
    counts it, and neither trains on a non-finite pixel."""
    from client.site import DATA_PATH, load_site
    from simulations.simulate import load_checked_dataset

    root = _folder_with(tmp_path / "data", lambda ds: raw_element(ds, "WindowCenter", "DS",
                                                                   b"nan"))
    cfg = _cfg(tmp_path, model="cnn")
    said: list[str] = []
    _, data = load_checked_dataset(cfg, said.append)
    assert any(line.startswith("skipped ") and "bad.dcm" in line and "WindowCenter" in line
               for line in said)
    assert np.isfinite(data.train.images).all()
    site = load_site(cfg, {DATA_PATH: str(root)})
    assert site.skipped == 1 and np.isfinite(site.train.images).all()


def test_two_names_of_one_file_are_one_sample_and_links_outside_are_refused(tmp_path):
    import os

    from common.datasets.dicom.scan import scan_folder

    root = tmp_path / "data"
    _classification_folder(root, n=4, key="path")
    first = root / "pat0" / "IM0"
    (root / "pat0" / "link.dcm").symlink_to("IM0")
    os.link(first, root / "pat0" / "hard.dcm")
    outside = write_dicom(tmp_path / "elsewhere.dcm", _image(0, 9))
    (root / "out.dcm").symlink_to(outside)
    found = scan_folder(root)
    assert set(found.aliases) == {root / "pat0" / "link.dcm", root / "pat0" / "hard.dcm"}
    assert all(real == first for real in found.aliases.values())
    (where, reason), = found.bad
    assert where.name == "out.dcm" and "outside the data folder" in reason
    with (root / "labels.csv").open("a") as fh:
        fh.write("pat0/link.dcm,normal\npat0/hard.dcm,normal\nout.dcm,normal\n")
    data = loader.load(root, _cfg(tmp_path))
    assert len(data.train) + len(data.test) == 4
    reasons = {Path(w).relative_to(root).as_posix() if Path(w).is_absolute() else w: r
               for w, r in data.skipped}
    assert "same file" in reasons["pat0/link.dcm"] and "line 2" in reasons["pat0/link.dcm"]
    assert "same file" in reasons["pat0/hard.dcm"]
    assert "outside the data folder" in reasons["out.dcm"]
