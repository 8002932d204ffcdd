"""Reader (and cached downloader) for official MedMNIST v2/v3 ``.npz`` files, 2D and 3D, any size.

An official file holds ``{train,val,test}_images`` (uint8: (N,H,W) grey, (N,H,W,3) RGB or (N,D,H,W)
3D) and ``{train,val,test}_labels`` (integers, (N,1), or (N,K) 0/1 for multi-label). They become a
`Dataset` with images float32 / 255 channel-first and the official train / val / test splits.

The subset table below (task, channels, label names, md5 per size) is transcribed from MedMNIST's
``medmnist/info.py`` (v3.0.2, Zenodo record 10519652); facts only, the code is this project's own.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.datasets.base import Dataset, DataError, Split, TaskInfo
from common.datasets.npz_archive import check_npz
from common.datasets.reading import reading

BASE_URL = "https://zenodo.org/records/10519652/files"
SPLITS = ("train", "val", "test")
KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("images", "labels"))
SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)
DOWNLOAD_TIMEOUT_S = 60.0
# Classes of a file with no subset name come from its labels, 0..max; a larger max is refused
# before a class table that size is built (a label of 10**9 would build 10**9 names).
MAX_INFERRED_CLASSES = 1000

# MedMNIST task strings -> this project's TaskInfo kinds
_TASKS = {"binary-class": "binary", "multi-class": "multiclass",
          "ordinal-regression": "ordinal", "multi-label, binary-class": "multilabel"}


@dataclass(frozen=True)
class SubsetInfo:
    """One official MedMNIST subset."""

    task: str                         # MedMNIST task string (key of _TASKS)
    channels: int                     # 1 grey, 3 RGB
    spatial_dims: int                 # 2 or 3
    labels: tuple[str, ...]           # class (or finding, for multi-label) names, by index
    md5: tuple[str, ...]              # per size, aligned with SIZES_2D / SIZES_3D

    @property
    def kind(self) -> str:
        return _TASKS[self.task]

    @property
    def sizes(self) -> tuple[int, ...]:
        return (SIZES_2D if self.spatial_dims == 2 else SIZES_3D)[:len(self.md5)]

    def md5_for(self, size: int) -> str:
        return self.md5[self.sizes.index(size)]


_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen")
_BC, _MC, _OR, _ML = "binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class"

SUBSETS: dict[str, SubsetInfo] = {
    "pathmnist": SubsetInfo(_MC, 3, 2, (
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
        "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
        ("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
         "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec")),
    "chestmnist": SubsetInfo(_ML, 1, 2, (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
        "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
        ("02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
         "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa")),
    "dermamnist": SubsetInfo(_MC, 3, 2, (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
        "vascular lesions"),
        ("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
         "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d")),
    "octmnist": SubsetInfo(_MC, 1, 2, (
        "choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        ("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
         "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3")),
    "pneumoniamnist": SubsetInfo(_BC, 1, 2, ("normal", "pneumonia"),
        ("28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
         "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1")),
    "retinamnist": SubsetInfo(_OR, 3, 2, ("0", "1", "2", "3", "4"),
        ("bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
         "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348")),
    "breastmnist": SubsetInfo(_BC, 1, 2, ("malignant", "normal, benign"),
        ("750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
         "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b")),
    "bloodmnist": SubsetInfo(_MC, 3, 2, (
        "basophil", "eosinophil", "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte",
        "monocyte", "neutrophil", "platelet"),
        ("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
         "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601")),
    "tissuemnist": SubsetInfo(_MC, 1, 2, (
        "Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
        "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
        "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"),
        ("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
         "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c")),
    "organamnist": SubsetInfo(_MC, 1, 2, _ORGANS,
        ("68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
         "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170")),
    "organcmnist": SubsetInfo(_MC, 1, 2, _ORGANS,
        ("b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
         "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1")),
    "organsmnist": SubsetInfo(_MC, 1, 2, _ORGANS,
        ("9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
         "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1")),
    "organmnist3d": SubsetInfo(_MC, 1, 3, (
        "liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder", "heart",
        "lung-right", "lung-left", "spleen", "pancreas"),
        ("a0c5a1ff56af4f155c46d46fbb45a2fe", "58a2205adf14a9d0a189cb06dc78bf10")),
    "nodulemnist3d": SubsetInfo(_BC, 1, 3, ("benign", "malignant"),
        ("8755a7e9e05a4d9ce80a24c3e7a256f3", "c47c5b7d457bf6332200d2ea6d64ecd8")),
    "adrenalmnist3d": SubsetInfo(_BC, 1, 3, ("normal", "hyperplasia"),
        ("bbd3c5a5576322bc4cdfea780653b1ce", "17721accfe9fb005146a47d33bc54b2f")),
    "fracturemnist3d": SubsetInfo(_MC, 1, 3, (
        "buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"),
        ("6aa7b0143a6b42da40027a9dda61302f", "f01d7e6316aedf4210da0da5b7437b42")),
    "vesselmnist3d": SubsetInfo(_BC, 1, 3, ("vessel", "aneurysm"),
        ("b41fd4f7e7e2feedddb201585ecafa1b", "6bb274a8846e1097066dcd64e2c4520f")),
    "synapsemnist3d": SubsetInfo(_BC, 1, 3, ("inhibitory synapse", "excitatory synapse"),
        ("1235b78a3cd6280881dd7850a78eadb6", "43bd14ebf3af9d3dd072446fedc14d5e")),
}


def default_cache_dir() -> Path:
    """``$FEDCLINIC_CACHE/medmnist`` if that variable is set, else ``~/.cache/fedclinic/medmnist``."""
    root = os.environ.get("FEDCLINIC_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "fedclinic") / "medmnist"


def parse_subset(name: str) -> tuple[str, int] | None:
    """``'pneumoniamnist'`` -> ('pneumoniamnist', 28); ``'pathmnist_64'`` -> ('pathmnist', 64).

    Returns None when ``name`` is not a known subset; raises DataError for a known subset at a
    size MedMNIST does not publish.
    """
    stem = name.strip().lower()
    stem = stem[:-4] if stem.endswith(".npz") else stem
    base, _, suffix = stem.rpartition("_")
    if not (base and suffix.isdigit()):
        base, suffix = stem, "28"
    if base not in SUBSETS:
        return None
    info, size = SUBSETS[base], int(suffix)
    if size not in info.sizes:
        raise DataError(f"MedMNIST subset {base!r}: size {size} not published; available sizes: "
                        f"{', '.join(map(str, info.sizes))}")
    return base, size


def file_name(subset: str, size: int) -> str:
    """Official file name: ``pathmnist.npz`` at 28 px, ``pathmnist_64.npz`` otherwise."""
    return f"{subset}.npz" if size == 28 else f"{subset}_{size}.npz"


def load(path_or_name: str, *, cache_dir: Path | None = None,
         base_url: str | None = None) -> Dataset:
    """Read an official MedMNIST ``.npz`` file, or download a subset by name into the cache.

    ``path_or_name``: an existing file path, or a subset name such as ``pneumoniamnist`` or
    ``pathmnist_64``. Downloads go to ``cache_dir`` (default `default_cache_dir()`) from
    ``base_url`` (default env ``FEDCLINIC_MEDMNIST_URL``, else the official Zenodo record) and are
    verified against the official md5; a file already in the cache is not downloaded again.
    """
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return read_npz(path)
    if path.suffix == ".npz" or "/" in path_or_name or os.sep in path_or_name:
        raise DataError(f"{path}: file not found; expected an official MedMNIST .npz file "
                        f"(keys {', '.join(KEYS)}) or a subset name ({_known()})")
    subset = parse_subset(path_or_name)
    if subset is None:
        raise DataError(f"medmnist data_path={path_or_name!r}: neither an existing file nor a "
                        f"known subset name; known subsets ({_known()}), optionally with a size "
                        f"suffix such as _64")
    name, size = subset
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return read_npz(fetch(name, size, target, base_url=base_url))


def fetch(subset: str, size: int, cache_dir: Path, *, base_url: str | None = None,
          timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Path of the cached official file, downloading and md5-checking it first if absent."""
    fname = file_name(subset, size)
    dest = Path(cache_dir) / fname
    if dest.is_file():
        return dest
    base = (base_url or os.environ.get("FEDCLINIC_MEDMNIST_URL") or BASE_URL).rstrip("/")
    url = f"{base}/{fname}?download=1"
    expected = SUBSETS[subset].md5_for(size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(fname + ".part")
    try:
        got = _download(url, part, timeout)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if got != expected:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: md5 mismatch for {fname}: got {got}, expected {expected} "
                        f"(official MedMNIST checksum); the partial file was deleted")
    part.replace(dest)
    return dest


def _download(url: str, part: Path, timeout: float) -> str:
    """Stream ``url`` into ``part`` with a progress line on stderr; return the md5 hex digest."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                _progress(part.name[:-5], done, total)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{url}: download failed ({exc}); check the network, or pass a local "
                        f".npz file path instead of a subset name") from None
    finally:
        sys.stderr.write("\n")
    return digest.hexdigest()


def _progress(name: str, done: int, total: int) -> None:
    mb = done / 1e6
    if total:
        sys.stderr.write(f"\rdownloading {name}: {mb:.1f}/{total / 1e6:.1f} MB "
                         f"({100 * done // total}%)")
    else:
        sys.stderr.write(f"\rdownloading {name}: {mb:.1f} MB")
    sys.stderr.flush()


def _known() -> str:
    return ", ".join(SUBSETS)


# ------------------------------------------------------------------------------------ reading


def read_npz(path: Path) -> Dataset:
    """Validate and convert one MedMNIST-layout ``.npz`` file (see module docstring)."""
    path = Path(path)
    with reading(path):
        return _read_npz(path)


def _read_npz(path: Path) -> Dataset:
    arrays = _read_arrays(path)
    try:
        subset = parse_subset(path.name)
    except DataError:
        subset = None
    info = SUBSETS[subset[0]] if subset else None
    layout = _layout(path, arrays["train_images"], info)
    splits_raw = {}
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_pair(path, split, images, labels, layout, arrays["train_images"].shape[1:])
        splits_raw[split] = (images, _labels_2d(path, split, labels))
    kind, num_classes, names = _task(path, info, [lab for _, lab in splits_raw.values()])
    splits = {split: Split(_to_float(images, layout), _convert_labels(path, split, labels, kind,
                                                                     num_classes))
              for split, (images, labels) in splits_raw.items()}
    spatial_dims, channels = layout
    size = int(arrays["train_images"].shape[1])
    task = TaskInfo(kind=kind, num_classes=num_classes, spatial_dims=spatial_dims,
                    channels=channels, size=size, class_names=names)
    name = subset[0] if subset else path.stem
    return Dataset(name=name, task=task, train=splits["train"], test=splits["test"],
                   val=splits["val"])


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected an official MedMNIST .npz file")
    check_npz(path, f"keys {', '.join(KEYS)}")         # headers vs sizes, before any allocation
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, not an .npz archive; expected "
                            f"keys {', '.join(KEYS)}")
        with loaded as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing key(s) {', '.join(missing)}; found "
                                f"{', '.join(npz.files) or 'none'}; expected {', '.join(KEYS)} "
                                f"(official MedMNIST layout)")
            arrays = {k: npz[k] for k in KEYS}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc}); "
                        f"expected a zip of .npy arrays with keys {', '.join(KEYS)}") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise DataError(f"{path}: member {key} is not an .npy array (no {key}.npy in the "
                            f"archive); expected a zip of .npy arrays with keys {', '.join(KEYS)}")
    return arrays


def _layout(path: Path, images: np.ndarray, info: SubsetInfo | None) -> tuple[int, int]:
    """(spatial_dims, channels) from the train images' shape (and the subset table, if known)."""
    shape = images.shape
    if images.ndim == 3:
        layout = (2, 1)
    elif images.ndim == 4 and shape[-1] == 3 and shape[1] == shape[2] != 3:
        layout = (2, 3)
    elif images.ndim == 4 and shape[1] == shape[2] == shape[3]:
        layout = (3, 1)
    else:
        raise DataError(f"{path}: train_images shape {shape}: expected (N,H,W) grey, (N,H,W,3) "
                        f"RGB or (N,D,H,W) 3D with equal sides")
    if info is not None and layout != (info.spatial_dims, info.channels):
        raise DataError(f"{path}: train_images shape {shape} does not match the subset: expected "
                        f"{info.spatial_dims}D images with {info.channels} channel(s)")
    if shape[1] != shape[2]:
        raise DataError(f"{path}: train_images shape {shape}: expected square images (H == W)")
    return layout


def _check_pair(path: Path, split: str, images: np.ndarray, labels: np.ndarray,
                layout: tuple[int, int], sample_shape: tuple[int, ...]) -> None:
    key = f"{split}_images"
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {key} dtype {images.dtype}: expected uint8 (official MedMNIST)")
    if images.shape[1:] != sample_shape:
        raise DataError(f"{path}: {key} shape {images.shape}: expected (N, "
                        f"{', '.join(map(str, sample_shape))}) like train_images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {split}_labels dtype {labels.dtype}: expected integers")
    if labels.ndim not in (1, 2):
        raise DataError(f"{path}: {split}_labels shape {labels.shape}: expected (N,1) or (N,K)")
    if len(labels) != len(images):
        raise DataError(f"{path}: {split}_labels has {len(labels)} rows but {key} has "
                        f"{len(images)} images; expected equal lengths")


def _labels_2d(path: Path, split: str, labels: np.ndarray) -> np.ndarray:
    labels = labels.reshape(len(labels), -1) if labels.ndim == 1 else labels
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: {split}_labels has negative value {labels.min()}; expected "
                        f"class indices >= 0")
    return labels


def _task(path: Path, info: SubsetInfo | None,
          labels: list[np.ndarray]) -> tuple[str, int, tuple[str, ...]]:
    """(kind, num_classes, class names): from the table if known, else inferred from labels."""
    widths = {lab.shape[1] for lab in labels}
    if len(widths) != 1:
        raise DataError(f"{path}: label widths differ across splits {sorted(widths)}; expected "
                        f"the same (N,1) or (N,K) layout in train_labels, val_labels, test_labels")
    width = widths.pop()
    if info is not None:
        kind = info.kind
        count = len(info.labels)
        num_classes = 2 if kind == "binary" else count
        expected_width = count if kind == "multilabel" else 1
        if width != expected_width:
            raise DataError(f"{path}: labels have {width} column(s); subset task {info.task!r} "
                            f"expects {expected_width}")
        return kind, num_classes, info.labels
    if width > 1:
        return "multilabel", width, tuple(str(i) for i in range(width))
    values = np.unique(np.concatenate([lab.ravel() for lab in labels]))
    top = int(values.max()) if values.size else 0
    if top >= MAX_INFERRED_CLASSES:
        split = next(s for s, lab in zip(SPLITS, labels) if lab.size and int(lab.max()) == top)
        raise DataError(f"{path}: {split}_labels holds class {top}, but a file not named after a "
                        f"MedMNIST subset takes its classes from its labels (0..max), and more "
                        f"than {MAX_INFERRED_CLASSES} classes is not a label table; fix the "
                        f"labels, or name the file after its subset (e.g. pathmnist.npz) to use "
                        f"the subset's declared classes")
    if top <= 1:
        return "binary", 2, ("0", "1")
    return "multiclass", top + 1, tuple(str(i) for i in range(top + 1))


def _convert_labels(path: Path, split: str, labels: np.ndarray, kind: str,
                    num_classes: int) -> np.ndarray:
    if kind == "multilabel":
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: {split}_labels has values other than 0/1; expected "
                            f"multi-label indicators")
        return labels.astype(np.float32)
    flat = labels[:, 0].astype(np.int64)
    if flat.size and flat.max() >= num_classes:
        raise DataError(f"{path}: {split}_labels has class {flat.max()}; expected 0.."
                        f"{num_classes - 1} for a {kind} task")
    return flat


def _to_float(images: np.ndarray, layout: tuple[int, int]) -> np.ndarray:
    """uint8 -> float32 in [0, 1], channel-first."""
    spatial_dims, channels = layout
    if channels == 3:
        images = images.transpose(0, 3, 1, 2)
    else:
        images = images[:, None]
    out = np.empty(images.shape, dtype=np.float32)
    np.divide(images, np.float32(255), out=out)
    return out
