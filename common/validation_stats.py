"""The validation statistics a site sends with its evaluate reply, and how the server adds
them up. They choose the global model (`server.model_selection`) and its operating point
(`common.operating_point`); the test splits never do.

What a site sends (metric keys; `common.releases` lists them, docs/what-leaves.md says how
each is protected):

* exact (no DP, a policy that lets test metrics leave exactly): ``val_loss`` (mean plain
  cross-entropy on the site's val split), ``val_examples`` (its size) and the counts below;
* noised (DP, a policy with test_metrics = 'noised', in the rounds a metric release is due):
  the counts below only, with Gaussian noise, released together with the test confusion matrix;
* the counts: binary - ``val_hist_<y>_<b>``, the number of val cases of true label y (0, 1)
  whose P(label 1) falls in bin b of `HIST_BINS` equal bins (exact) or `NOISED_HIST_BINS`
  (noised: `common.operating_point` says why); multi-class/ordinal - ``val_cm_<c>_<d>``, the
  val confusion matrix (true class c, argmax prediction d). One patient is in one split and in
  one cell: the counts (with the test confusion matrix) have L2 sensitivity 1. A noised release
  also says how noisy it is: ``val_noise_sd``, the standard deviation of each count's noise (the
  site policy's public sigma), so that the server can tell counts from noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from common.operating_point import HIST_BINS, NOISED_HIST_BINS, coarsened, score_histograms

VAL_LOSS = "val_loss"
VAL_EXAMPLES = "val_examples"
VAL_NOISE_SD = "val_noise_sd"
COUNT_KINDS = ("binary", "multiclass", "ordinal")


def hist_key(label: int, bin_: int) -> str:
    return f"val_hist_{label}_{bin_}"


def cm_key(true: int, pred: int) -> str:
    return f"val_cm_{true}_{pred}"


def validation_counts(kind: str, labels: np.ndarray, probs: np.ndarray, *,
                      noised: bool = False) -> np.ndarray | None:
    """Binary: (2, bins) score histograms (`HIST_BINS`, or `NOISED_HIST_BINS` for a
    ``noised`` release); multi-class/ordinal: the (K, K) confusion matrix of the argmax; None
    for other kinds (multilabel, segmentation)."""
    if kind == "binary":
        return score_histograms(labels, probs, NOISED_HIST_BINS if noised else HIST_BINS)
    if kind in ("multiclass", "ordinal"):
        k = np.asarray(probs).shape[1]
        out = np.zeros((k, k), dtype=np.int64)
        np.add.at(out, (np.asarray(labels, dtype=np.int64), np.asarray(probs).argmax(axis=1)), 1)
        return out
    return None


def counts_metrics(kind: str, counts: np.ndarray) -> dict[str, float]:
    """The counts as reply metrics (`hist_key` / `cm_key`), floats (noised counts are)."""
    c = np.asarray(counts, dtype=np.float64)
    if kind == "binary":
        return {hist_key(y, b): float(c[y, b]) for y in range(2) for b in range(c.shape[1])}
    return {cm_key(i, j): float(c[i, j]) for i in range(c.shape[0]) for j in range(c.shape[1])}


def counts_of(kind: str, num_classes: int, metrics: Mapping[str, float]) -> np.ndarray | None:
    """The counts read back from one reply's metrics; None unless every key is there (binary:
    of `HIST_BINS` or `NOISED_HIST_BINS` bins, whichever the reply has)."""
    if kind not in COUNT_KINDS:
        return None
    bins = NOISED_HIST_BINS if hist_key(0, NOISED_HIST_BINS) not in metrics else HIST_BINS
    shape = (2, bins) if kind == "binary" else (num_classes, num_classes)
    key = hist_key if kind == "binary" else cm_key
    out = np.zeros(shape, dtype=np.float64)
    for i in range(shape[0]):
        for j in range(shape[1]):
            value = metrics.get(key(i, j))
            if value is None:
                return None
            out[i, j] = float(value)
    return out


def is_validation_key(key: str) -> bool:
    return key.startswith("val_")


def without_validation(metrics: Mapping[str, float]) -> dict[str, float]:
    """The test metrics of a reply, its validation statistics left out."""
    return {k: v for k, v in metrics.items() if not is_validation_key(k)}


@dataclass(frozen=True)
class RoundValidation:
    """The validation statistics of one round, added up over the sites that sent them."""

    sites: tuple[str, ...]          # who sent any
    loss: float | None              # sample-weighted mean val loss; None unless all sent it
    examples: float                 # exact val cases behind ``loss`` (0 without it)
    counts: np.ndarray | None       # summed histograms / confusion matrix; None unless all did
    noised: bool                    # the counts carry DP noise (no loss then)
    noise_sd: float | None = 0.0    # sd of each summed count's noise; None: a noised site did
                                    # not say (`VAL_NOISE_SD`)


def combine(kind: str, num_classes: int, per_site: Mapping[str, Mapping[str, float]]
            ) -> RoundValidation | None:
    """Add up the sites' validation statistics (``per_site``: site -> its evaluate metrics);
    None when no site sent any. The loss is weighted by each site's ``val_examples``; noised
    counts are summed as they are (negative cells are clamped only after the sum, by the
    readers)."""
    sent = {s: m for s, m in per_site.items() if any(is_validation_key(k) for k in m)}
    if not sent:
        return None
    losses = [(float(m[VAL_LOSS]), float(m[VAL_EXAMPLES])) for m in sent.values()
              if VAL_LOSS in m and VAL_EXAMPLES in m and float(m[VAL_EXAMPLES]) > 0]
    examples = sum(n for _, n in losses)
    loss = (sum(v * n for v, n in losses) / examples
            if len(losses) == len(sent) and examples > 0 else None)
    counts = [counts_of(kind, num_classes, m) for m in sent.values()]
    total = None if not counts or any(c is None for c in counts) else _summed(counts)
    return RoundValidation(sites=tuple(sorted(sent, key=_site_order)), loss=loss,
                           examples=examples if loss is not None else 0.0, counts=total,
                           noised=loss is None and total is not None,
                           noise_sd=_noise_sd(sent.values()))


def _noise_sd(sent: Iterable[Mapping[str, float]]) -> float | None:
    """The sd of a summed count's noise: the sites' independent noise adds in variance (an exact
    site, one that sent its val loss, adds none); None when a noised site did not say."""
    variance = 0.0
    for m in sent:
        if VAL_LOSS in m:
            continue
        if VAL_NOISE_SD not in m:
            return None
        variance += float(m[VAL_NOISE_SD]) ** 2
    return float(np.sqrt(variance))


def _summed(counts: list[np.ndarray]) -> np.ndarray:
    """The sites' counts added up; histograms of different bins (exact and noised sites in one
    federation) are summed at the coarsest."""
    bins = min(c.shape[1] for c in counts)
    return np.sum([c if c.shape[1] == bins else coarsened(c, bins) for c in counts], axis=0)


def _site_order(site: str) -> tuple[int, str]:
    return (int(site), "") if str(site).isdigit() else (1 << 30, str(site))
