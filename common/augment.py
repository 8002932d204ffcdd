"""Training augmentations: for segmentation applied identically to images and their masks,
for classification to the images alone (``masks=None``), each sample on its own.

`augment_batch` draws every random parameter from the caller's ``torch.Generator`` (in a fixed
order), so the same generator state gives the same batch. Operations, applied in the order of
`AUGMENTATIONS` whatever order they were requested in:

* ``flip``: each spatial axis of each sample is flipped with probability 1/2 (exact);
* ``hflip``: only the last spatial axis (left-right) is flipped, with probability 1/2 (exact):
  for anatomy whose up/down (and front/back) orientation is fixed;
* ``rotate``: 2D: a rotation by a uniform angle in +-`MAX_ANGLE_DEG` about the image centre;
  3D: ``k`` x 90 degrees (k uniform in 0..3) in one of the three axis planes chosen uniformly,
  exact (``torch.rot90``); in a plane whose two sides differ, k is limited to 0 or 2 so the
  shape is kept;
* ``crop``: a random crop of the zero-padded image, i.e. a shift by a whole number of pixels
  uniform in +-round(`MAX_CROP_FRACTION` x side) per axis (exact);
* ``elastic``: a smooth random displacement field (Gaussian values on a coarse
  `ELASTIC_CONTROL_POINTS` grid, upsampled cubically in 2D / trilinearly in 3D, amplitude
  `ELASTIC_SIGMA` x the side length per axis);
* ``intensity`` (image only): random gamma in [1/`MAX_GAMMA`, `MAX_GAMMA`] on the sample's own
  intensity range, scale 1 +- `MAX_SCALE`, shift +- `MAX_SHIFT` x range, Gaussian noise with std up
  to `MAX_NOISE` x range.

The 2D rotation and the elastic field are combined into one sampling grid, applied with
``grid_sample``: bilinear for the image, nearest for the mask, the same grid for both, zeros
outside the image (mask: background). Masks keep their dtype and their value set (no new
labels); images keep their dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.config import ConfigError

AUGMENTATIONS = ("flip", "hflip", "rotate", "crop", "elastic", "intensity")
MAX_ANGLE_DEG = 15.0
MAX_CROP_FRACTION = 0.1
ELASTIC_CONTROL_POINTS = 4
ELASTIC_SIGMA = 0.05
MAX_GAMMA = 1.5
MAX_SCALE = 0.1
MAX_SHIFT = 0.1
MAX_NOISE = 0.03


def parse_augment(spec: str) -> tuple[str, ...]:
    """``"flip, elastic"`` -> ``("flip", "elastic")`` in `AUGMENTATIONS` order; ``""`` -> ()."""
    if not isinstance(spec, str):
        raise ConfigError(f"augment={spec!r}: expected a comma-separated string of "
                          f"{', '.join(AUGMENTATIONS)} (or '' for none)")
    names = [part.strip() for part in spec.split(",")] if spec.strip() else []
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"augment={spec!r}: unknown augmentation(s) "
                          f"{', '.join(map(repr, unknown))}; expected a comma-separated list of "
                          f"{', '.join(AUGMENTATIONS)} (or '' for none)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"augment={spec!r}: {', '.join(repeated)} listed more than once")
    return tuple(n for n in AUGMENTATIONS if n in names)


def _check_inputs(images: torch.Tensor, masks: torch.Tensor | None,
                  ops: tuple[str, ...]) -> None:
    if images.ndim not in (4, 5) or not images.dtype.is_floating_point:
        raise ValueError(f"augment_batch: images must be float (N, C, H, W) or (N, C, D, H, W); "
                         f"got {images.dtype} of shape {tuple(images.shape)}")
    if masks is not None:
        expected = images.shape[:1] + images.shape[2:]
        if masks.shape != expected or masks.dtype.is_floating_point:
            raise ValueError(f"augment_batch: masks must be integer of shape (N, *spatial) = "
                             f"{tuple(expected)}; got {masks.dtype} of shape {tuple(masks.shape)}")
    unknown = [op for op in ops if op not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"augment_batch: unknown ops {unknown}; expected some of "
                         f"{', '.join(AUGMENTATIONS)} (see parse_augment)")


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)


# --------------------------------------------------------------------------- exact ops

def _flip(images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator,
          last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    dims = 1 if last_only else images.ndim - 2
    first = images.ndim - 2 - dims     # first spatial axis that may flip
    flags = torch.rand(len(images), dims, generator=generator, device=generator.device) < 0.5
    out_i, out_m = [], []
    for n, row in enumerate(flags.tolist()):
        axes = [first + a for a, f in enumerate(row) if f]
        out_i.append(images[n].flip([a + 1 for a in axes]) if axes else images[n])
        if masks is not None:
            out_m.append(masks[n].flip(axes) if axes else masks[n])
    return torch.stack(out_i), (torch.stack(out_m) if masks is not None else None)


_PLANES_3D = ((0, 1), (0, 2), (1, 2))


def _rot90_3d(images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = len(images)
    planes = torch.randint(0, 3, (n,), generator=generator, device=generator.device).tolist()
    turns = torch.randint(0, 4, (n,), generator=generator, device=generator.device).tolist()
    spatial = images.shape[2:]
    out_i, out_m = [], []
    for i in range(n):
        a, b = _PLANES_3D[planes[i]]
        k = turns[i] if spatial[a] == spatial[b] else 2 * (turns[i] % 2)  # keep the shape
        out_i.append(torch.rot90(images[i], k, (a + 1, b + 1)))
        if masks is not None:
            out_m.append(torch.rot90(masks[i], k, (a, b)))
    return torch.stack(out_i), (torch.stack(out_m) if masks is not None else None)


def _shifted(x: torch.Tensor, shift: list[int], margin: list[int]) -> torch.Tensor:
    """``x`` (C?, *spatial) with out[p] = x[p + shift], zeros outside (the last len(shift)
    axes)."""
    pad: list[int] = []
    for m in reversed(margin):       # F.pad lists the last axis first
        pad += [m, m]
    padded = F.pad(x.unsqueeze(0) if x.ndim == len(shift) else x, pad)
    padded = padded.squeeze(0) if x.ndim == len(shift) else padded
    index = [slice(None)] * (x.ndim - len(shift))
    index += [slice(m + t, m + t + s) for m, t, s in zip(margin, shift, x.shape[-len(shift):])]
    return padded[tuple(index)]


def _crop(images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A random crop of the zero-padded sample: a whole-pixel shift per axis (exact)."""
    n, spatial = len(images), tuple(images.shape[2:])
    margin = [round(MAX_CROP_FRACTION * s) for s in spatial]
    shifts = torch.stack([torch.randint(-m, m + 1, (n,), generator=generator,
                                        device=generator.device) for m in margin], -1).tolist()
    out_i = [_shifted(images[i], shifts[i], margin) for i in range(n)]
    out_m = [_shifted(masks[i], shifts[i], margin) for i in range(n)] if masks is not None else []
    return torch.stack(out_i), (torch.stack(out_m) if masks is not None else None)


# --------------------------------------------------------------------------- resampling ops

def _pixel_grid(spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Centred pixel coordinates, shape (*spatial, dims), last axis in grid_sample order
    (x = last spatial axis first)."""
    axes = [torch.arange(s, dtype=torch.float32, device=device) - (s - 1) / 2 for s in spatial]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1)


def _rotation_2d(n: int, generator: torch.Generator) -> torch.Tensor:
    angles = _uniform(n, -MAX_ANGLE_DEG, MAX_ANGLE_DEG, generator) * (math.pi / 180)
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def _elastic_field(n: int, spatial: tuple[int, ...], generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Smooth displacement in pixels, shape (n, *spatial, dims) in grid_sample axis order."""
    dims = len(spatial)
    coarse = torch.randn(n, dims, *([ELASTIC_CONTROL_POINTS] * dims), generator=generator,
                         device=generator.device).to(device)
    mode = "bicubic" if dims == 2 else "trilinear"
    field = F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)
    # channel j displaces along grid axis j (x = last spatial axis): scale by that axis' size
    scale = torch.tensor([ELASTIC_SIGMA * s for s in spatial[::-1]], device=device)
    return field.movedim(1, -1) * scale


def _resample(images: torch.Tensor, masks: torch.Tensor | None, coords: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample at centred pixel ``coords`` (n, *spatial, dims): bilinear image, nearest mask."""
    spatial = images.shape[2:]
    half = torch.tensor([(s - 1) / 2 for s in spatial[::-1]], device=coords.device)
    grid = (coords / half.clamp(min=0.5)).to(images.dtype)   # align_corners=True normalisation
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if masks is None:
        return out, None
    sampled = F.grid_sample(masks.unsqueeze(1).to(grid.dtype), grid, mode="nearest",
                            padding_mode="zeros", align_corners=True)
    return out, sampled.squeeze(1).round().to(masks.dtype)


def _geometric(images: torch.Tensor, masks: torch.Tensor | None, rotate: bool, elastic: bool,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    n, spatial, device = len(images), tuple(images.shape[2:]), images.device
    coords = _pixel_grid(spatial, device).expand(n, *spatial, len(spatial))
    if rotate:   # 2D only: output pixel p samples the input at R p
        rot = _rotation_2d(n, generator).to(device)
        coords = torch.einsum("nij,n...j->n...i", rot, coords)
    if elastic:
        coords = coords + _elastic_field(n, spatial, generator, device)
    return _resample(images, masks, coords)


# --------------------------------------------------------------------------- intensity

def _intensity(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = len(images)
    flat = images.reshape(n, -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp(min=1e-8)
    shape = (n,) + (1,) * (images.ndim - 1)
    gamma = torch.exp(_uniform(n, -math.log(MAX_GAMMA), math.log(MAX_GAMMA), generator))
    scale = _uniform(n, 1 - MAX_SCALE, 1 + MAX_SCALE, generator)
    shift = _uniform(n, -MAX_SHIFT, MAX_SHIFT, generator)
    noise_std = _uniform(n, 0.0, MAX_NOISE, generator)
    noise = torch.randn(images.shape, generator=generator, device=generator.device)
    params = [t.to(images.device, images.dtype).reshape(shape)
              for t in (lo, span, gamma, scale, shift, noise_std)]
    lo, span, gamma, scale, shift, noise_std = params
    unit = ((images - lo) / span).clamp(0, 1) ** gamma
    out = lo + span * (unit * scale + shift) + span * noise_std * noise.to(images)
    return out.to(images.dtype)


def augment_batch(images: torch.Tensor, masks: torch.Tensor | None, ops: tuple[str, ...],
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch: images (N, C, *spatial) float, masks (N, *spatial) integer or None.

    ``ops`` is a subset of `AUGMENTATIONS` (see `parse_augment`), applied in that tuple's order
    of definition; every random draw comes from ``generator`` (drawn on its device). Returns new
    tensors; the inputs are not modified.
    """
    _check_inputs(images, masks, ops)
    if "flip" in ops:
        images, masks = _flip(images, masks, generator)
    if "hflip" in ops:
        images, masks = _flip(images, masks, generator, last_only=True)
    rotate = "rotate" in ops
    if rotate and images.ndim == 5:
        images, masks = _rot90_3d(images, masks, generator)
        rotate = False
    if "crop" in ops:
        images, masks = _crop(images, masks, generator)
    if rotate or "elastic" in ops:
        images, masks = _geometric(images, masks, rotate, "elastic" in ops, generator)
    if "intensity" in ops:
        images = _intensity(images, generator)
    return images, masks
