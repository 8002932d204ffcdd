"""Split one dataset's pool across simulated hospitals, reusing flwr-datasets' partitioners.

Every scheme runs on a seeded permutation of the pool wrapped in a tiny Hugging Face dataset
(``label`` column plus the original row number ``idx``); each site's indices are read back from
``idx``. Shuffling first matters: flwr's IID and size partitioners cut contiguous blocks.

Schemes (``PartitionSpec.label`` / ``.quantity``):

* ``iid``: ``IidPartitioner``, equal sizes (+-1), every site's labels distributed like the pool.
* ``dirichlet:ALPHA``: ``DirichletPartitioner`` (per class, Dir(alpha) shares over the sites, no
  self-balancing); re-drawn by flwr (up to 10 more times) until every site reaches a minimum size.
* ``pathological:K``: ``PathologicalPartitioner`` with a class assignment that covers as many
  classes as possible (see ``_StripedPathological``); every site holds exactly K classes. Only when
  ``sites * K < classes`` can not every class be placed: those classes' samples are left out.
* ``quantity[:powerlaw|lognormal]`` (iid labels): ``SizePartitioner`` with skewed, seeded sizes.
* ``lesion:ALPHA`` (segmentation): the Dirichlet scheme over lesion-size bins (none / small /
  medium / large, `common.seg_data.lesion_size_bins`) computed from the masks instead of labels:
  sites differ in how many and how large lesions they see.
* ``by-tag:KEYWORD`` (DICOM): one site per distinct value of a per-sample header tag (e.g.
  Manufacturer), sites ordered by value; cfg.sites must equal the number of values. The real
  hospital/scanner split, so no randomness: see `partition_by_tag`.

All schemes other than that pathological corner case cover the whole pool; sites are disjoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.config import ConfigError, PartitionSpec, RunConfig
from common.datasets.base import DataError, Dataset, Split, TaskInfo

if TYPE_CHECKING:
    from common.acquisition import AcquisitionProfile
    from flwr_datasets.partitioner import Partitioner

MIN_SITE_SAMPLES = 3          # one each for train, val and test
ZIPF_EXPONENT = 1.5           # quantity:powerlaw, share of the site at rank r is r**-1.5
LOGNORMAL_SIGMA = 1.0         # quantity:lognormal, shares are exp(N(0, sigma^2))
_PERMUTE, _PARTITIONER, _SIZES, _SPLIT, _SHIFT = range(5)   # independent random streams


@dataclass(frozen=True)
class SiteData:
    """One simulated hospital: its own train/val/test splits (shifted when the spec says so)."""

    site: int
    train: Split
    val: Split
    test: Split
    profile: AcquisitionProfile | None   # acquisition profile applied to the images; None: no shift
    indices: np.ndarray                  # sorted rows of the pool (dataset.train [+ dataset.val])


@dataclass(frozen=True)
class Federation:
    dataset_name: str
    task: TaskInfo
    sites: tuple[SiteData, ...]
    global_test: Split | None            # the dataset's own test split, never shifted
    spec: PartitionSpec
    seed: int


def spec_text(spec: PartitionSpec) -> str:
    """The partition string that parses back to ``spec``, e.g. ``dirichlet:0.5+shift``."""
    terms = [spec.label]
    if spec.label in ("dirichlet", "lesion"):
        terms[0] += f":{spec.alpha:g}"
    elif spec.label == "pathological":
        terms[0] += f":{spec.classes_per_site}"
    elif spec.label == "by-tag":
        terms[0] += f":{spec.tag}"
    if spec.quantity:
        terms.append(f"quantity:{spec.quantity}")
    if spec.shift:
        terms.append("shift")
    return "+".join(terms)


def _stream(seed: int, *keys: int) -> int:
    """A 32-bit seed for one independent random stream derived from the run seed."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


# --------------------------------------------------------------------------- index partitioning

def partition_indices(labels: np.ndarray, num_sites: int, spec: PartitionSpec,
                      seed: int) -> list[np.ndarray]:
    """One sorted int64 array of sample indices per site; disjoint; reproducible for a seed."""
    labels = _check_labels(labels)
    text, n = spec_text(spec), len(labels)
    if num_sites < 1:
        raise ConfigError(f"sites={num_sites}: need at least 1 site")
    if num_sites * MIN_SITE_SAMPLES > n:
        need = num_sites * MIN_SITE_SAMPLES
        raise ConfigError(f"sites={num_sites} needs at least {need} samples "
                          f"({MIN_SITE_SAMPLES} per site for train/val/test) but the pool has only "
                          f"{n}; use at most {n // MIN_SITE_SAMPLES} sites or more data")
    import datasets  # Hugging Face; imported here because it is slow to import

    perm = np.random.default_rng(_stream(seed, _PERMUTE)).permutation(n)
    partitioner = _make_partitioner(labels, num_sites, spec, seed, text)
    partitioner.dataset = datasets.Dataset.from_dict({"label": labels[perm], "idx": perm})
    try:
        with warnings.catch_warnings():  # flwr warns on each Dirichlet re-draw and unused class
            warnings.simplefilter("ignore")
            parts = [np.sort(np.asarray(list(partitioner.load_partition(i)["idx"]), dtype=np.int64))
                     for i in range(num_sites)]
    except ValueError as exc:
        raise ConfigError(f"partition={text!r} with sites={num_sites} on {n} samples failed: "
                          f"{exc}") from None
    _check_site_sizes(parts, spec, text)
    return parts


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels: expected a 1-D integer class label per sample, got shape "
                        f"{labels.shape} dtype {labels.dtype}")
    return labels.astype(np.int64)


def _make_partitioner(labels: np.ndarray, num_sites: int, spec: PartitionSpec, seed: int,
                      text: str) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, SizePartitioner

    flwr_seed = _stream(seed, _PARTITIONER)
    if spec.label == "by-tag":
        raise ConfigError(f"partition={text!r} splits by per-sample tag values, not labels: use "
                          f"partition_by_tag (build_federation does)")
    if spec.label in ("dirichlet", "lesion"):
        # The minimum must leave room for train/val/test; up to 10 per site when data allows.
        min_size = max(MIN_SITE_SAMPLES, min(10, len(labels) // (4 * num_sites)))
        return DirichletPartitioner(num_sites, "label", alpha=float(spec.alpha),
                                    min_partition_size=min_size, self_balancing=False,
                                    shuffle=True, seed=flwr_seed)
    if spec.label == "pathological":
        num_classes = len(np.unique(labels))
        if spec.classes_per_site > num_classes:
            raise ConfigError(f"partition={text!r}: {spec.classes_per_site} classes per site but "
                              f"the labels hold only {num_classes} classes; use "
                              f"pathological:K with K <= {num_classes}")
        return _striped_pathological()(num_sites, "label", spec.classes_per_site,
                                       shuffle=True, seed=flwr_seed)
    if spec.quantity:
        rng = np.random.default_rng(_stream(seed, _SIZES))
        return SizePartitioner(quantity_sizes(len(labels), num_sites, spec.quantity, rng))
    return IidPartitioner(num_sites)


@functools.cache
def _striped_pathological() -> type:
    """flwr's PathologicalPartitioner with a class assignment placing as many classes as possible.

    flwr's own modes either draw each site's classes at random (classes go unused even when the
    sites could hold them all) or give site p classes p..p+K-1 (only sites+K-1 classes used).
    Here the classes are laid out in a seeded random order and site p takes the K consecutive ones
    starting at p*K, cyclically, so min(classes, sites*K) classes are used. Everything else
    (splitting a class's samples evenly among the sites holding it, the checks, the shuffling) is
    flwr's. Built lazily so importing this module does not import flwr-datasets.
    """
    from flwr_datasets.partitioner import PathologicalPartitioner

    class StripedPathological(PathologicalPartitioner):
        def _determine_partition_id_to_unique_labels(self) -> None:
            self._unique_labels = sorted(self.dataset.unique(self._partition_by))
            order = self._rng.permutation(len(self._unique_labels))
            k, c = self._num_classes_per_partition, len(order)
            for pid in range(self._num_partitions):
                self._partition_id_to_unique_labels[pid] = [
                    self._unique_labels[order[(pid * k + i) % c]] for i in range(k)]

    return StripedPathological


def quantity_sizes(n: int, num_sites: int, law: str, rng: np.random.Generator) -> list[int]:
    """Skewed site sizes summing to ``n``; each site gets >= a tenth of its equal share (and >= 3).

    ``powerlaw``: the sites are ranked in a seeded random order and the site at rank r gets a share
    proportional to r**-1.5 (Zipf-like; largest/smallest = sites**1.5). ``lognormal``: shares are
    seeded draws of exp(N(0, 1)). The remainder after the floor is shared out by largest remainder.
    """
    floor = max(MIN_SITE_SAMPLES, n // (10 * num_sites))
    if floor * num_sites > n:
        raise ConfigError(f"quantity skew: {num_sites} sites need at least {floor * num_sites} "
                          f"samples, the pool has {n}")
    if law == "powerlaw":
        shares = (rng.permutation(num_sites) + 1.0) ** -ZIPF_EXPONENT
    elif law == "lognormal":
        shares = rng.lognormal(0.0, LOGNORMAL_SIGMA, num_sites)
    else:
        raise ConfigError(f"quantity law {law!r} unknown; expected powerlaw or lognormal")
    spare = n - floor * num_sites
    raw = shares / shares.sum() * spare
    sizes = np.floor(raw).astype(np.int64)
    left = spare - int(sizes.sum())
    sizes[np.argsort(sizes - raw, kind="stable")[:left]] += 1   # largest fractional parts first
    return [int(floor + s) for s in sizes]


def _check_site_sizes(parts: list[np.ndarray], spec: PartitionSpec, text: str) -> None:
    hint = {"dirichlet": "a larger alpha, ", "lesion": "a larger alpha, ",
            "pathological": "more classes per site, "}
    for site, idx in enumerate(parts):
        if len(idx) < MIN_SITE_SAMPLES:
            noun = "sample" if len(idx) == 1 else "samples"
            raise ConfigError(f"partition={text!r} leaves site {site} with {len(idx)} {noun} "
                              f"(need >= {MIN_SITE_SAMPLES}); use fewer sites, "
                              f"{hint.get(spec.label, '')}or more data")


# --------------------------------------------------------------------------- federation

def build_federation(dataset: Dataset, cfg: RunConfig) -> Federation:
    """Partition the pool (train [+ val]) into cfg.sites sites, split each, apply site shift."""
    spec = cfg.partition_spec
    pool = dataset.train if dataset.val is None else Split.concat([dataset.train, dataset.val])
    labels = lesion_bins(dataset, pool) if spec.label == "lesion" else dataset.class_labels(pool)
    if spec.label == "by-tag":
        parts = partition_by_tag(_tag_values(dataset, pool, spec.tag), cfg.sites, spec.tag)
    else:
        parts = partition_indices(labels, cfg.sites, spec, cfg.seed)
    sites = tuple(_make_site(s, idx, pool, labels[idx], cfg, spec.shift)
                  for s, idx in enumerate(parts))
    return Federation(dataset.name, dataset.task, sites, dataset.test, spec, cfg.seed)


def lesion_bins(dataset: Dataset, split: Split) -> np.ndarray:
    """Lesion-size bin per sample (`common.seg_data.LESION_BINS`): the lesion partition's labels."""
    from common.seg_data import lesion_size_bins

    if split.masks is None:
        raise DataError(f"partition='lesion:ALPHA' bins samples by lesion size, but dataset "
                        f"{dataset.name!r} has no masks; use a dataset with masks (synthetic, "
                        f"msd) or another partition")
    return lesion_size_bins(split.masks)


def _tag_values(dataset: Dataset, pool: Split, tag: str) -> np.ndarray:
    if pool.tags is None:
        raise DataError(f"partition='by-tag:{tag}': dataset {dataset.name!r} has no per-sample "
                        f"tags; by-tag partitions need DICOM data (dataset=dicom)")
    if tag not in pool.tags:
        raise DataError(f"partition='by-tag:{tag}': dataset {dataset.name!r} has no {tag!r} tag "
                        f"per sample; it has {', '.join(sorted(pool.tags)) or 'none'}")
    return pool.tags[tag]


def partition_by_tag(values: np.ndarray, num_sites: int, tag: str) -> list[np.ndarray]:
    """One sorted index array per distinct tag value (sites ordered by value); every sample is
    placed. ``num_sites`` must equal the number of distinct values (a missing value, '', counts
    as one value)."""
    values = np.asarray(values).astype(str)
    distinct = sorted(set(values.tolist()))
    if len(distinct) != num_sites:
        shown = ", ".join(repr(v) if v else "'' (missing)" for v in distinct[:20])
        more = f" and {len(distinct) - 20} more" if len(distinct) > 20 else ""
        raise ConfigError(f"partition='by-tag:{tag}' makes one site per {tag} value, and the "
                          f"data holds {len(distinct)}: {shown}{more}; but sites={num_sites}. "
                          f"Set sites={len(distinct)}")
    parts = [np.flatnonzero(values == v).astype(np.int64) for v in distinct]
    _check_site_sizes(parts, PartitionSpec(label="by-tag", tag=tag), f"by-tag:{tag}")
    return parts


def _make_site(site: int, indices: np.ndarray, pool: Split, labels: np.ndarray, cfg: RunConfig,
               shift: bool) -> SiteData:
    data = pool.subset(indices)
    profile = None
    if shift:
        from common.acquisition import apply_profile, site_profile

        profile = site_profile(site, cfg.seed)
        images = apply_profile(data.images, profile, seed=_stream(cfg.seed, site, _SHIFT))
        data = dataclasses.replace(data, images=images)   # keeps masks and tags
    rng = np.random.default_rng(_stream(cfg.seed, site, _SPLIT))
    train, val, test = split_site(labels, cfg.val_fraction, cfg.test_fraction, rng, site)
    return SiteData(site, data.subset(train), data.subset(val), data.subset(test), profile, indices)


def split_site(labels: np.ndarray, val_fraction: float, test_fraction: float,
               rng: np.random.Generator,
               site: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (sorted) of a site's train, val and test samples.

    test gets round(n * test_fraction) but at least 1, val round(n * val_fraction) but never so
    many that train is left empty. Stratified when every class of the site has at least one
    sample per held-out fraction (each class is spread evenly over a random order, so each split
    gets its share +-1); otherwise plain random.
    """
    n = len(labels)
    n_test = max(1, math.floor(n * test_fraction + 0.5))
    n_val = min(math.floor(n * val_fraction + 0.5), max(0, n - n_test - 1))
    if n - n_test - n_val < 1:
        raise ConfigError(f"site {site} has only {n} sample(s): none left for training after "
                          f"test_fraction={test_fraction} (use fewer sites or more data)")
    fractions = [f for f in (val_fraction, test_fraction) if f > 0]
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() * min(fractions) >= 1:
        keys = np.empty(n)
        for cls in np.unique(labels):
            where = np.flatnonzero(labels == cls)
            keys[where] = (rng.permutation(len(where)) + rng.random(len(where))) / len(where)
    else:
        keys = rng.random(n)
    order = np.argsort(keys, kind="stable")
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return np.sort(train), np.sort(val), np.sort(test)


@functools.lru_cache(maxsize=2)
def load_federation(cfg: RunConfig) -> Federation:
    """Load cfg's dataset and build its federation once per process (cfg is frozen, so hashable)."""
    from common.datasets import load_dataset

    return build_federation(load_dataset(cfg), cfg)


def site_data(cfg: RunConfig, site: int) -> SiteData:
    """The data of one site, what each simulated ClientApp trains and evaluates on."""
    if not 0 <= site < cfg.sites:
        raise ConfigError(f"site={site}: out of range; this run has sites={cfg.sites} "
                          f"(ids 0..{cfg.sites - 1})")
    return load_federation(cfg).sites[site]


# --------------------------------------------------------------------------- heterogeneity report

def _class_ids(task: TaskInfo, split: Split) -> np.ndarray:
    # Dataset.class_labels only needs the task; one rule for class ids across the project.
    return Dataset("", task, split).class_labels(split)


def label_histograms(fed: Federation) -> np.ndarray:
    """(sites, classes) int64 label counts over each site's train+val+test (lesion partition:
    lesion-size bin counts)."""
    splits = [Split.concat([s.train, s.val, s.test]) for s in fed.sites]
    if fed.spec.label == "lesion":
        from common.seg_data import LESION_BINS, lesion_size_bins

        # Bins from the whole federation's tertiles, so every site's bins mean the same sizes.
        bins = np.split(lesion_size_bins(np.concatenate([s.masks for s in splits])),
                        np.cumsum([len(s) for s in splits])[:-1])
        return np.stack([np.bincount(b, minlength=len(LESION_BINS)) for b in bins]).astype(np.int64)
    ids = [_class_ids(fed.task, split) for split in splits]
    width = max([fed.task.num_classes] + [int(i.max()) + 1 for i in ids if len(i)])
    return np.stack([np.bincount(i, minlength=width) for i in ids]).astype(np.int64)


def heterogeneity(hist: np.ndarray) -> float:
    """Label skew in [0, 1]: size-weighted mean total-variation distance to the pooled distribution.

    sum_s (n_s / N) * 0.5 * sum_c |p_s(c) - p(c)|, with p_s a site's label distribution and p the
    pooled one. 0 when every site looks like the pool (IID); S sites holding disjoint, equally
    common classes give 1 - 1/S, so the value approaches 1 as sites become disjoint.
    """
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 2 or (hist < 0).any():
        raise ValueError(f"hist: expected non-negative (sites, classes) counts, got shape "
                         f"{hist.shape}")
    sizes, total = hist.sum(axis=1), hist.sum()
    if total == 0:
        return 0.0
    pooled = hist.sum(axis=0) / total
    keep = sizes > 0
    dist = hist[keep] / sizes[keep, None]
    tv = 0.5 * np.abs(dist - pooled).sum(axis=1)
    return float(np.clip((sizes[keep] / total * tv).sum(), 0.0, 1.0))


def write_partition_report(fed: Federation, out_dir: Path) -> dict:
    """Write partition.md, partition.png and partition.json into out_dir; return the JSON dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hist = label_histograms(fed)
    report = _report_dict(fed, hist)
    (out_dir / "partition.json").write_text(json.dumps(report) + "\n")   # compact: long index lists
    (out_dir / "partition.md").write_text(_markdown(fed, hist, report))
    _plot(fed, hist, report, out_dir / "partition.png")
    return report


def _histogram_names(fed: Federation, width: int) -> list[str]:
    if fed.spec.label == "lesion":
        from common.seg_data import LESION_BINS

        return [f"lesion {b}" for b in LESION_BINS]
    return _class_names(fed.task, width)


def _class_names(task: TaskInfo, width: int) -> list[str]:
    names = list(task.class_names)
    return names if len(names) == width else [f"class {c}" for c in range(width)]


def _profile_name(profile: Any) -> str:
    return "none" if profile is None else str(getattr(profile, "name", type(profile).__name__))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _report_dict(fed: Federation, hist: np.ndarray) -> dict:
    sites = [{"site": s.site,
              "profile": None if s.profile is None else dataclasses.asdict(s.profile),
              "train": len(s.train), "val": len(s.val), "test": len(s.test),
              "class_counts": hist[i].tolist(), "indices": s.indices.tolist()}
             for i, s in enumerate(fed.sites)]
    return _jsonable({
        "dataset": fed.dataset_name, "partition": spec_text(fed.spec),
        "spec": dataclasses.asdict(fed.spec), "seed": fed.seed,
        "heterogeneity": heterogeneity(hist), "classes": _histogram_names(fed, hist.shape[1]),
        "global_test": None if fed.global_test is None else len(fed.global_test), "sites": sites,
    })


def _markdown(fed: Federation, hist: np.ndarray, report: dict) -> str:
    classes = [c.replace("|", "/") for c in report["classes"]]
    lines = [f"# Partition of {fed.dataset_name}: `{report['partition']}`, seed {fed.seed}", "",
             f"Heterogeneity: **{report['heterogeneity']:.3f}** (size-weighted mean total-"
             f"variation distance of each site's label distribution from the pooled one; "
             f"0 = IID, towards 1 = disjoint). Partition `{report['partition']}`, "
             f"seed {fed.seed}.", "",
             "| site | profile | train | val | test | " + " | ".join(classes) + " |",
             "|---:|---|---:|---:|---:|" + "---:|" * len(classes)]
    for i, site in enumerate(fed.sites):
        cells = [site.site, _profile_name(site.profile), len(site.train), len(site.val),
                 len(site.test), *hist[i].tolist()]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    glob = "none" if fed.global_test is None else f"{len(fed.global_test)} samples (unshifted)"
    lines += ["", f"Global test split: {glob}.", ""]
    return "\n".join(lines)


def _plot(fed: Federation, hist: np.ndarray, report: dict, path: Path) -> None:
    # Object-oriented Agg canvas: no pyplot global state, no backend switching for the process.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_sites, n_classes = hist.shape
    fig = Figure(figsize=(max(6.0, 0.5 * n_sites + 3.0), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["tab20" if n_classes > 10 else "tab10"]
    x, bottom = np.arange(n_sites), np.zeros(n_sites)
    for c, name in enumerate(report["classes"]):
        ax.bar(x, hist[:, c], bottom=bottom, label=name, color=cmap(c % cmap.N))
        bottom += hist[:, c]
    step = max(1, n_sites // 30)
    ticks = [str(s.site) if s.profile is None else f"{s.site}\n{_profile_name(s.profile)}"
             for s in fed.sites]
    named = any(s.profile is not None for s in fed.sites)
    ax.set_xticks(x[::step], ticks[::step], fontsize="small" if n_sites <= 8 else "x-small",
                  rotation=(30 if named else 0) if n_sites <= 8 else 90,
                  ha="right" if named and n_sites <= 8 else "center")
    ax.set_xlabel("site")
    ax.set_ylabel("samples (train + val + test)")
    ax.set_title(f"{fed.dataset_name}: {report['partition']} (seed {fed.seed}), "
                 f"heterogeneity {report['heterogeneity']:.3f}")
    ax.legend(title="class", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=100)
