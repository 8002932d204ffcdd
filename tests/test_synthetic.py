"""Synthetic lesion dataset: determinism, exact masks, layout, learnability, and scanner shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.acquisition import AcquisitionProfile, apply_profile
from common.config import RunConfig
from common.datasets import DataError, load_dataset
from common.datasets.synthetic import CLASS_NAMES, load, make_split


def test_same_seed_same_data_other_seed_other_data():
    a, b = load(num_samples=40, seed=1), load(num_samples=40, seed=1)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    np.testing.assert_array_equal(a.test.masks, b.test.masks)
    c = load(num_samples=40, seed=2)
    assert not np.array_equal(a.train.images, c.train.images)
    # the global test split is a different stream, not a copy of train's first images
    assert not np.array_equal(a.test.images, a.train.images[:len(a.test)])


@pytest.mark.parametrize("size, dims, n", [(28, 2, 40), (64, 2, 12), (28, 3, 12), (64, 3, 4)])
def test_shapes_dtypes_and_task(size, dims, n):
    ds = load(size=size, spatial_dims=dims, num_samples=n, seed=0)
    spatial = (size,) * dims
    assert ds.train.images.shape == (n, 1) + spatial and ds.train.images.dtype == np.float32
    assert ds.train.labels.shape == (n,) and ds.train.labels.dtype == np.int64
    assert ds.train.masks.shape == (n,) + spatial and ds.train.masks.dtype == np.uint8
    assert len(ds.test) == max(1, n // 4) and ds.val is None
    assert 0.0 <= ds.train.images.min() and ds.train.images.max() <= 1.0
    assert set(np.unique(ds.train.masks)) <= {0, 1}
    assert ds.task.kind == "multiclass" and ds.task.num_classes == 4
    assert ds.task.class_names == CLASS_NAMES == ("normal", "nodule", "cyst", "mass")
    assert (ds.task.spatial_dims, ds.task.channels, ds.task.size) == (dims, 1, size)


def test_classes_are_balanced():
    labels = load(num_samples=400, seed=0).train.labels
    np.testing.assert_array_equal(np.bincount(labels, minlength=4), [100, 100, 100, 100])


@pytest.mark.parametrize("size, dims", [(28, 2), (64, 2), (28, 3)])
def test_masks_are_exactly_the_lesion(size, dims):
    n = 24
    with_lesion = make_split(n, size=size, spatial_dims=dims, seed=5)
    without = make_split(n, size=size, spatial_dims=dims, seed=5, lesions=False)
    masks, labels = with_lesion.masks.astype(bool), with_lesion.labels
    np.testing.assert_array_equal(masks, without.masks.astype(bool))
    voxels = masks.reshape(n, -1).sum(axis=1)
    assert ((voxels == 0) == (labels == 0)).all()   # empty mask iff normal
    diff = np.abs(with_lesion.images[:, 0] - without.images[:, 0])
    assert (diff[~masks] == 0).all()                  # nothing changes outside the lesion
    assert (diff[masks] > 0.1).all()                  # every lesion pixel differs clearly


def test_lesion_size_and_intensity_separate_the_classes():
    ds = load(size=64, num_samples=80, seed=0)
    imgs, masks, labels = ds.train.images[:, 0], ds.train.masks.astype(bool), ds.train.labels
    area = masks.reshape(len(labels), -1).sum(axis=1)
    mean_in = np.array([imgs[i][masks[i]].mean() if masks[i].any() else np.nan
                        for i in range(len(labels))])
    nodule, cyst, mass = (labels == 1), (labels == 2), (labels == 3)
    assert area[nodule].max() < area[mass].min()      # nodules are small, masses large
    assert mean_in[cyst].max() < mean_in[nodule].min()  # cysts dark, nodules bright


def test_bad_arguments_raise_data_error():
    with pytest.raises(DataError, match="spatial_dims=4"):
        load(spatial_dims=4, num_samples=8)
    with pytest.raises(DataError, match="size=8"):
        load(size=8, num_samples=8)
    with pytest.raises(DataError, match="num_samples=0"):
        load(num_samples=0)


def test_registry_dispatches_and_caches():
    cfg = RunConfig(dataset="synthetic", num_samples=40, seed=3, image_size=28, spatial_dims=2)
    ds = load_dataset(cfg)
    assert load_dataset(cfg) is ds
    np.testing.assert_array_equal(ds.train.images, load(num_samples=40, seed=3).train.images)
    assert load_dataset(cfg.replace(seed=4)) is not ds


def _train_cnn(images: np.ndarray, labels: np.ndarray, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(images)).argmax(1).numpy() == labels).mean())


# A strongly miscalibrated, noisy, blurry, low-resolution scanner.
STRONG_SHIFT = AcquisitionProfile("strong", scale=0.6, offset=0.3, gamma=1.6, noise_std=0.12,
                                  blur_sigma=1.0, resample=0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cnn_learns_the_classes_and_loses_accuracy_under_scanner_shift(seed):
    torch.set_num_threads(1)
    ds = load(size=28, num_samples=600, seed=seed)
    model = _train_cnn(ds.train.images, ds.train.labels, seed)
    clean = _accuracy(model, ds.test.images, ds.test.labels)
    shifted = _accuracy(model, apply_profile(ds.test.images, STRONG_SHIFT, seed), ds.test.labels)
    assert clean > 0.6            # chance is 0.25
    assert clean - shifted >= 0.1
