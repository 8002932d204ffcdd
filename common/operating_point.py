"""The operating point of a classifier, chosen on validation data only.

* Binary: a decision threshold on P(label 1), read from per-class histograms of the validation
  scores (equal bins of P(label 1) on [0, 1], one histogram per true label: sites
  send these aggregate counts, never a patient's score). A case is called label 1 when
  P(label 1) >= the threshold, the threshold being a bin edge k / bins. Exact histograms have
  `HIST_BINS` bins; noised ones (DP) `NOISED_HIST_BINS`: each bin carries its own Gaussian noise,
  and fewer, fuller bins keep the choice usable (module constant's comment). By default the
  threshold maximises Youden's J (sensitivity + specificity - 1); with a target sensitivity, it
  is the most specific threshold whose sensitivity for the positive class is at least the
  target. Ties go to the threshold nearest 0.5 (the argmax rule of a calibrated model).
* Multi-class and ordinal: post-hoc class-prior logit adjustment (Menon et al., ICLR 2021):
  predict argmax_c log p_c - log pi_c, pi the class prior of the validation data (its class
  counts, Laplace-smoothed). It targets balanced accuracy; AUC is threshold-free and is scored
  on the unadjusted probabilities.
* The positive class of a binary task is the finding, not whichever label is 1
  (`positive_class`): the one ``--positive-class`` names, else the class whose label name is not
  a normal one ("normal", "benign", ...; e.g. breastmnist's label 0 "malignant"), else label 1.

Skipped (the plain argmax, threshold 0.5), when no validation statistics reached the chooser:
the `OperatingPoint` then says why. Under DP the server has the sites' noised training class
counts instead (`prior_point`); it uses them also when a binary task's noised histograms are
mostly noise (`histogram_signal` below `MIN_HISTOGRAM_SIGNAL`: `server.model_selection`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from common.config import ConfigError
from common.datasets.base import TaskInfo
from common.metrics import classification_metrics, prediction_metrics

HIST_BINS = 50
# Bins of a noised (DP) histogram release: each cell carries N(0, sigma^2), so the counts behind
# a threshold carry the noise of every bin on one side of it. On PneumoniaMNIST (the final
# models of three DP FedAvg runs, 524 val cases over 5 sites, sigma 10 per cell, 400 noise
# draws each: bench/noised_threshold.py, docs/recipes.md) Youden on 10 noised bins gave mean val
# balanced accuracy 0.865 / 0.899 / 0.882, on 50 noised bins 0.836 / 0.896 / 0.859, on 50 bins
# summed into 10 by the server 0.820 / 0.895 / 0.840, at the argmax 0.589 / 0.886 / 0.830.
NOISED_HIST_BINS = 10
# A noised histogram sets the threshold only when each class's noised total is at least this many
# standard deviations of that total's noise (`histogram_signal`); below it the server uses the
# sites' noised training class prior (`prior_point`). On the val splits of DP FedAvg runs at
# epsilon 8, 400 noise draws each (bench/noised_threshold.py, docs/recipes.md "The threshold
# under DP"), mean val balanced accuracy, Youden on noised bins / this rule at 1.5 / the prior:
# PneumoniaMNIST 3 seeds, 524 val cases: 0.899 / 0.901 / 0.900; the same on a 78-case val
# subsample: 0.827 / 0.863 / 0.865; AdrenalMNIST3D 3 seeds, 98 val volumes: 0.500 for every rule
# (the models' scores all lie in one bin). 1.0 / 2.0 gave 0.900 / 0.901 and 0.861 / 0.864.
MIN_HISTOGRAM_SIGNAL = 1.5
NORMAL_NAMES = ("normal", "benign", "healthy", "negative", "no finding", "no disease",
                "control", "absent", "none")
THRESHOLD, LOGIT_ADJUSTMENT, ARGMAX = "threshold", "logit-adjustment", "argmax"
_DIGITS = 12                      # comparisons of J / specificity ignore float noise below this


@dataclass(frozen=True)
class PositiveClass:
    """The class a binary task's sensitivity is about, and where that came from."""

    index: int
    name: str
    source: str


def _is_normal(name: str) -> bool:
    parts = re.split(r"\s*(?:,|/|;|\band\b|\bor\b)\s*", name.strip().lower())
    return any(part.strip() in NORMAL_NAMES for part in parts)


def _class_index(names: tuple[str, ...], requested: str) -> int:
    wanted = requested.strip().lower()
    for i, name in enumerate(names):
        if name.lower() == wanted:
            return i
    if wanted.isdigit() and int(wanted) < len(names):
        return int(wanted)
    shown = ", ".join(f"{i} {n!r}" for i, n in enumerate(names))
    raise ConfigError(f"positive_class={requested!r}: not a class of this dataset; expected one "
                      f"of its names or indices ({shown})")


def positive_class(task: TaskInfo, requested: str = "") -> PositiveClass | None:
    """The positive class of a binary task (module docstring); None for other kinds. A
    ``requested`` class a binary task does not have, or one given for another kind of task, is a
    ConfigError naming the choices."""
    if task.kind != "binary":
        if requested:
            raise ConfigError(f"positive_class={requested!r}: a positive class applies to binary "
                              f"tasks; this task is {task.kind}")
        return None
    names = tuple(task.class_names) if len(task.class_names) == 2 else ("0", "1")
    if requested:
        index = _class_index(names, requested)
        return PositiveClass(index, names[index], "--positive-class")
    normal = [i for i, name in enumerate(names) if _is_normal(name)]
    if len(normal) == 1:
        index = 1 - normal[0]
        return PositiveClass(index, names[index], "the dataset's label names")
    return PositiveClass(1, names[1], "label 1 (the label names do not say which class is the "
                                      "finding; --positive-class NAME sets it)")


# ---------------------------------------------------------------------------- binary threshold

def score_bins(p1: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """The histogram bin of each P(label 1): floor(p x bins), 1.0 in the last bin."""
    p1 = np.asarray(p1, dtype=np.float64)
    return np.clip(np.floor(p1 * bins), 0, bins - 1).astype(np.int64)


def score_histograms(labels: np.ndarray, probs: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """(2, bins) int counts: row y holds the P(label 1) bins of the cases of true label y."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"score_histograms: probs {probs.shape} and labels {labels.shape}; "
                         f"expected (N, 2) and (N,)")
    out = np.zeros((2, bins), dtype=np.int64)
    np.add.at(out, (labels, score_bins(probs[:, 1], bins)), 1)
    return out


def coarsened(hist: np.ndarray, bins: int) -> np.ndarray:
    """(2, B) histograms summed into (2, bins) equal bins (B a multiple of ``bins``)."""
    h = np.asarray(hist)
    if h.ndim != 2 or h.shape[1] % bins:
        raise ValueError(f"coarsened: histograms of shape {h.shape} do not split into {bins} "
                         f"equal bins")
    return h.reshape(h.shape[0], bins, h.shape[1] // bins).sum(axis=2)


@dataclass(frozen=True)
class RocPoint:
    """One candidate threshold on P(label 1) and what it gives on the validation data."""

    threshold: float          # call label 1 when P(label 1) >= threshold
    sensitivity: float        # of the positive class
    specificity: float

    @property
    def youden(self) -> float:
        return self.sensitivity + self.specificity - 1.0


def roc_points(hist: np.ndarray, positive: int) -> list[RocPoint]:
    """Every bin-edge threshold k / B (k = 0..B, B the histograms' bins) with its sensitivity and
    specificity for class ``positive``; [] when a class has no (positive) count. Noised counts
    are clamped at 0 first (post-processing)."""
    h = np.clip(np.asarray(hist, dtype=np.float64), 0.0, None)
    if h.ndim != 2 or h.shape[0] != 2 or h.shape[1] < 1:
        raise ValueError(f"roc_points: histograms of shape {h.shape}; expected (2, bins)")
    bins = h.shape[1]
    totals = h.sum(axis=1)
    if (totals <= 0).any():
        return []
    above = np.concatenate([np.cumsum(h[:, ::-1], axis=1)[:, ::-1],
                            np.zeros((2, 1))], axis=1)       # (2, B+1): counts in bins >= k
    called_1 = above / totals[:, None]                       # share of each class called label 1
    points = []
    for k in range(bins + 1):
        tpr1, fpr1 = called_1[1, k], called_1[0, k]
        sens, spec = (tpr1, 1.0 - fpr1) if positive == 1 else (1.0 - fpr1, tpr1)
        points.append(RocPoint(k / bins, float(sens), float(spec)))
    return points


def _near_half(point: RocPoint) -> float:
    return -abs(point.threshold - 0.5)


def choose_threshold(hist: np.ndarray, positive: int, target_sensitivity: float = 0.0
                     ) -> RocPoint | None:
    """Youden's J (``target_sensitivity`` 0), else the most specific threshold whose
    sensitivity is >= the target; ties to the threshold nearest 0.5, then the lower one. None
    when the histograms lack a class."""
    points = roc_points(hist, positive)
    if not points:
        return None
    if target_sensitivity > 0:
        eligible = [p for p in points if round(p.sensitivity, _DIGITS) >= target_sensitivity]
        return max(eligible, key=lambda p: (round(p.specificity, _DIGITS),
                                            round(p.sensitivity, _DIGITS), _near_half(p),
                                            -p.threshold))
    return max(points, key=lambda p: (round(p.youden, _DIGITS), _near_half(p), -p.threshold))


def histogram_auc(hist: np.ndarray) -> float:
    """ROC AUC read from the two score histograms (a tie within a bin counts one half); NaN when
    a class has no count. The same for either class as positive."""
    h = np.clip(np.asarray(hist, dtype=np.float64), 0.0, None)
    n0, n1 = h[0].sum(), h[1].sum()
    if n0 <= 0 or n1 <= 0:
        return float("nan")
    below = np.cumsum(h[0]) - h[0]               # label-0 cases in lower bins
    return float((h[1] * (below + 0.5 * h[0])).sum() / (n0 * n1))


def histogram_signal(hist: np.ndarray, cell_sd: float) -> float:
    """The smaller class's noised total in standard deviations of its noise (``cell_sd`` per
    bin, independent: sd x sqrt(bins) on a total); inf for exact counts (``cell_sd`` 0)."""
    h = np.asarray(hist, dtype=np.float64)
    if cell_sd <= 0:
        return float("inf")
    return float(h.sum(axis=1).min() / (cell_sd * np.sqrt(h.shape[1])))


# ---------------------------------------------------------------------------- multi-class

def class_log_prior(counts: np.ndarray) -> np.ndarray:
    """log pi_c of Laplace-smoothed class counts (noised counts clamped at 0 first)."""
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    return np.log((c + 1.0) / (c.sum() + len(c)))


# ---------------------------------------------------------------------------- the choice

@dataclass(frozen=True)
class OperatingPoint:
    """How predictions are made from a model's probabilities, and how that was chosen."""

    kind: str                                  # THRESHOLD | LOGIT_ADJUSTMENT | ARGMAX
    rule: str                                  # how it was chosen, for people
    threshold: float | None = None             # THRESHOLD: label 1 iff P(label 1) >= it
    log_prior: tuple[float, ...] = ()          # LOGIT_ADJUSTMENT: subtracted from log p
    positive: PositiveClass | None = None      # binary tasks
    validation: dict[str, float] = field(default_factory=dict)   # what it gave on val data
    skipped: str = ""                          # ARGMAX: why nothing was chosen

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """Class index per row of (N, K) probabilities."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.kind == THRESHOLD:
            return (probs[:, 1] >= self.threshold).astype(np.int64)
        if self.kind == LOGIT_ADJUSTMENT:
            logp = np.log(np.clip(probs, 1e-300, None))
            return (logp - np.asarray(self.log_prior)[None, :]).argmax(axis=1)
        return probs.argmax(axis=1)

    def positive_threshold(self) -> float | None:
        """The threshold as a rule on P(positive class): ">= t" for label 1, "> t" for label 0
        (P(label 0) > 1 - threshold is P(label 1) < threshold)."""
        if self.threshold is None or self.positive is None:
            return self.threshold
        return self.threshold if self.positive.index == 1 else 1.0 - self.threshold

    def describe(self) -> str:
        """One sentence for the report."""
        if self.kind == THRESHOLD and self.positive is not None:
            sign = ">=" if self.positive.index == 1 else ">"
            return (f"call '{self.positive.name}' when P({self.positive.name}) {sign} "
                    f"{self.positive_threshold():.2f} ({self.rule})")
        if self.kind == LOGIT_ADJUSTMENT:
            return f"class-prior logit adjustment ({self.rule})"
        return f"argmax of the probabilities (threshold 0.5): {self.skipped or self.rule}"

    def to_json(self) -> dict:
        out = asdict(self)
        out["positive_threshold"] = self.positive_threshold()
        out["log_prior"] = list(self.log_prior)
        return out


def argmax_point(reason: str, positive: PositiveClass | None = None) -> OperatingPoint:
    """No operating point was chosen (``reason`` says why): the plain argmax."""
    return OperatingPoint(ARGMAX, "not chosen", positive=positive, skipped=reason)


def choose_operating_point(task: TaskInfo, counts: np.ndarray | None, *,
                           target_sensitivity: float, positive: PositiveClass | None,
                           source: str, prior_adjusted: bool = False) -> OperatingPoint:
    """The operating point from validation counts: binary (2, bins) score histograms,
    multi-class/ordinal a (K, K) confusion matrix (its row sums are the class counts); ``source``
    names where they came from, for the rule's text. ``prior_adjusted``: the model was trained
    with the logit-adjusted loss, whose raw logits already target balanced accuracy, so a
    multi-class task keeps the argmax (adjusting again would over-correct)."""
    if task.kind not in ("binary", "multiclass", "ordinal"):
        return argmax_point(f"no operating point for {task.kind} tasks", positive)
    if counts is None:
        return argmax_point(f"no validation statistics ({source})", positive)
    if task.kind == "binary":
        return _threshold_point(counts, target_sensitivity, positive, source)
    if prior_adjusted:
        return argmax_point("the training loss is already logit-adjusted (loss=logit_adjusted)",
                            positive)
    rows = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None).sum(axis=1)
    prior = class_log_prior(rows)
    return OperatingPoint(LOGIT_ADJUSTMENT, f"prior from {rows.sum():.0f} validation cases, "
                          f"{source}", log_prior=tuple(float(v) for v in prior))


def prior_point(task: TaskInfo, class_counts: np.ndarray, *, positive: PositiveClass | None,
                source: str, prior_adjusted: bool = False) -> OperatingPoint:
    """The operating point from training class counts alone (`common.class_prior`: the sites'
    noised counts under DP, when no usable validation statistics left): the post-hoc logit
    adjustment with the Laplace-smoothed prior pi. Binary: call label 1 when P(label 1) >= pi_1
    (where log p_1 - log pi_1 = log p_0 - log pi_0); multi-class/ordinal: argmax of
    log p - log pi, where a model trained with the logit-adjusted loss keeps the argmax (already
    adjusted). A binary one gets the threshold even so: these counts exist only under DP, where
    DP-SGD's per-sample clipping caps the larger gradients of the minority class and so undoes
    much of the adjustment. The DP FedAvg models of PneumoniaMNIST (logit-adjusted, epsilon 8,
    3 seeds) score a val balanced accuracy of 0.900 at pi_1 against 0.882 at the argmax (0.865
    against 0.849 on 78 val cases; bench/noised_threshold.py)."""
    if task.kind not in ("binary", "multiclass", "ordinal"):
        return argmax_point(f"no operating point for {task.kind} tasks", positive)
    if prior_adjusted and task.kind != "binary":
        return argmax_point("the training loss is already logit-adjusted (loss=logit_adjusted)",
                            positive)
    counts = np.clip(np.asarray(class_counts, dtype=np.float64), 0.0, None)
    log_prior = class_log_prior(counts)
    rule = f"the class prior of {counts.sum():.0f} training cases, {source}"
    if task.kind != "binary":
        return OperatingPoint(LOGIT_ADJUSTMENT, rule, log_prior=tuple(float(v) for v in log_prior))
    positive = positive or PositiveClass(1, "1", "label 1")
    return OperatingPoint(THRESHOLD, f"P(label 1) >= its share in {rule}",
                          threshold=float(np.exp(log_prior[1])), positive=positive)


def _threshold_point(hist: np.ndarray, target: float, positive: PositiveClass | None,
                     source: str) -> OperatingPoint:
    positive = positive or PositiveClass(1, "1", "label 1")
    point = choose_threshold(hist, positive.index, target)
    if point is None:
        return argmax_point(f"the validation data lack one of the classes ({source})", positive)
    how = (f"the most specific threshold with sensitivity >= {target:g}" if target > 0
           else "Youden's J")
    return OperatingPoint(THRESHOLD, f"{how} on {source}, {np.shape(hist)[1]} bins",
                          threshold=point.threshold, positive=positive,
                          validation={"sensitivity": point.sensitivity,
                                      "specificity": point.specificity,
                                      "auc": histogram_auc(hist)})


# ---------------------------------------------------------------------------- scoring

OPERATING_METRICS = ("auc", "balanced_accuracy", "sensitivity", "specificity", "accuracy")


def metrics_at(point: OperatingPoint, kind: str, labels: np.ndarray, probs: np.ndarray
               ) -> dict[str, float]:
    """AUC (threshold-free, unadjusted probabilities), balanced accuracy, sensitivity,
    specificity and accuracy of the predictions at ``point``; binary ones for its positive class
    (sensitivity NaN on a split without a positive case, specificity without a negative one).
    Plus the threshold on P(positive) for a binary task (0.5 at the argmax)."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = point.predict(probs)
    positive = point.positive.index if point.positive is not None else 1
    hard = prediction_metrics(kind, labels, pred, positive=positive)
    auc = classification_metrics(kind, labels, probs)["auc"]
    out = {"auc": auc, **{k: hard[k] for k in OPERATING_METRICS if k != "auc"}}
    if kind == "binary":                    # undefined, not 0, on a split without the class
        if not (labels == positive).any():
            out["sensitivity"] = float("nan")
        if (labels == positive).all():
            out["specificity"] = float("nan")
        shown = point.positive_threshold() if point.kind == THRESHOLD else 0.5
        out["threshold"] = float(shown)
    return out
