"""Resampling to a common physical pixel spacing (the run setting ``spacing``).

Stretching every image to the model's input size (`common.datasets.resize.resize`) makes an
object's size in pixels depend on the scanner's pixel spacing and field of view: two hospitals
imaging the same 20 mm lesion at 0.5 mm and at 1 mm per pixel hand the model lesions of different
sizes. Here an image is first resampled to one spacing in mm (MONAI ``Spacingd``: bilinear for
images, nearest for masks; images are smoothed first along axes that shrink, as MONAI's
anti-aliased ``Resize`` does), then padded with 0 or cropped about its centre to the input size,
never stretched, so one pixel means the same distance at every site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from common.datasets.base import DataError

# Largest side (voxels) an image may have after resampling, before the pad/crop: a file whose
# spacing is off by orders of magnitude (1e6 mm, 1e-30 mm) is refused instead of allocated.
MAX_RESAMPLED_SIDE = 8192


def resample(image: np.ndarray, source: Sequence[float], target: Sequence[float],
             roi: Sequence[int], mask: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Channel-first ``image`` (C, *spatial) with voxel size ``source`` (mm per spatial axis) at
    voxel size ``target``, then padded with 0 / cropped about the centre to ``roi``.

    A ``target`` value <= 0 keeps that axis' spacing and a ``roi`` value <= 0 keeps that axis'
    length (MONAI's conventions). ``mask`` (*spatial, class ids) follows the same geometry with
    nearest-neighbour sampling. Returns float32 ``image`` clipped to [0, 1] and the mask (or None).
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, ResizeWithPadOrCropd, Spacingd

    _check(source, image.ndim - 1)
    _check_scale(image.shape[1:], source, target)
    affine = torch.diag(torch.tensor([*map(float, source)] + [1.0] * (4 - len(source)),
                                     dtype=torch.float64))
    smoothed = _anti_alias(np.ascontiguousarray(image, dtype=np.float32), source, target)
    data = {"image": MetaTensor(torch.as_tensor(smoothed), affine=affine)}
    if mask is not None:
        data["mask"] = MetaTensor(torch.as_tensor(mask[None].astype(np.float32)), affine=affine)
    keys = tuple(data)
    modes = ("bilinear", "nearest")[:len(keys)]
    out = Compose([Spacingd(keys, pixdim=tuple(target), mode=modes, dtype=np.float32),
                   ResizeWithPadOrCropd(keys, spatial_size=tuple(roi))])(data)
    resampled = np.clip(np.asarray(out["image"]), 0.0, 1.0).astype(np.float32)
    if mask is None:
        return resampled, None
    return resampled, np.rint(np.asarray(out["mask"])[0]).astype(np.float32)


def fit_to_spacing(image: np.ndarray, source: Sequence[float], target: Sequence[float],
                   size: int) -> np.ndarray:
    """(H, W) or (D, H, W) image with spacing ``source`` -> (1, size, ...) float32 at spacing
    ``target``, padded/cropped about the centre (the spacing-keeping counterpart of ``resize``)."""
    out, _ = resample(image[None], source, target, (size,) * image.ndim)
    return out


def _anti_alias(image: np.ndarray, source: Sequence[float], target: Sequence[float]
                ) -> np.ndarray:
    """Gaussian smoothing with sigma (shrink factor - 1) / 2 voxels along each shrinking axis
    (MONAI ``Resize``'s anti-aliasing), so downsampling does not alias fine texture."""
    from monai.transforms import GaussianSmooth

    sigma = [max(0.0, (t / s - 1.0) / 2.0) if t > 0 else 0.0 for s, t in zip(source, target)]
    if not any(sigma):
        return image
    return np.asarray(GaussianSmooth(sigma=sigma)(image), dtype=np.float32)


def _check_scale(shape: Sequence[int], source: Sequence[float], target: Sequence[float]) -> None:
    """DataError when resampling would leave an axis under one voxel or over
    `MAX_RESAMPLED_SIDE` (an implausible spacing, not an image)."""
    for n, s, t in zip(shape, source, target):
        if t <= 0:
            continue
        side = n * s / t
        if not (0.5 <= side <= MAX_RESAMPLED_SIDE):
            raise DataError(f"spacing {tuple(float(v) for v in source)} mm: resampling {n} "
                            f"voxels of {s:g} mm to {t:g} mm would give {side:.3g} voxels "
                            f"(allowed 1..{MAX_RESAMPLED_SIDE}); the file's spacing tags are "
                            f"implausible")


def _check(source: Sequence[float], dims: int) -> None:
    if len(source) != dims or not all(math.isfinite(v) and v > 0 for v in source):
        raise DataError(f"source spacing {tuple(source)} mm: expected {dims} positive numbers, "
                        f"one per spatial axis of the image")
