"""The run setting `spacing`: parse, keep physical scale (DICOM and MSD NIfTI), cache key, and a
file without its pixel spacing."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bench.dicom_files import write_dicom
from common.config import ConfigError, RunConfig
from common.spacing_spec import parse_spacing
from common.datasets import msd
from common.datasets.dicom import loader, sample
from common.datasets.dicom.header import DicomFileError


# --------------------------------------------------------------------------- parse

@pytest.mark.parametrize("value,dims,expected", [
    ("1", 2, (1.0, 1.0)),
    ("1", 3, (1.0, 1.0, 1.0)),
    ("0.8,0.8", 2, (0.8, 0.8)),
    (" 2.5, 1 ,1 ", 3, (2.5, 1.0, 1.0)),
    ("", 2, None),
])
def test_parse_spacing_accepts_one_number_or_one_per_axis(value, dims, expected):
    assert parse_spacing(value, dims) == expected
    assert RunConfig(spacing=value, spatial_dims=dims).spacing == value


@pytest.mark.parametrize("value", ["0", "-1", "a,b", "1,2,3,4", "nan", "1,,1", "inf"])
def test_parse_spacing_rejects_bad_values_naming_the_field(value):
    with pytest.raises(ConfigError, match=rf"spacing={value!r}: .*mm > 0"):
        RunConfig(spacing=value)


def test_axis_count_must_match_spatial_dims():
    with pytest.raises(ConfigError, match=r"spacing='2.5,1,1': 3 values but spatial_dims=2"):
        RunConfig(spacing="2.5,1,1")
    with pytest.raises(ConfigError, match=r"spacing='1,1': 2 values but spatial_dims=3"):
        RunConfig.from_dict({"spacing": "1,1", "spatial_dims": 3})


# --------------------------------------------------------------------------- DICOM

def _folder(root: Path, images: list[tuple[np.ndarray, dict]]) -> Path:
    """One CR file per image (alternating labels 0/1, all train), keyed by path."""
    rows = ["path,label,split"]
    for i, (pixels, attrs) in enumerate(images):
        write_dicom(root / f"im{i}.dcm", pixels, modality="CR", **attrs)
        rows.append(f"im{i}.dcm,{i % 2},train")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _square(side: int, width: int) -> np.ndarray:
    """A centred bright square ``width`` pixels wide in a dark ``side`` x ``side`` image."""
    img = np.zeros((side, side), dtype=np.uint16)
    lo = (side - width) // 2
    img[lo:lo + width, lo:lo + width] = 1000
    return img


def _cfg(tmp_path: Path, **kw) -> RunConfig:
    return RunConfig(**{"dataset": "dicom", "data_path": str(tmp_path / "data"),
                        "cache_dir": str(tmp_path / "cache"), **kw})


def _width(image: np.ndarray) -> int:
    """Width in pixels of the bright region along the image's middle row."""
    return int((image[image.shape[0] // 2] > 0.5).sum())


def _same_20mm_square(tmp_path: Path) -> Path:
    # 20 mm square: 40 px at 0.5 mm in a 40 mm field of view, 20 px at 1 mm in a 64 mm one
    return _folder(tmp_path / "data", [(_square(80, 40), {"PixelSpacing": [0.5, 0.5]}),
                                       (_square(64, 20), {"PixelSpacing": [1.0, 1.0]})])


def test_spacing_keeps_physical_scale_where_stretching_does_not(tmp_path):
    _same_20mm_square(tmp_path)
    kept = loader.load(tmp_path / "data", _cfg(tmp_path, spacing="1.0")).train.images[:, 0]
    assert kept.shape == (2, 28, 28)
    assert abs(_width(kept[0]) - 20) <= 1 and abs(_width(kept[1]) - 20) <= 1
    assert kept[:, 0, 0].max() == 0.0                     # padded with 0 about the centre
    stretched = loader.load(tmp_path / "data", _cfg(tmp_path)).train.images[:, 0]
    assert _width(stretched[0]) - _width(stretched[1]) >= 4   # 14 px vs ~9 px


def test_spacing_orders_3d_axes_slice_row_col(tmp_path):
    """A multi-frame volume: frames at SliceThickness, rows/cols at PixelSpacing (row, col)."""
    volume = np.full((4, 6, 10), 500, dtype=np.uint16)
    attrs = {"PixelSpacing": [0.5, 1.0], "SliceThickness": 2.0, "WindowCenter": 0,
             "WindowWidth": 2000}                          # every voxel > 0 after the window
    _folder(tmp_path / "data", [(volume, attrs), (volume, attrs)])
    cfg = _cfg(tmp_path, spatial_dims=3, spacing="1")
    image = loader.load(tmp_path / "data", cfg).train.images[0, 0]
    assert image.shape == (28, 28, 28)
    inside = np.argwhere(image > 0.1)
    extent = inside.max(0) - inside.min(0) + 1        # 8, 3 and 10 mm at 1 mm per voxel
    assert np.all(np.abs(extent - (8, 3, 10)) <= 1), extent   # swapped axes: (2, 6, 19)


def test_cache_key_includes_spacing(tmp_path, monkeypatch):
    _same_20mm_square(tmp_path)
    calls = []
    real = sample.read_pixels
    monkeypatch.setattr(sample, "read_pixels", lambda p, w="": calls.append(p) or real(p, w))
    plain = loader.load(tmp_path / "data", _cfg(tmp_path)).train.images
    at_1mm = loader.load(tmp_path / "data", _cfg(tmp_path, spacing="1.0")).train.images
    assert len(calls) == 4 and not np.array_equal(plain, at_1mm)
    again = loader.load(tmp_path / "data", _cfg(tmp_path)).train.images
    same = loader.load(tmp_path / "data", _cfg(tmp_path, spacing="1,1")).train.images
    assert len(calls) == 4                                # both from the cache, neither stale
    np.testing.assert_array_equal(again, plain)
    np.testing.assert_array_equal(same, at_1mm)


def test_missing_pixel_spacing_is_an_error_naming_file_and_tag(tmp_path):
    _folder(tmp_path / "data", [(_square(40, 20), {"PixelSpacing": [1.0, 1.0]}),
                                (_square(40, 20), {}), (_square(40, 20), {})])
    assert len(loader.load(tmp_path / "data", _cfg(tmp_path)).train) == 3   # off: 1 mm assumed
    with pytest.raises(DicomFileError, match=r"im1.dcm: no usable PixelSpacing \(0028,0030\)"):
        loader.load(tmp_path / "data", _cfg(tmp_path, spacing="1", strict=True))
    lenient = loader.load(tmp_path / "data", _cfg(tmp_path, spacing="1"))   # skipped, named
    assert len(lenient.train) == 1
    assert [(Path(f).name, "PixelSpacing" in r) for f, r in lenient.skipped] == [
        ("im1.dcm", True), ("im2.dcm", True)]


def test_missing_slice_spacing_of_a_3d_volume_is_an_error(tmp_path):
    volume = np.full((3, 4, 4), 500, dtype=np.uint16)
    _folder(tmp_path / "data", [(volume, {"PixelSpacing": [1.0, 1.0]})] * 2)
    with pytest.raises(DicomFileError, match=r"im0.dcm: no usable SpacingBetweenSlices"):
        loader.load(tmp_path / "data", _cfg(tmp_path, spatial_dims=3, spacing="1", strict=True))


# --------------------------------------------------------------------------- MSD (NIfTI)

def _msd_folder(root: Path) -> Path:
    """One case, (x, y, z) = (36, 32, 6) voxels of 0.5 x 0.5 x 2 mm, x flipped in the affine,
    with a bright 8 x 8 x 4 mm box (16 x 16 x 2 voxels) off-centre and its mask."""
    image = np.random.default_rng(0).normal(100.0, 5.0, (36, 32, 6)).astype(np.float32)
    mask = np.zeros((36, 32, 6), dtype=np.uint8)
    mask[2:18, 3:19, 2:4] = 1
    image[mask > 0] = 900.0
    affine = np.diag([-0.5, 0.5, 2.0, 1.0])
    for folder, data in (("imagesTr", image), ("labelsTr", mask)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), root / folder / "box.nii.gz")
    doc = {"name": "Box", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "box"},
           "training": [{"image": "./imagesTr/box.nii.gz", "label": "./labelsTr/box.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


def _extent(mask: np.ndarray) -> tuple[int, ...]:
    where = np.argwhere(mask > 0)
    return tuple(int(v) for v in where.max(0) - where.min(0) + 1)


@pytest.mark.parametrize("dims", [3, 2])
def test_msd_image_and_mask_resampled_together(tmp_path, dims):
    root = _msd_folder(tmp_path / "Box")
    opts = msd.MsdOptions(size=28, spatial_dims=dims, cache_dir=str(tmp_path / "cache"),
                          spacing="1.0")
    split = msd.load_folder(root, opts).train
    masks, images = split.masks, split.images[:, 0]
    assert set(np.unique(masks).tolist()) == {0, 1}
    bright = images > 0.5
    dice = 2 * np.sum(bright & (masks == 1)) / (bright.sum() + np.sum(masks == 1))
    assert dice > 0.8 and np.all(masks[images > 0.75] == 1)   # aligned up to edge blur
    assert np.median(images[masks == 1]) > 0.9 and np.median(images[masks == 0]) < 0.1
    if dims == 3:
        assert masks.shape == (1, 28, 28, 28)
        assert _extent(masks[0]) == (4, 8, 8)                 # (z, y, x) in mm at 1 mm
    else:                                                     # in-plane only: 2 mm slices kept
        assert masks.shape[1:] == (28, 28) and len(split) == 4   # 2 with the box + 2 without
        assert _extent(masks[split.labels == 1][0]) == (8, 8)


def test_msd_cache_key_includes_spacing(tmp_path):
    root = _msd_folder(tmp_path / "Box")
    opts = msd.MsdOptions(size=28, spatial_dims=3, cache_dir=str(tmp_path / "cache"))
    plain = msd.load_folder(root, opts).train.masks
    at_1mm = msd.load_folder(root, msd.MsdOptions(**{**opts.__dict__, "spacing": "1"})).train.masks
    assert _extent(plain[0]) != _extent(at_1mm[0])
    np.testing.assert_array_equal(msd.load_folder(root, opts).train.masks, plain)
