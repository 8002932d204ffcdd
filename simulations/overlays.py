"""Overlay PNGs of a segmentation model's predictions: image, ground truth, prediction.

For each site a few test cases are drawn side by side (3D volumes: the middle axial slice), the
mask in colour over the grey image, titled with the case's foreground Dice on the whole image or
volume. Cases with a lesion come first (an empty mask shows little), in test-split order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from common.datasets.base import Split, TaskInfo
from common.segmentation import dice_from_counts
from common.training.seg_inference import predict_masks

OVERLAY_DIR = "overlays"
CASES_PER_SITE = 3
MASK_ALPHA = 0.45


def pick_cases(split: Split, count: int = CASES_PER_SITE) -> np.ndarray:
    """Up to ``count`` test positions: those with a non-empty mask first, then the others."""
    if count < 1:
        raise ValueError(f"count={count}; expected >= 1")
    flat = np.asarray(split.masks).reshape(len(split), -1)
    lesion = flat.any(axis=1)
    order = np.concatenate([np.flatnonzero(lesion), np.flatnonzero(~lesion)])
    return order[:count]


def foreground_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of "any foreground class" between two label maps (1 when both are empty)."""
    p, t = np.asarray(pred) > 0, np.asarray(target) > 0
    return dice_from_counts(float((p & t).sum()), float(p.sum()), float(t.sum()))


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(H, W[, 3]) array for imshow and its colour map, from one (C, H, W) image."""
    if image.shape[0] == 3:
        return np.clip(np.moveaxis(image, 0, -1), 0.0, 1.0), None
    return image[0], "gray"


def _middle(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """The middle axial slice of a 3D array whose last 3 axes are (D, H, W); 2D unchanged."""
    if spatial_dims == 3:
        return array[..., array.shape[-3] // 2, :, :]
    return array


def draw_case(image: np.ndarray, target: np.ndarray, pred: np.ndarray, num_classes: int,
              title: str, path: Path) -> None:
    """Write one PNG: image | ground truth over image | prediction over image."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    dims = target.ndim
    shown, cmap = _display(_middle(image, dims))
    colours = colormaps["tab10"](np.arange(1, num_classes) % 10)
    mask_cmap = ListedColormap(colours)
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, mask, label in zip(axes, (None, target, pred), ("image", "ground truth",
                                                              "prediction")):
        ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0)
        if mask is not None:
            m = _middle(mask, dims).astype(np.int64)
            ax.imshow(np.ma.masked_where(m == 0, m - 1), cmap=mask_cmap, alpha=MASK_ALPHA,
                      vmin=0, vmax=max(1, num_classes - 2), interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def write_overlays(model: nn.Module, task: TaskInfo, sites: dict[str, Split], run_dir: Path,
                   count: int = CASES_PER_SITE) -> dict[str, list[str]]:
    """Overlay PNGs of ``count`` test cases per site under ``run_dir/overlays``.

    ``sites`` maps a site name to its test split (with masks). Returns, per site, the PNG paths
    relative to ``run_dir`` (for links in report.md).
    """
    out: dict[str, list[str]] = {}
    for site, split in sites.items():
        if split.masks is None:
            raise ValueError(f"write_overlays: site {site}'s test split has no masks")
        index = pick_cases(split, count)
        images = split.images[index]
        pred = predict_masks(model, images, task)
        paths = []
        for case, i in enumerate(index.tolist()):
            target = np.asarray(split.masks[i])
            dice = foreground_dice(pred[case], target)
            where = "" if target.ndim == 2 else f", middle slice {target.shape[0] // 2}"
            rel = f"{OVERLAY_DIR}/site{site}-case{i}.png"
            draw_case(images[case], target, pred[case], task.num_classes,
                      f"site {site}, test case {i}{where}: Dice {dice:.3f}", run_dir / rel)
            paths.append(rel)
        out[site] = paths
    return out
