"""Medical Segmentation Decathlon (MSD) folders: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/``.

``dataset.json`` lists the labelled cases (``"training": [{"image": "./imagesTr/x.nii.gz",
"label": "./labelsTr/x.nii.gz"}, ...]``), the mask classes (``"labels": {"0": "background",
"1": "tumour"}``) and the image channels (``"modality": {"0": "CT"}``). Only the training cases
have masks, so they are split into train / test here, by case and seeded (cfg.test_fraction), so
that no patient's slices land on both sides.

Each case is read with nibabel, reoriented to the closest canonical (RAS) orientation, and laid out
channel-first as (C, D, H, W) = (channels, axial z, y, x). Each channel's intensities are clipped
to its 0.5th..99.5th percentile and scaled to [0, 1] (robust to CT air/metal and MR outliers).

* ``spatial_dims == 3``: the volume is resized to ``image_size`` per side (stretched to a cube,
  like MedMNIST 3D); images (N, C, S, S, S), masks (N, S, S, S).
* ``spatial_dims == 2``: axial slices resized in-plane to S x S; of each case every slice with
  foreground is kept plus as many slices without (seeded choice; all of them if fewer).

With the run setting ``spacing``, image and mask are instead resampled together to that voxel
size in mm (taken from the NIfTI affine; 2D: in-plane only, the slices are kept) and padded with
0 / cropped about the centre to S per side (`common.datasets.spacing`), keeping physical scale.

Paths in ``dataset.json`` follow `common.datasets.paths`: an entry that is absolute, climbs out
of the folder (``../other/x.nii.gz``) or is a link leading outside it is refused and never
opened; an entry listing a case already listed is refused too (one case, one sample). A refused
entry is one skipped case (``strict``: an error), like an unreadable one. NaN / infinite voxels
become 0 before the percentile scaling; a case that is still not finite after preprocessing
is skipped.

Masks are uint8 class ids (nearest-neighbour resampling). The image-level label is the largest
class id present in the sample's mask (for a background/lesion task: lesion absent 0 / present
1), so classification models can also train on MSD data; `TaskInfo.num_classes` is the number of
mask classes and `TaskInfo.class_names` their names. Preprocessed cases are cached by content.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.spacing_spec import parse_spacing
from common.datasets.base import Dataset, DataError, Split, TaskInfo
from common.datasets.cache import ArrayCache, array_cache
from common.datasets.paths import inside
from common.datasets.reading import reading
from common.datasets.resize import resize
from common.datasets.spacing import resample

if TYPE_CHECKING:
    from common.config import RunConfig

MANIFEST = "dataset.json"
CLIP_PERCENTILES = (0.5, 99.5)
_CASE_VERSION = "msd-case-1"


@dataclass(frozen=True)
class MsdOptions:
    """The run-config fields an MSD load depends on (the registry caches by these)."""

    size: int = 28
    spatial_dims: int = 3
    test_fraction: float = 0.2
    seed: int = 0
    strict: bool = False
    cache_dir: str = ""
    spacing: str = ""

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "MsdOptions":
        return cls(size=cfg.image_size, spatial_dims=cfg.spatial_dims,
                   test_fraction=cfg.test_fraction, seed=cfg.seed, strict=cfg.strict,
                   cache_dir=cfg.cache_dir, spacing=cfg.spacing)


@dataclass(frozen=True)
class Manifest:
    cases: tuple[tuple[Path, Path], ...]      # (image, label) per usable training entry
    class_names: tuple[str, ...]              # mask class id -> name
    modalities: tuple[str, ...]               # image channel -> modality
    name: str
    # training entries refused before any file is opened: (the entry's image path as written,
    # reason naming it); outside the data folder, or a case listed twice
    refused: tuple[tuple[str, str], ...] = ()


def load(data_path: str | Path, cfg: RunConfig) -> Dataset:
    """An MSD folder as a `Dataset` with masks (see the module docstring)."""
    return load_folder(Path(data_path), MsdOptions.from_config(cfg))


def read_manifest(root: Path) -> Manifest:
    """Parse and check ``root/dataset.json``; every error names the file and the field."""
    with reading(Path(root) / MANIFEST):
        return _read_manifest(root)


def _read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; an MSD folder has dataset.json, imagesTr/ and "
                        f"labelsTr/") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    cases, refused = _cases(doc, path, Path(root))
    return Manifest(cases, _class_names(doc, path), _modalities(doc, path),
                    str(doc.get("name") or Path(root).name), refused)


def _cases(doc: dict, path: Path, root: Path
           ) -> tuple[tuple[tuple[Path, Path], ...], tuple[tuple[str, str], ...]]:
    training = doc.get("training")
    if not isinstance(training, list) or not training:
        raise DataError(f"{path}: 'training' must be a non-empty list of "
                        f"{{\"image\": ..., \"label\": ...}} entries")
    cases, refused, seen = [], [], {}
    for i, entry in enumerate(training):
        if not (isinstance(entry, dict) and isinstance(entry.get("image"), str)
                and isinstance(entry.get("label"), str)):
            raise DataError(f"{path}: training[{i}] must have string 'image' and 'label' paths, "
                            f"got {entry!r}")
        try:
            case = _case_paths(root, entry, i, path, seen)
        except DataError as exc:
            refused.append((entry["image"], str(exc)))
            continue
        cases.append(case)
    return tuple(cases), tuple(refused)


def _case_paths(root: Path, entry: dict, i: int, manifest: Path,
                seen: dict[object, int]) -> tuple[Path, Path]:
    """(image, label) of ``training[i]`` inside the folder, not listed before; else DataError."""
    paths = []
    for field in ("image", "label"):
        try:
            paths.append(inside(root, entry[field]))
        except DataError as exc:
            raise DataError(f"{manifest}: training[{i}] {field} {exc}") from None
    identity = _identity(paths[0])
    if identity in seen:
        raise DataError(f"{manifest}: training[{i}] image {entry['image']!r} is the case already "
                        f"listed as training[{seen[identity]}]; one case is one sample: the "
                        f"entry is skipped, list each case once")
    seen[identity] = i
    return paths[0], paths[1]


def _identity(path: Path) -> object:
    """The file behind ``path`` (device, inode) when it exists, else its spelling."""
    try:
        stat = path.stat()
    except OSError:
        return str(path)
    return (stat.st_dev, stat.st_ino)


def _class_names(doc: dict, path: Path) -> tuple[str, ...]:
    labels = doc.get("labels")
    try:
        ids = {int(k): str(v) for k, v in labels.items()}
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{path}: 'labels' must map class ids to names, e.g. "
                        f"{{\"0\": \"background\", \"1\": \"tumour\"}}; got {labels!r}") from None
    if sorted(ids) != list(range(len(ids))) or len(ids) < 2:
        raise DataError(f"{path}: 'labels' ids must be 0..K-1 with K >= 2 (0 = background); "
                        f"got {sorted(ids)}")
    return tuple(ids[i] for i in range(len(ids)))


def _modalities(doc: dict, path: Path) -> tuple[str, ...]:
    modality = doc.get("modality", {"0": "unknown"})
    try:
        ids = {int(k): str(v) for k, v in modality.items()}
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{path}: 'modality' must map channel ids to names, e.g. "
                        f"{{\"0\": \"CT\"}}; got {modality!r}") from None
    if sorted(ids) != list(range(len(ids))) or not ids:
        raise DataError(f"{path}: 'modality' ids must be 0..C-1; got {sorted(ids)}")
    return tuple(ids[i] for i in range(len(ids)))


# --------------------------------------------------------------------------- one case

def read_case(image_path: Path, label_path: Path, num_classes: int,
              channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, D, H, W) float32 image in [0, 1] and (D, H, W) uint8 mask, canonical orientation;
    every failure is a DataError naming the file."""
    try:
        return _read_case(image_path, label_path, num_classes, channels)
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad case is one named, skipped case
        raise DataError(f"{image_path}: unexpected error while reading the case "
                        f"({type(exc).__name__}: {exc}); the case is skipped; please report "
                        f"it") from None


def _read_case(image_path: Path, label_path: Path, num_classes: int,
               channels: int) -> tuple[np.ndarray, np.ndarray]:
    image = _read_nifti(image_path)
    mask = _read_nifti(label_path)
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4 or image.shape[-1] != channels:
        raise DataError(f"{image_path}: shape {image.shape}; expected (x, y, z) or (x, y, z, "
                        f"{channels}) for the {channels} channel(s) dataset.json lists")
    if image.size == 0:
        raise DataError(f"{image_path}: empty volume (shape {image.shape}); expected voxels")
    if mask.shape != image.shape[:3]:
        raise DataError(f"{label_path}: mask shape {mask.shape} differs from the image's "
                        f"{image.shape[:3]} ({image_path.name})")
    if not np.all(np.isfinite(mask)) or np.any(mask != np.round(mask)):
        raise DataError(f"{label_path}: mask values must be integer class ids")
    found = np.unique(mask).astype(np.int64)
    if found.min() < 0 or found.max() >= num_classes:
        raise DataError(f"{label_path}: mask holds class ids {found.tolist()} but dataset.json "
                        f"'labels' has ids 0..{num_classes - 1}")
    image = np.stack([normalise(image[..., c]) for c in range(channels)])
    # (C, x, y, z) -> (C, z, y, x): axial slices first, then rows (y) and columns (x)
    return (np.ascontiguousarray(image.transpose(0, 3, 2, 1)),
            np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8))


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{path}: not found (listed in {MANIFEST})")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors, ...
        raise DataError(f"{path}: cannot read it as NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim < 3:
        raise DataError(f"{path}: {data.ndim}-D image; expected a 3-D volume")
    return data


def voxel_spacing(path: Path) -> tuple[float, float, float]:
    """Voxel size in mm in `read_case`'s axis order (z, y, x), from the NIfTI affine (header
    only), permuted as `nib.as_closest_canonical` permutes the axes."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        sizes = nib.affines.voxel_sizes(img.affine)[:3]
        ornt = nib.io_orientation(img.affine)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors, ...
        raise DataError(f"{path}: cannot read it as NIfTI ({type(exc).__name__}: {exc})") from None
    usable = len(sizes) == 3 and np.all(np.isfinite(ornt[:3])) and all(
        math.isfinite(v) and v > 0 for v in sizes)
    if not usable:
        raise DataError(f"{path}: no usable voxel size in its affine (pixdim/qform/sform: "
                        f"{tuple(float(v) for v in sizes)} mm); the run setting spacing needs it "
                        f"to resample (spacing='' stretches images instead)")
    canonical = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt[:3]):
        canonical[int(target)] = float(sizes[axis])
    x, y, z = canonical
    return z, y, x


def normalise(volume: np.ndarray) -> np.ndarray:
    """Clip to the 0.5..99.5 percentiles, scale to [0, 1] (a constant volume becomes 0)."""
    if not np.all(np.isfinite(volume)):
        volume = np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(volume, CLIP_PERCENTILES)
    if hi <= lo:
        return np.zeros(volume.shape, dtype=np.float32)
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _preprocess(image: np.ndarray, mask: np.ndarray, size: int, spatial_dims: int
                ) -> np.ndarray:
    """Resized image channels and the mask stacked as float32: (C + 1, S, S, S) for 3D,
    (D, C + 1, S, S) (every axial slice) for 2D."""
    channels = image.shape[0]
    if spatial_dims == 3:
        parts = [resize(image[c], size)[0] for c in range(channels)]
        parts.append(resize(mask.astype(np.float32), size, mode="nearest")[0])
        return np.stack(parts).astype(np.float32)
    out = np.empty((image.shape[1], channels + 1, size, size), dtype=np.float32)
    for z in range(image.shape[1]):
        for c in range(channels):
            out[z, c] = resize(image[c, z], size)[0]
        out[z, channels] = resize(mask[z].astype(np.float32), size, mode="nearest")[0]
    return out


def _preprocess_at_spacing(image: np.ndarray, mask: np.ndarray, source: tuple[float, ...],
                          target: tuple[float, ...], size: int, spatial_dims: int) -> np.ndarray:
    """`_preprocess`'s layout, but image and mask resampled together to ``target`` mm and
    padded/cropped to S about the centre; 2D keeps the slices (in-plane resampling only)."""
    if spatial_dims == 3:
        pixdim, roi = target, (size,) * 3
    else:
        pixdim, roi = (0.0, *target), (-1, size, size)   # <= 0: keep that axis (MONAI)
    image, mask = resample(image, source, pixdim, roi, mask)
    stacked = np.concatenate([image, mask[None]]).astype(np.float32)
    return stacked if spatial_dims == 3 else np.ascontiguousarray(stacked.transpose(1, 0, 2, 3))


# --------------------------------------------------------------------------- folder

def load_folder(root: Path, opts: MsdOptions) -> Dataset:
    root = Path(root).expanduser()
    with reading(root):
        return _load_folder(root, opts)


def _load_folder(root: Path, opts: MsdOptions) -> Dataset:
    if not str(root) or not root.is_dir():
        raise DataError(f"msd data_path={str(root)!r}: not a folder; expected a Medical "
                        f"Segmentation Decathlon folder (dataset.json, imagesTr/, labelsTr/)")
    parse_spacing(opts.spacing, opts.spatial_dims)
    manifest = read_manifest(root)
    if opts.strict and manifest.refused:
        raise DataError(manifest.refused[0][1])
    cache = array_cache(opts.cache_dir)
    arrays, names, skipped = [], [], list(manifest.refused)
    for image_path, label_path in manifest.cases:
        try:
            arrays.append(_case(image_path, label_path, manifest, opts, cache))
        except DataError as exc:
            if opts.strict:
                raise
            skipped.append((str(image_path), str(exc).removeprefix(f"{image_path}: ")))
            continue
        names.append(_case_name(image_path))
    if not arrays:
        total = len(manifest.cases) + len(manifest.refused)
        raise DataError(f"{root}: none of the {total} cases in {MANIFEST} could "
                        f"be read (first: {skipped[0][1]})")
    test_cases = _test_cases(len(arrays), opts.test_fraction, opts.seed)
    splits = {}
    for name, chosen in (("train", ~test_cases), ("test", test_cases)):
        idx = np.flatnonzero(chosen)
        splits[name] = _split([arrays[i] for i in idx], [names[i] for i in idx],
                              len(manifest.modalities), opts) if len(idx) else None
    num_classes = len(manifest.class_names)
    task = TaskInfo(kind="binary" if num_classes == 2 else "multiclass",
                    num_classes=num_classes, spatial_dims=opts.spatial_dims,
                    channels=len(manifest.modalities), size=opts.size,
                    class_names=manifest.class_names)
    return Dataset(f"msd:{manifest.name}", task, splits["train"], splits["test"], None,
                   skipped=tuple(skipped))


def _case_name(image_path: Path) -> str:
    return image_path.name.removesuffix(".gz").removesuffix(".nii")


def _case(image_path: Path, label_path: Path, manifest: Manifest, opts: MsdOptions,
          cache: ArrayCache) -> np.ndarray:
    for path in (image_path, label_path):
        if not path.is_file():
            raise DataError(f"{path}: not found (listed in {MANIFEST})")

    target = parse_spacing(opts.spacing, opts.spatial_dims)

    def compute() -> np.ndarray:
        image, mask = read_case(image_path, label_path, len(manifest.class_names),
                                len(manifest.modalities))
        return preprocess_case(image, mask, image_path, opts)

    key = (_CASE_VERSION, image_path, label_path, len(manifest.class_names),
           len(manifest.modalities), opts.size, opts.spatial_dims)
    if target is not None:   # appended only when set: keys (and cached arrays) of '' unchanged
        key += ("spacing", target)
    try:
        stacked = cache.get_or_compute(key, compute)
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad case is one named, skipped case
        raise DataError(f"{image_path}: unexpected error while reading the case "
                        f"({type(exc).__name__}: {exc}); the case is skipped; please report "
                        f"it") from None
    check_case(stacked, image_path, len(manifest.modalities), opts)
    return stacked


def preprocess_case(image: np.ndarray, mask: np.ndarray, image_path: Path, opts: MsdOptions
                    ) -> np.ndarray:
    """`read_case`'s image and mask as training stacks them (`_preprocess` or, with
    ``opts.spacing``, `_preprocess_at_spacing`); an implausible voxel size is a DataError
    naming ``image_path``."""
    target = parse_spacing(opts.spacing, opts.spatial_dims)
    if target is None:
        return _preprocess(image, mask, opts.size, opts.spatial_dims)
    try:
        return _preprocess_at_spacing(image, mask, voxel_spacing(image_path), target, opts.size,
                                      opts.spatial_dims)
    except DataError as exc:
        message = str(exc)
        raise DataError(message if str(image_path) in message
                        else f"{image_path}: {message}") from None


def check_case(stacked: np.ndarray, image_path: Path, channels: int, opts: MsdOptions) -> None:
    """A preprocessed case is finite and of the declared shape, or a DataError naming it."""
    side = (opts.size,) * opts.spatial_dims
    shape = stacked.shape if opts.spatial_dims == 3 else stacked.shape[1:]
    expected = (channels + 1, *side)
    if tuple(shape) != expected or (opts.spatial_dims == 2 and len(stacked) == 0):
        raise DataError(f"{image_path}: preprocessed to shape {stacked.shape}, expected "
                        f"{'(slices, ' if opts.spatial_dims == 2 else '('}"
                        f"{', '.join(map(str, expected))})")
    bad = int(stacked.size - np.count_nonzero(np.isfinite(stacked)))
    if bad:
        raise DataError(f"{image_path}: {bad} voxel values are NaN or infinite after "
                        f"preprocessing; the case would train as garbage")


def _test_cases(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean per case: held out as test (seeded; none when there is a single case)."""
    n_test = min(max(1, math.floor(n * fraction + 0.5)), n - 1) if n > 1 else 0
    test = np.zeros(n, dtype=bool)
    test[np.random.default_rng([seed, 0x3D5]).permutation(n)[:n_test]] = True
    return test


def _split(arrays: list[np.ndarray], names: list[str], channels: int, opts: MsdOptions
           ) -> Split:
    if opts.spatial_dims == 3:
        stacked = np.stack(arrays)
        images, masks = stacked[:, :channels], stacked[:, channels]
        cases = np.array(names)
    else:
        rng = np.random.default_rng([opts.seed, 0x2D])
        chosen = [_balanced_slices(a, channels, rng) for a in arrays]
        stacked = np.concatenate([a[idx] for a, idx in zip(arrays, chosen)])
        images, masks = stacked[:, :channels], stacked[:, channels]
        cases = np.concatenate([np.full(len(idx), n) for n, idx in zip(names, chosen)])
    masks = np.rint(masks).astype(np.uint8)
    labels = masks.reshape(len(masks), -1).max(axis=1).astype(np.int64)
    return Split(np.ascontiguousarray(images, dtype=np.float32), labels, masks,
                 tags={"case": cases.astype(str)})


def _balanced_slices(slices: np.ndarray, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices: every slice with foreground plus as many (seeded) without."""
    has = slices[:, channels].reshape(len(slices), -1).max(axis=1) > 0.5
    fg, bg = np.flatnonzero(has), np.flatnonzero(~has)
    picked = rng.choice(bg, size=min(len(bg), len(fg)), replace=False) if len(fg) else bg[:0]
    return np.sort(np.concatenate([fg, picked]))
