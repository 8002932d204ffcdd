"""Augmentations: image/mask alignment, integer masks, determinism, parsing."""

from __future__ import annotations

import pytest
import torch

from common.augment import AUGMENTATIONS, augment_batch, parse_augment
from common.config import ConfigError

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(n: int, spatial: tuple[int, ...], labels: tuple[int, ...] = (1, 2),
           seed: int = 0) -> torch.Tensor:
    """Masks with one box per label (boxes may overlap: the later label wins)."""
    g = _gen(seed)
    masks = torch.zeros(n, *spatial, dtype=torch.uint8)
    for i in range(n):
        for label in labels:
            lo = [int(torch.randint(0, s // 2, (1,), generator=g)) for s in spatial]
            masks[(i,) + tuple(slice(a, a + s // 3 + 1) for a, s in zip(lo, spatial))] = label
    return masks


def _as_image(masks: torch.Tensor) -> torch.Tensor:
    return masks.float().unsqueeze(1)


def _agreement(images: torch.Tensor, masks: torch.Tensor) -> float:
    return (images[:, 0].round() == masks.float()).float().mean().item()


def test_parse_augment() -> None:
    assert AUGMENTATIONS == ("flip", "hflip", "rotate", "crop", "elastic", "intensity")
    assert parse_augment("") == ()
    assert parse_augment("  ") == ()
    assert parse_augment("intensity, flip") == ("flip", "intensity")   # canonical order
    assert parse_augment("flip,hflip,rotate,crop,elastic,intensity") == AUGMENTATIONS
    assert parse_augment("crop, flip") == ("flip", "crop")
    with pytest.raises(ConfigError, match="'blur'.*flip, hflip, rotate, crop, elastic, intensity"):
        parse_augment("flip,blur")
    with pytest.raises(ConfigError, match="flip listed more than once"):
        parse_augment("flip,flip")
    with pytest.raises(ConfigError, match="unknown augmentation"):
        parse_augment("flip,")


@pytest.mark.parametrize("spatial,ops", [
    ((28, 28), ("flip",)), ((30, 20), ("flip",)),
    ((16, 16, 16), ("flip",)), ((16, 16, 16), ("rotate",)), ((8, 12, 12), ("flip", "rotate")),
])
def test_exact_ops_keep_image_and_mask_aligned(spatial: tuple[int, ...], ops: tuple) -> None:
    """Flips and 3D 90-degree rotations move image and mask identically, voxel for voxel."""
    masks = _blobs(8, spatial)
    images, out_masks = augment_batch(_as_image(masks), masks, ops, _gen())
    assert images.shape == (8, 1, *spatial) and out_masks.shape == masks.shape
    assert torch.equal(images[:, 0].round(), out_masks.float())
    assert not torch.equal(out_masks, masks)            # something really moved
    # a permutation of voxels: each sample keeps its label counts
    for a, b in zip(masks, out_masks):
        assert torch.equal(torch.bincount(a.flatten().long(), minlength=3),
                           torch.bincount(b.flatten().long(), minlength=3))


@pytest.mark.parametrize("spatial,ops", [
    ((28, 28), ("rotate",)), ((28, 28), ("elastic",)), ((30, 20), ("rotate", "elastic")),
    ((16, 16, 16), ("elastic",)), ((12, 16, 14), ("flip", "rotate", "elastic")),
])
def test_resampling_ops_keep_image_and_mask_aligned(spatial: tuple[int, ...],
                                                    ops: tuple) -> None:
    """Bilinear image and nearest mask from the same grid agree on >= 99% of voxels (they may
    differ only where the image is interpolated across a border)."""
    masks = _blobs(8, spatial, labels=(1,))
    images, out_masks = augment_batch(_as_image(masks), masks, ops, _gen(1))
    assert _agreement(images, out_masks) >= 0.99
    moved = (out_masks != masks).sum() / (masks > 0).sum()
    assert moved > 0.05   # the geometry really changed: >5% of the foreground's size


@pytest.mark.parametrize("dims", [2, 3])
def test_masks_stay_integer_with_the_same_labels(dims: int) -> None:
    spatial = (24, 24) if dims == 2 else (12, 12, 12)
    masks = _blobs(6, spatial, labels=(1, 2, 3))
    for dtype in (torch.uint8, torch.int64):
        out_images, out = augment_batch(_as_image(masks), masks.to(dtype), AUGMENTATIONS, _gen(2))
        assert out.dtype == dtype and out_images.dtype == torch.float32
        assert set(out.unique().tolist()) <= {0, 1, 2, 3}
        assert set(out.unique().tolist()) >= {1, 2, 3}   # small rotations keep every box


def test_intensity_changes_image_only() -> None:
    masks = _blobs(4, (20, 20))
    images = torch.rand(4, 2, 20, 20, generator=_gen(3))
    out_images, out_masks = augment_batch(images, masks, ("intensity",), _gen(4))
    assert torch.equal(out_masks, masks)
    assert out_images.shape == images.shape and not torch.allclose(out_images, images)
    # intensity maps voxels, it does not move them: ordering is mostly kept
    corr = torch.corrcoef(torch.stack([images.flatten(), out_images.flatten()]))[0, 1]
    assert corr > 0.8


def test_deterministic_under_the_same_seed() -> None:
    masks = _blobs(4, (28, 28))
    images = torch.rand(4, 1, 28, 28, generator=_gen(5))
    a = augment_batch(images, masks, AUGMENTATIONS, _gen(7))
    b = augment_batch(images, masks, AUGMENTATIONS, _gen(7))
    c = augment_batch(images, masks, AUGMENTATIONS, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_inputs_are_not_modified() -> None:
    masks = _blobs(3, (16, 16))
    images = _as_image(masks)
    images_copy, masks_copy = images.clone(), masks.clone()
    augment_batch(images, masks, AUGMENTATIONS, _gen(9))
    assert torch.equal(images, images_copy) and torch.equal(masks, masks_copy)


@pytest.mark.parametrize("spatial", [(28, 28), (10, 12, 12)])
def test_classification_path_without_masks(spatial: tuple[int, ...]) -> None:
    images = torch.rand(3, 3, *spatial, generator=_gen(10))
    out, masks = augment_batch(images, None, AUGMENTATIONS, _gen(11))
    assert masks is None and out.shape == images.shape and torch.isfinite(out).all()
    same, _ = augment_batch(images, None, (), _gen(11))
    assert torch.equal(same, images)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="images must be float"):
        augment_batch(torch.zeros(2, 8, 8), None, ("flip",), _gen())
    with pytest.raises(ValueError, match=r"masks must be integer of shape .*\(2, 8, 8\)"):
        augment_batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 9, dtype=torch.uint8),
                      ("flip",), _gen())
    with pytest.raises(ValueError, match="unknown ops"):
        augment_batch(torch.zeros(2, 1, 8, 8), None, ("blur",), _gen())
