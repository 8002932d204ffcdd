"""The sites' training class prior under DP: what sets the operating point when no validation
statistics leave.

Under sample-level DP a site's validation statistics leave only with a noised metric release
(a site policy with ``test_metrics = 'noised'``); by default they stay local, and the server
then has nothing to choose a threshold from, so a model trained on an imbalanced federation
calls the majority class for almost every case. But each site already releases its training
count once per run (noised, charged: ``sample_count = 'noised'``); for single-label
classification that release is the vector of per-class counts at the same cost (a patient is
in one class: L2 sensitivity 1), sent as ``train_class_count_<c>``. Their sum over the sites is
the federation's training class prior, and the post-hoc logit adjustment (Menon et al., ICLR
2021) turns it into an operating point that targets balanced accuracy: binary - call label 1
when P(label 1) >= pi_1; multi-class/ordinal - argmax of log p_c - log pi_c
(`common.operating_point.prior_point`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CLASS_COUNT = "train_class_count_"


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Cases per class of single-label class indices (the exact counts a release noises)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    return np.bincount(labels, minlength=num_classes)[:num_classes]


def class_count_key(c: int) -> str:
    return f"{CLASS_COUNT}{c}"


def class_counts_of(num_classes: int, metrics: Mapping[str, float]) -> np.ndarray | None:
    """A train reply's per-class counts, or None when it has none (not the releasing round, no
    DP, sample_count = 'equal', multilabel or segmentation) or only some of them."""
    keys = [class_count_key(c) for c in range(num_classes)]
    if not all(k in metrics for k in keys):
        return None
    return np.array([float(metrics[k]) for k in keys])


class ClassPrior:
    """The sites' released class counts, the first release of each site kept (a site releases
    once per run; a later copy, e.g. a resumed run's replay, changes nothing)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sites: dict[str, np.ndarray] = {}

    def observe(self, site: str, train_metrics: Mapping[str, float]) -> None:
        counts = class_counts_of(self.num_classes, train_metrics)
        if counts is not None and site not in self.sites:
            self.sites[site] = counts

    def counts(self) -> np.ndarray | None:
        """The summed counts (clamped at 0), or None before any site sent them."""
        if not self.sites:
            return None
        return np.clip(np.sum(list(self.sites.values()), axis=0), 0.0, None)
