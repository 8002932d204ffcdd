"""Gaussian releases of counts a site may send under DP, and what can be read from them.

A release adds N(0, (sigma * sensitivity)^2) to each released number, the noise drawn from the
source the caller gives: a torch generator (simulation: a seeded one) or a `NoiseSource` (in
deployment `common.training.secure_random.CsprngSource`: the OS CSPRNG, hardened against the
floating-point attack). It is charged to the site's ledger
as the entry ``(sigma, 1.0, 1)``: one step of the Gaussian mechanism without subsampling, which
Opacus' RDP and PRV accountants compose with the DP-SGD history.

Neighbouring datasets differ by one record added or removed:

* a count changes by 1 (L2 sensitivity 1);
* a confusion matrix (rows: true class, columns: predicted class) changes by 1 in one cell
  (L2 sensitivity 1);
* the K one-vs-rest 2x2 matrices of a multilabel task change by 1 in one cell each
  (L2 sensitivity sqrt(K)): the noise std is scaled by sqrt(K), so the same entry applies.

Everything read from a released matrix (`derived_metrics`) is post-processing: no extra cost.
"""

from __future__ import annotations

import math
from typing import Protocol, Union

import numpy as np
import torch

from common.privacy.checks import positive

# The ledger entry of one Gaussian release: (noise multiplier, sample rate, steps).
Entry = tuple[float, float, int]


class NoiseSource(Protocol):
    """A noise source other than a torch generator, e.g.
    `common.training.secure_random.CsprngSource` (OS CSPRNG, floating-point-attack hardened)."""

    def noise_like(self, reference: torch.Tensor, std: float) -> torch.Tensor: ...


Noise = Union[torch.Generator, NoiseSource]

SINGLE_LABEL_KINDS = ("binary", "multiclass", "ordinal")


def gaussian_entry(noise_multiplier: float) -> Entry:
    """``(sigma, 1.0, 1)``: what one release with noise multiplier sigma costs."""
    return positive("noise_multiplier", noise_multiplier), 1.0, 1


def _noise(shape: tuple[int, ...], std: float, noise: Noise) -> np.ndarray:
    """float64 N(0, std^2) noise of ``shape`` from a torch generator or a `NoiseSource`."""
    if isinstance(noise, torch.Generator):
        return torch.normal(0.0, std, size=shape, generator=noise, dtype=torch.float64).numpy()
    return noise.noise_like(torch.zeros(shape, dtype=torch.float64), std).numpy()


def release_count(count: int, noise_multiplier: float, generator: Noise
                  ) -> tuple[float, Entry]:
    """``count + N(0, sigma^2)`` (sensitivity 1), and its ledger entry. Not clamped: callers
    that need a positive weight clamp it (post-processing)."""
    entry = gaussian_entry(noise_multiplier)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count={count!r}: expected an integer >= 0")
    return float(count) + float(_noise((1,), entry[0], generator)[0]), entry


def release_matrix(matrix: np.ndarray, noise_multiplier: float, generator: Noise,
                   *, sensitivity: float = 1.0) -> tuple[np.ndarray, Entry]:
    """``matrix + N(0, (sigma * sensitivity)^2)`` per cell, and its ledger entry. The noise std
    is sigma x the L2 sensitivity of the whole matrix (1 for a confusion matrix)."""
    entry = gaussian_entry(noise_multiplier)
    counts = np.asarray(matrix, dtype=np.float64)
    scale = positive("sensitivity", sensitivity)
    return counts + _noise(counts.shape, entry[0] * scale, generator), entry


def confusion_counts(kind: str, y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The counts a metric release is made of, with `common.metrics`' prediction rules.

    Single-label kinds: the (K, K) confusion matrix, rows the true class, columns the argmax
    prediction. Multilabel: (K, 2, 2), per label ``[[TN, FP], [FN, TP]]`` at threshold 0.5.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs has shape {probs.shape}; expected (N, K)")
    k = probs.shape[1]
    y_true = np.asarray(y_true, dtype=np.int64)
    if kind == "multilabel":
        pred = (probs >= 0.5).astype(np.int64)
        out = np.zeros((k, 2, 2), dtype=np.int64)
        for j in range(k):
            np.add.at(out[j], (y_true[:, j], pred[:, j]), 1)
        return out
    if kind not in SINGLE_LABEL_KINDS:
        raise ValueError(f"kind={kind!r}: a confusion matrix is for {SINGLE_LABEL_KINDS} or "
                         f"multilabel tasks")
    out = np.zeros((k, k), dtype=np.int64)
    np.add.at(out, (y_true, probs.argmax(axis=1)), 1)
    return out


def matrix_sensitivity(kind: str, counts: np.ndarray) -> float:
    """L2 sensitivity of `confusion_counts` under add/remove of one record."""
    return math.sqrt(counts.shape[0]) if kind == "multilabel" else 1.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den <= 0 (common.metrics' convention), clamped to [0, 1]."""
    out = np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)
    return np.clip(out, 0.0, 1.0)


def derived_metrics(kind: str, noisy: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity, specificity and per-class recall
    (``recall_<c>``) of a noised `confusion_counts`, each in [0, 1].

    Negative noisy cells are set to 0 first. Binary: sensitivity/specificity of class 1, as
    `common.metrics`; multiclass/ordinal: macro averages over every class (the noisy matrix
    does not say which classes are absent); multilabel: macro over labels, accuracy the mean
    per-label accuracy.
    """
    m = np.clip(np.asarray(noisy, dtype=np.float64), 0.0, None)
    if kind == "multilabel":
        tn, fp, fn, tp = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
        recall, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        out = {"accuracy": float(_ratio(tp + tn, tp + tn + fp + fn).mean()),
               "balanced_accuracy": float(((recall + spec) / 2).mean()),
               "sensitivity": float(recall.mean()), "specificity": float(spec.mean())}
        return {**out, **{f"recall_{j}": float(v) for j, v in enumerate(recall)}}
    if kind not in SINGLE_LABEL_KINDS:
        raise ValueError(f"kind={kind!r}: no metrics from a confusion matrix for this task")
    diag, total = np.diag(m), m.sum()
    rows, cols = m.sum(axis=1), m.sum(axis=0)
    recall = _ratio(diag, rows)
    spec = _ratio(total - rows - cols + diag, total - rows)      # TN / (TN + FP) per class
    out = {"accuracy": float(_ratio(np.array(diag.sum()), np.array(total))),
           "balanced_accuracy": float(recall.mean())}
    if kind == "binary":
        out.update(sensitivity=float(recall[1]), specificity=float(spec[1]))
    else:
        out.update(sensitivity=float(recall.mean()), specificity=float(spec.mean()))
    return {**out, **{f"recall_{c}": float(v) for c, v in enumerate(recall)}}
