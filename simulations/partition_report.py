"""The partition report of a simulated federation: label histograms, heterogeneity, partition.md,
partition.json and partition.png (the partitioning itself lives in `common.partitions`)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from common.datasets.base import Dataset, Split, TaskInfo
from common.partitions.base import spec_text
from common.partitions.federation import Federation

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
