"""Seeded synthetic MedMNIST-like lesion dataset, 2D slices or 3D volumes, with exact lesion masks.

Every image shows a grey "organ" (soft-edged rotated ellipse / ellipsoid over a darker body, with
low-frequency texture and mild noise). Classes differ by the lesion inside the organ:

* 0 ``normal``: no lesion (all-zero mask);
* 1 ``nodule``: small, bright, round;
* 2 ``cyst``: medium, dark fluid-filled interior with a thin bright rim;
* 3 ``mass``: large, moderately bright, lobulated (union of overlapping balls).

Geometry is defined in normalised coordinates [-1, 1], so a 64 px image shows the same anatomy as
the 28 px one at a higher resolution; per-image parameters are drawn before rendering, so the
rendering (chunked to bound memory) never changes what is drawn.
"""

from __future__ import annotations

import numpy as np

from common.datasets.base import Dataset, DataError, Split, TaskInfo

CLASS_NAMES = ("normal", "nodule", "cyst", "mass")
NUM_CLASSES = len(CLASS_NAMES)
_TEXTURE_WAVES = 3
_MASS_LOBES = 4
_CHUNK_VOXELS = 1 << 21     # pixels rendered per chunk (bounds temporary memory)


def load(*, size: int = 28, spatial_dims: int = 2, num_samples: int = 2400,
         seed: int = 0) -> Dataset:
    """Synthetic dataset: ``train`` has ``num_samples`` images, ``test`` ``num_samples // 4``.

    The two splits come from different seed streams of ``seed``; there is no official ``val``.
    """
    if num_samples < 1:
        raise DataError(f"synthetic: num_samples={num_samples!r}: expected >= 1")
    train = make_split(num_samples, size=size, spatial_dims=spatial_dims, seed=seed, stream=0)
    test = make_split(max(1, num_samples // 4), size=size, spatial_dims=spatial_dims, seed=seed,
                      stream=1)
    task = TaskInfo(kind="multiclass", num_classes=NUM_CLASSES, spatial_dims=spatial_dims,
                    channels=1, size=size, class_names=CLASS_NAMES)
    return Dataset(name="synthetic", task=task, train=train, test=test, val=None)


def make_split(num: int, *, size: int, spatial_dims: int, seed: int, stream: int = 0,
               lesions: bool = True) -> Split:
    """Render ``num`` images from seed stream (``seed``, ``stream``).

    ``lesions=False`` renders the identical anatomy and noise with the lesions left out (the masks
    are still returned): comparing both shows the masks cover exactly the changed pixels.
    """
    _check(num, size, spatial_dims)
    params = _draw_params(np.random.default_rng([seed, stream, 0]), num, spatial_dims)
    noise_rng = np.random.default_rng([seed, stream, 1])
    shape = (size,) * spatial_dims
    images = np.empty((num, 1) + shape, dtype=np.float32)
    masks = np.empty((num,) + shape, dtype=np.uint8)
    grid = _grid(size, spatial_dims)
    chunk = max(1, _CHUNK_VOXELS // size ** spatial_dims)
    for start in range(0, num, chunk):
        part = {k: v[start:start + chunk] for k, v in params.items()}
        img, mask = _render(part, grid, lesions)
        img += noise_rng.standard_normal(img.shape, dtype=np.float32) * _bcast(part["noise"], img)
        images[start:start + chunk, 0] = np.clip(img, 0.0, 1.0)
        masks[start:start + chunk] = mask
    return Split(images=images, labels=params["label"].astype(np.int64), masks=masks)


def _check(num: int, size: int, spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise DataError(f"synthetic: spatial_dims={spatial_dims!r}: expected 2 or 3")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise DataError(f"synthetic: size={size!r}: expected an int >= 16 (e.g. 28 or 64)")
    if num < 1:
        raise DataError(f"synthetic: num={num!r}: expected >= 1")


def _draw_params(rng: np.random.Generator, n: int, d: int) -> dict[str, np.ndarray]:
    """All per-image random parameters, drawn up front in a fixed order."""
    f32 = np.float32
    p: dict[str, np.ndarray] = {"label": rng.permutation(np.arange(n) % NUM_CLASSES)}
    p["organ_c"] = rng.uniform(-0.08, 0.08, (n, d)).astype(f32)
    p["organ_r"] = rng.uniform(0.58, 0.78, (n, d)).astype(f32)
    p["organ_rot"] = rng.uniform(0.0, np.pi, n).astype(f32)
    p["organ_i"] = rng.uniform(0.38, 0.50, n).astype(f32)
    p["body_i"] = rng.uniform(0.06, 0.14, n).astype(f32)
    p["tex_k"] = (_unit(rng, (n, _TEXTURE_WAVES), d)
                  * rng.uniform(2.0, 5.0, (n, _TEXTURE_WAVES, 1))).astype(f32)
    p["tex_phase"] = rng.uniform(0.0, 2 * np.pi, (n, _TEXTURE_WAVES)).astype(f32)
    p["tex_amp"] = rng.uniform(0.015, 0.035, (n, _TEXTURE_WAVES)).astype(f32)
    p["noise"] = rng.uniform(0.012, 0.025, n).astype(f32)
    # lesion centre: within 0.2 of the organ centre, so every lesion lies inside the organ
    p["les_c"] = (p["organ_c"] + _unit(rng, (n,), d) * rng.uniform(0, 0.2, (n, 1))).astype(f32)
    p["nod_r"] = rng.uniform(0.10, 0.14, n).astype(f32)
    p["nod_amp"] = rng.uniform(0.32, 0.42, n).astype(f32)
    p["cyst_r"] = rng.uniform(0.15, 0.21, n).astype(f32)
    p["cyst_rim"] = rng.uniform(0.22, 0.30, n).astype(f32)
    p["mass_r"] = rng.uniform(0.19, 0.24, n).astype(f32)
    p["mass_amp"] = rng.uniform(0.22, 0.30, n).astype(f32)
    p["lobe_dir"] = _unit(rng, (n, _MASS_LOBES), d).astype(f32)
    p["lobe_r"] = rng.uniform(0.55, 0.75, (n, _MASS_LOBES)).astype(f32)
    return p


def _unit(rng: np.random.Generator, lead: tuple[int, ...], d: int) -> np.ndarray:
    v = rng.standard_normal(lead + (d,))
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)


def _grid(size: int, d: int) -> list[np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], one broadcastable array per axis, with a batch axis."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    out = []
    for a in range(d):
        shape = [1] * (d + 1)
        shape[a + 1] = size
        out.append(axis.reshape(shape))
    return out


def _bcast(values: np.ndarray, like_or_d: np.ndarray | int) -> np.ndarray:
    """Reshape per-image (n,) values to broadcast against (n, *spatial)."""
    d = like_or_d if isinstance(like_or_d, int) else like_or_d.ndim - 1
    return values.reshape((-1,) + (1,) * d)


def _render(p: dict[str, np.ndarray], grid: list[np.ndarray],
            lesions: bool) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free images (n, *spatial) and lesion masks for one chunk of parameters."""
    d = len(grid)
    organ = _organ_weight(p, grid)
    body, organ_i = _bcast(p["body_i"], d), _bcast(p["organ_i"], d)
    img = body + (organ_i - body) * organ + _texture(p, grid)
    d2 = sum((g - _bcast(p["les_c"][:, a], d)) ** 2 for a, g in enumerate(grid))
    label = _bcast(p["label"], d)
    mask = np.zeros(img.shape, dtype=bool)

    nod_r2 = _bcast(p["nod_r"], d) ** 2
    nodule = (label == 1) & (d2 < nod_r2)
    cyst_r = _bcast(p["cyst_r"], d)
    rim_w = np.float32(0.09)
    inner = (label == 2) & (d2 < cyst_r ** 2)
    rim = (label == 2) & ~inner & (d2 < (cyst_r + rim_w) ** 2)
    mass_core = _bcast(p["mass_r"], d)
    mass = (label == 3) & (d2 < (0.7 * mass_core) ** 2)
    mass |= _lobes(p, grid)
    mask |= nodule | inner | rim | mass
    if lesions:
        nod_profile = _bcast(p["nod_amp"], d) * (1 - 0.3 * d2 / nod_r2)
        img = np.where(nodule, img + nod_profile, img)
        img = np.where(inner, 0.3 * organ_i, img)
        img = np.where(rim, img + _bcast(p["cyst_rim"], d), img)
        mass_profile = _bcast(p["mass_amp"], d) * (1 - 0.2 * np.minimum(d2 / mass_core ** 2, 1))
        img = np.where(mass, img + mass_profile, img)
    return img.astype(np.float32, copy=False), mask.astype(np.uint8)


def _organ_weight(p: dict[str, np.ndarray], grid: list[np.ndarray]) -> np.ndarray:
    """Soft 0..1 indicator of the organ: an ellipse(oid) rotated in the last two axes."""
    d = len(grid)
    rel = [g - _bcast(p["organ_c"][:, a], d) for a, g in enumerate(grid)]
    cos, sin = _bcast(np.cos(p["organ_rot"]), d), _bcast(np.sin(p["organ_rot"]), d)
    rel[-2], rel[-1] = cos * rel[-2] + sin * rel[-1], -sin * rel[-2] + cos * rel[-1]
    q = sum((r / _bcast(p["organ_r"][:, a], d)) ** 2 for a, r in enumerate(rel))
    return 1.0 / (1.0 + np.exp(-14.0 * (1.0 - np.sqrt(q))))


def _texture(p: dict[str, np.ndarray], grid: list[np.ndarray]) -> np.ndarray:
    d = len(grid)
    out = np.zeros((), dtype=np.float32)
    for w in range(_TEXTURE_WAVES):
        phase = _bcast(p["tex_phase"][:, w], d) + sum(
            _bcast(p["tex_k"][:, w, a], d) * g for a, g in enumerate(grid))
        out = out + _bcast(p["tex_amp"][:, w], d) * np.cos(phase)
    return out


def _lobes(p: dict[str, np.ndarray], grid: list[np.ndarray]) -> np.ndarray:
    """Union of the mass lobes (balls around the lesion centre), computed for mass images only."""
    d = len(grid)
    n = p["label"].shape[0]
    out = np.zeros((n,) + tuple(max(g.shape[a + 1] for g in grid) for a in range(d)), dtype=bool)
    idx = np.flatnonzero(p["label"] == 3)
    if idx.size == 0:
        return out
    core = p["mass_r"][idx]
    for lobe in range(_MASS_LOBES):
        centre = p["les_c"][idx] + p["lobe_dir"][idx, lobe] * (0.5 * core)[:, None]
        radius = _bcast(p["lobe_r"][idx, lobe] * core, d)
        d2 = sum((g - _bcast(centre[:, a], d)) ** 2 for a, g in enumerate(grid))
        out[idx] |= d2 < radius ** 2
    return out
