"""Classification metrics for every task kind, computed with scikit-learn.

All functions return plain python floats so results serialise to JSON and Flower records as-is.

Conventions (the same at every site, so site scores are comparable):

* binary: the predicted class is the argmax of the two probabilities (ties go to class 0);
  class 1 is the positive class for sensitivity, specificity, precision and F1.
* multiclass / ordinal: predicted class = argmax; sensitivity, specificity, precision and F1 are
  macro averages (unweighted mean over classes) over the classes that occur in ``y_true`` or in
  the predictions (scikit-learn's default label set), so a class a site simply does not have
  does not drag its scores down.
* multilabel: each label is thresholded at 0.5 and scored on its own; the reported value is the
  macro average over all K labels.
* Ratios whose denominator is zero (e.g. precision of a class never predicted) count as 0.
* AUC is the macro average over the classes (multiclass one-vs-rest) or labels for which it is
  defined, i.e. whose column of ``y_true`` holds both positives and negatives; it is
  ``float('nan')`` when it is defined for none of them (e.g. a test split holding one class only).
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

METRIC_KINDS = ("binary", "multiclass", "ordinal", "multilabel")
METRIC_NAMES = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1",
                "auc")


def classification_metrics(kind: str, y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, sensitivity, specificity, precision, F1 and AUC.

    ``kind`` is one of binary | multiclass | ordinal | multilabel. ``probs`` is (N, 2) or (N, K)
    softmax probabilities for single-label kinds with ``y_true`` int class indices (N,), or (N, K)
    sigmoid probabilities for multilabel with ``y_true`` 0/1 (N, K).

    Multilabel: predictions are ``probs >= 0.5``; ``accuracy`` is the mean per-label accuracy
    (the share of correct (sample, label) cells, not exact-match/subset accuracy) and every other
    value is the macro average over labels, ``balanced_accuracy`` being each label's mean recall
    over the classes (0/1) it contains.

    ``auc`` is ``float('nan')`` when undefined: only one class present in ``y_true`` (or, for
    multiclass/multilabel, no class/label with both positives and negatives). Classes or labels
    with one value in ``y_true`` are left out of the AUC macro average.
    """
    y_true, probs = _check_inputs(kind, y_true, probs)
    if kind == "multilabel":
        return _multilabel(y_true, probs)
    y_pred = probs.argmax(axis=1)
    if kind == "binary":
        return _binary(y_true, y_pred, probs)
    return _multiclass(y_true, y_pred, probs)


def _check_inputs(kind: str, y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if kind not in METRIC_KINDS:
        raise ValueError(f"metrics: kind={kind!r} unknown; expected one of {', '.join(METRIC_KINDS)}")
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"metrics: probs has shape {probs.shape}; expected a non-empty (N, K) array")
    if y_true.shape[0] != probs.shape[0]:
        raise ValueError(f"metrics: y_true has {y_true.shape[0]} rows but probs has {probs.shape[0]}")
    if not np.isfinite(probs).all():
        raise ValueError("metrics: probs contains NaN or infinite values")
    k = probs.shape[1]
    if kind == "multilabel":
        if y_true.shape != probs.shape or not np.isin(y_true, (0, 1)).all():
            raise ValueError(f"metrics: multilabel y_true must be 0/1 with probs' shape {probs.shape}; "
                             f"got shape {y_true.shape}")
        return y_true.astype(np.int64), probs
    if kind == "binary" and k != 2:
        raise ValueError(f"metrics: binary probs must have 2 columns (P(class 0), P(class 1)); got {k}")
    if y_true.ndim != 1 or not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"metrics: {kind} y_true must be integer class indices of shape (N,); "
                         f"got dtype {y_true.dtype}, shape {y_true.shape}")
    outside = y_true[(y_true < 0) | (y_true >= k)]
    if outside.size:
        raise ValueError(f"metrics: y_true holds class {int(outside[0])} outside 0..{k - 1} "
                         f"(probs has {k} columns)")
    return y_true.astype(np.int64), probs


def _specificity(confusion: np.ndarray) -> np.ndarray:
    """Per-class TN / (TN + FP) from scikit-learn's (C, 2, 2) one-vs-rest confusion matrices."""
    tn, fp = confusion[:, 0, 0].astype(float), confusion[:, 0, 1].astype(float)
    denom = tn + fp
    return np.divide(tn, denom, out=np.zeros_like(tn), where=denom > 0)


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def prediction_metrics(kind: str, y_true: np.ndarray, y_pred: np.ndarray, *,
                       positive: int = 1) -> dict[str, float]:
    """The metrics of hard predictions (no AUC): accuracy, balanced accuracy, sensitivity,
    specificity, precision and F1, with the module's conventions. Binary: of class
    ``positive`` (the finding; `common.operating_point.positive_class`), which is label 1 in
    `classification_metrics`. Multiclass/ordinal: macro averages (``positive`` unused)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if kind == "binary":
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=[positive], average="macro", zero_division=0)
        confusion = multilabel_confusion_matrix(y_true, y_pred, labels=[positive])
        specificity = float(_specificity(confusion)[0])
    elif kind in ("multiclass", "ordinal"):
        labels = np.union1d(y_true, y_pred)
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average="macro", zero_division=0)
        confusion = multilabel_confusion_matrix(y_true, y_pred, labels=labels)
        specificity = float(_specificity(confusion).mean())
    else:
        raise ValueError(f"prediction_metrics: kind={kind!r}; expected binary, multiclass or "
                         f"ordinal")
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "sensitivity": float(recall),
        "specificity": specificity,
        "precision": float(precision),
        "f1": float(f1),
    }


def _binary(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {**prediction_metrics("binary", y_true, y_pred, positive=1),
            "auc": _auc(y_true == 1, probs[:, 1])}


def _multiclass(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    onehot = y_true[:, None] == np.arange(probs.shape[1])[None, :]
    return {**prediction_metrics("multiclass", y_true, y_pred),
            "auc": _macro_auc(onehot, probs)}


def _multilabel(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    y_pred = (probs >= 0.5).astype(np.int64)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0)
    confusion = multilabel_confusion_matrix(y_true, y_pred)
    balanced = [_balanced_accuracy(y_true[:, j], y_pred[:, j]) for j in range(y_true.shape[1])]
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(np.mean(balanced)),
        "sensitivity": float(recall),
        "specificity": float(_specificity(confusion).mean()),
        "precision": float(precision),
        "f1": float(f1),
        "auc": _macro_auc(y_true.astype(bool), probs),
    }


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC, or NaN when ``positive`` is all True or all False (AUC undefined)."""
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score))


def _macro_auc(positive: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the columns where it is defined; NaN if it is defined for none."""
    scores = [_auc(positive[:, j], probs[:, j]) for j in range(probs.shape[1])]
    defined = [s for s in scores if not math.isnan(s)]
    return float(np.mean(defined)) if defined else float("nan")


def mean_metrics(per_site: list[Mapping[str, float]], weights: list[float]) -> dict[str, float]:
    """Weighted average of each metric over sites, skipping NaN values (and sites lacking the key).

    Every key found in any site's dict is averaged, with the weights of the sites that report a
    finite value for it renormalised to sum to one; a key that no site reports a usable value for
    (all NaN, or zero total weight) comes out as NaN. Typical weights are test-set sizes.
    """
    if len(per_site) != len(weights):
        raise ValueError(f"mean_metrics: {len(per_site)} metric dicts but {len(weights)} weights; "
                         "expected one weight per site")
    if not per_site:
        raise ValueError("mean_metrics: no sites given; expected at least one metric dict")
    bad = [w for w in weights if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"mean_metrics: weights must be finite and >= 0; got {bad[0]!r}")
    keys: list[str] = []
    for metrics in per_site:
        keys.extend(k for k in metrics if k not in keys)
    return {key: _weighted(per_site, weights, key) for key in keys}


def _weighted(per_site: list[Mapping[str, float]], weights: list[float], key: str) -> float:
    pairs = [(float(m[key]), float(w)) for m, w in zip(per_site, weights)
             if key in m and not math.isnan(float(m[key]))]
    total = sum(w for _, w in pairs)
    if total <= 0:
        return float("nan")
    return float(sum(v * w for v, w in pairs) / total)
