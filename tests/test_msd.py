"""Medical Segmentation Decathlon folders: 3D volumes and balanced 2D slices, masks, splits by case,
normalisation, the cache and errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.config import RunConfig
from common.datasets import load_dataset, msd
from common.datasets.base import DataError
from common.datasets.layout import detect_layout

SIDE = 16


def _case(root: Path, name: str, lesion_slices: range, value: float = 1.0, seed: int = 0) -> dict:
    """A 16^3 CT-like volume (x, y, z) with a bright cube lesion in the given axial (z) slices."""
    rng = np.random.default_rng(seed)
    image = rng.normal(-500.0, 50.0, (SIDE, SIDE, SIDE)).astype(np.float32)
    mask = np.zeros((SIDE, SIDE, SIDE), dtype=np.uint8)
    if len(lesion_slices):
        mask[4:10, 5:11, lesion_slices.start:lesion_slices.stop] = 1
        mask[6:8, 7:9, lesion_slices.start] = 2 if value > 1 else 1
    image[mask > 0] = 200.0
    image[0, 0, 0] = 30000.0                              # an outlier the percentile clip removes
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), root / "labelsTr" / f"{name}.nii.gz")
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def _folder(root: Path, labels: dict | None = None) -> Path:
    training = [_case(root, "liver_0", range(3, 7), seed=0),
                _case(root, "liver_1", range(8, 10), value=2.0, seed=1),
                _case(root, "liver_2", range(5, 11), seed=2)]
    doc = {"name": "Toy", "modality": {"0": "CT"},
           "labels": labels or {"0": "background", "1": "liver", "2": "tumour"},
           "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


def _cfg(tmp_path: Path, **kw) -> RunConfig:
    return RunConfig(**{"dataset": "msd", "data_path": str(tmp_path / "Task03_Liver"),
                        "cache_dir": str(tmp_path / "cache"), "image_size": 28,
                        "test_fraction": 0.34, **kw})


def test_load_3d_volumes(tmp_path):
    root = _folder(tmp_path / "Task03_Liver")
    assert detect_layout(root) == "msd"
    data = msd.load(root, _cfg(tmp_path, spatial_dims=3))
    assert data.name == "msd:Toy" and data.val is None
    assert data.task.class_names == ("background", "liver", "tumour")
    assert (data.task.kind, data.task.num_classes, data.task.channels) == ("multiclass", 3, 1)
    assert len(data.train) == 2 and len(data.test) == 1             # split by case
    assert data.train.images.shape == (2, 1, 28, 28, 28)
    assert data.train.masks.shape == (2, 28, 28, 28) and data.train.masks.dtype == np.uint8
    for split in (data.train, data.test):
        assert split.images.dtype == np.float32
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        # lesion voxels are bright after the percentile clip (the 30000 outlier did not squash them)
        lesion = split.images[:, 0][split.masks > 0]
        assert np.median(lesion) > 0.9 and np.median(split.images[:, 0][split.masks == 0]) < 0.6
        np.testing.assert_array_equal(split.labels, split.masks.reshape(len(split), -1).max(1))
    cases = sorted(data.train.tags["case"].tolist() + data.test.tags["case"].tolist())
    assert cases == ["liver_0", "liver_1", "liver_2"]


def test_load_2d_slices_balanced_per_case(tmp_path):
    root = _folder(tmp_path / "Task03_Liver")
    data = msd.load(root, _cfg(tmp_path, spatial_dims=2, image_size=28))
    assert data.task.spatial_dims == 2
    both = [data.train, data.test]
    assert all(s.images.shape[1:] == (1, 28, 28) and s.masks.shape[1:] == (28, 28) for s in both)
    lesion_slices = {"liver_0": 4, "liver_1": 2, "liver_2": 6}
    for split in both:
        for case in set(split.tags["case"].tolist()):
            rows = split.tags["case"] == case
            has = split.masks[rows].reshape(rows.sum(), -1).max(axis=1) > 0
            assert has.sum() == lesion_slices[case] and (~has).sum() == lesion_slices[case]
    # image-level label: largest class in the slice's mask
    np.testing.assert_array_equal(data.train.labels,
                                  data.train.masks.reshape(len(data.train), -1).max(1))
    assert 2 in np.concatenate([data.train.labels, data.test.labels])
    again = msd.load(root, _cfg(tmp_path, spatial_dims=2, image_size=28))  # seeded: same slices
    np.testing.assert_array_equal(again.train.masks, data.train.masks)


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    root = _folder(tmp_path / "Task03_Liver")
    calls = []
    real = msd.read_case
    monkeypatch.setattr(msd, "read_case", lambda *a: calls.append(a[0]) or real(*a))
    first = msd.load(root, _cfg(tmp_path, spatial_dims=3))
    second = msd.load(root, _cfg(tmp_path, spatial_dims=3))
    assert len(calls) == 3
    np.testing.assert_array_equal(first.train.images, second.train.images)
    _case(root, "liver_1", range(2, 4), seed=9)                     # new content, same name
    msd.load(root, _cfg(tmp_path, spatial_dims=3))
    assert [p.name for p in calls[3:]] == ["liver_1.nii.gz"]


def test_registry_loads_msd(tmp_path):
    _folder(tmp_path / "Task03_Liver")
    data = load_dataset(_cfg(tmp_path, spatial_dims=3))
    assert data.train.masks is not None and load_dataset(_cfg(tmp_path, spatial_dims=3)) is data


def test_errors_name_the_file(tmp_path):
    root = _folder(tmp_path / "Task03_Liver")
    (root / "labelsTr" / "liver_2.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="liver_2.nii.gz: cannot read it as NIfTI"):
        msd.load(root, _cfg(tmp_path, spatial_dims=3, strict=True))
    data = msd.load(root, _cfg(tmp_path, spatial_dims=3))           # not strict: skipped
    assert len(data.train) + len(data.test) == 2
    assert [Path(p).name for p, _ in data.skipped] == ["liver_2.nii.gz"]

    small = _folder(tmp_path / "two", labels={"0": "background", "1": "liver"})
    with pytest.raises(DataError, match=r"liver_1.nii.gz: mask holds class ids \[0, 1, 2\]"):
        msd.load(small, _cfg(tmp_path, data_path=str(small), strict=True))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)),
             small / "labelsTr" / "liver_0.nii.gz")
    with pytest.raises(DataError, match=r"liver_0.nii.gz: mask shape \(8, 8, 8\) differs"):
        msd.load(small, _cfg(tmp_path, data_path=str(small), strict=True))
    (small / "dataset.json").write_text('{"training": "nope"}')
    with pytest.raises(DataError, match="dataset.json: 'training' must be"):
        msd.load(small, _cfg(tmp_path, data_path=str(small)))
    (small / "dataset.json").unlink()
    with pytest.raises(DataError, match="dataset.json: not found"):
        msd.read_manifest(small)


def test_a_deployed_site_trains_segmentation_on_its_msd_folder(tmp_path):
    """A site's `--data` MSD folder is detected and seen as a segmentation task (masks as
    targets, classes from dataset.json); a local round trains on those masks and the site's
    evaluation reports Dice and HD95."""
    from client.site import load_site
    from common.models import build_model
    from common.training.local import train_local
    from common.training.prediction import evaluate

    root = _folder(tmp_path / "Task03_Liver")
    cfg = RunConfig(task="segmentation", model="unet", width=4, spatial_dims=2, image_size=28,
                    cache_dir=str(tmp_path / "cache"), test_fraction=0.34, batch_size=4,
                    optimizer="adam", lr=0.01, loss="dice_ce")
    site = load_site(cfg, {"data-path": str(root), "site-id": 3})
    assert site.site == 3 and site.task.kind == "segmentation"
    assert site.task.num_classes == 3 and site.train.masks is not None
    model = build_model("unet", spatial_dims=2, in_channels=site.task.channels,
                        num_classes=site.task.num_classes, width=4)
    result = train_local(model, site.train, site.task, cfg, epochs=1, seed=0)
    assert result.steps > 0 and result.loss == result.loss
    metrics = evaluate(model, site.test, site.task)
    assert {"dice", "hd95", "loss"} <= set(metrics)


# --------------------------------------------------------------------------- entries that lie

def _entry(root: Path, training: list[dict]) -> None:
    doc = json.loads((root / "dataset.json").read_text())
    doc["training"] += training
    (root / "dataset.json").write_text(json.dumps(doc))


def test_entries_leaving_the_folder_are_refused_and_never_opened(tmp_path, monkeypatch):
    root = _folder(tmp_path / "Task03_Liver")
    other = tmp_path / "other"
    _case(other, "x", range(2, 4))
    (root / "imagesTr" / "link.nii.gz").symlink_to(other / "imagesTr" / "x.nii.gz")
    _entry(root, [{"image": "../other/imagesTr/x.nii.gz", "label": "../other/labelsTr/x.nii.gz"},
                  {"image": str(other / "imagesTr" / "x.nii.gz"),
                   "label": "./labelsTr/liver_0.nii.gz"},
                  {"image": "./imagesTr/liver_1.nii.gz", "label": "/etc/passwd"},
                  {"image": "./imagesTr/link.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}])
    opened: list[str] = []
    real_load = nib.load
    monkeypatch.setattr(nib, "load", lambda p, *a, **k: opened.append(str(p)) or real_load(p))
    data = msd.load(root, _cfg(tmp_path, spatial_dims=3))
    assert len(data.train) + len(data.test) == 3
    reasons = [reason for _, reason in data.skipped]
    assert len(reasons) == 4 and all("dataset.json: training[" in r for r in reasons)
    assert "training[3] image '../other/imagesTr/x.nii.gz' leads outside" in reasons[0]
    assert "training[4] image" in reasons[1] and "absolute path" in reasons[1]
    assert "training[5] label '/etc/passwd' is an absolute path" in reasons[2]
    assert ("training[6] image a link leading outside the data folder: "
            "'./imagesTr/link.nii.gz' resolves to") in reasons[3]
    assert not any("other" in p or "passwd" in p or "link" in p for p in opened)
    with pytest.raises(DataError, match="training\\[3\\] image .* leads outside"):
        msd.load(root, _cfg(tmp_path, spatial_dims=3, strict=True))


def test_a_case_listed_twice_is_one_sample(tmp_path):
    from client.validate import validate_site_data

    root = _folder(tmp_path / "Task03_Liver")
    _entry(root, [{"image": "imagesTr/liver_0.nii.gz", "label": "labelsTr/liver_0.nii.gz"}])
    data = msd.load(root, _cfg(tmp_path, spatial_dims=3))
    assert len(data.train) + len(data.test) == 3
    (where, reason), = data.skipped
    assert where == "imagesTr/liver_0.nii.gz" and "already listed as training[0]" in reason
    report = validate_site_data(root, layout="msd")
    assert report.manifest["cases"]["usable"] == 3 and report.manifest["cases"]["total"] == 4
    assert "already listed as training[0]" in report.render()


def test_a_case_not_finite_after_preprocessing_is_skipped_by_name(tmp_path, monkeypatch):
    root = _folder(tmp_path / "Task03_Liver")
    real = msd._preprocess
    monkeypatch.setattr(msd, "_preprocess",
                        lambda image, *a: real(image, *a) * np.float32("nan"))
    with pytest.raises(DataError, match="none of the 3 cases.*NaN or infinite after prepro"):
        msd.load(root, _cfg(tmp_path, spatial_dims=3))
