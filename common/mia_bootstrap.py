"""Bootstrap confidence intervals for the membership-inference summaries (`common.mia`).

Members and non-members are resampled separately with replacement (each side keeps its size),
``resamples`` times, from a generator seeded by the caller, and each resample is summarised
exactly as `common.mia.scores_to_result` summarises the real scores: ROC-AUC (ties count one
half), TPR at 1% FPR (linear on the ROC curve, the top of a vertical segment at exactly 1%) and
the advantage max(TPR - FPR). A resample is a vector of integer weights on the original scores,
so all resamples share one sort and are computed together. The interval is the percentile
bootstrap at ``level`` (default 95%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
LOW_FPR = 0.01         # the FPR of the low-FPR TPR (`common.mia`)
LEVEL = 0.95
CHUNK = 200            # resamples computed at once (memory: CHUNK x distinct scores x 8 bytes)
SUMMARIES = ("auc", "tpr_at_1pct_fpr", "advantage")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class MIAIntervals:
    """Percentile-bootstrap intervals of one attack's summaries."""

    auc: Interval
    tpr_at_1pct_fpr: Interval
    advantage: Interval
    resamples: int
    level: float

    def flat(self) -> dict[str, float | int]:
        """Plain scalars for the audit's JSON (``auc_ci_low``, ``auc_ci_high``, ...)."""
        out: dict[str, float | int] = {}
        for name in SUMMARIES:
            interval = getattr(self, name)
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
        return {**out, "ci_level": self.level, "bootstrap_resamples": self.resamples}


def bootstrap_intervals(member_scores: np.ndarray, nonmember_scores: np.ndarray, *,
                        seed: int | tuple[int, ...], resamples: int = RESAMPLES,
                        level: float = LEVEL) -> MIAIntervals:
    """Percentile-bootstrap intervals of AUC, TPR at 1% FPR and advantage (see module doc).

    Deterministic in ``seed``. ``resamples`` >= 2 and 0 < ``level`` < 1.
    """
    if resamples < 2:
        raise ValueError(f"bootstrap: resamples={resamples}; expected at least 2")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap: level={level}; expected a confidence level in (0, 1)")
    members = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        counts_m = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size), size)
        counts_n = rng.multinomial(nonmembers.size, np.full(nonmembers.size, 1.0 / nonmembers.size),
                                   size)
        parts.append(weighted_summaries(members, nonmembers, counts_m, counts_n))
    stacked = {name: np.concatenate([p[name] for p in parts]) for name in SUMMARIES}
    tails = [(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0]
    bounds = {name: Interval(*(float(q) for q in np.quantile(values, tails)))
              for name, values in stacked.items()}
    return MIAIntervals(**bounds, resamples=resamples, level=level)


def weighted_summaries(members: np.ndarray, nonmembers: np.ndarray, member_counts: np.ndarray,
                       nonmember_counts: np.ndarray,
                       low_fpr: float = LOW_FPR) -> dict[str, np.ndarray]:
    """AUC, TPR at ``low_fpr`` FPR and advantage of each row of sample counts.

    ``member_counts`` (B, members) and ``nonmember_counts`` (B, non-members) say how often each
    score occurs in resample b (all ones: the scores themselves, as `scores_to_result` sees them).
    Returns {"auc", "tpr_at_1pct_fpr", "advantage"}: (B,) arrays.
    """
    scores = np.concatenate([members, nonmembers])
    _, group = np.unique(-scores, return_inverse=True)     # tie group, highest score first
    groups = int(group.max()) + 1
    pos = _group_sums(np.atleast_2d(member_counts), group[:members.size], groups)
    neg = _group_sums(np.atleast_2d(nonmember_counts), group[members.size:], groups)
    tpr = _roc_axis(pos)
    fpr = _roc_axis(neg)
    auc = (np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2.0).sum(axis=1)
    return {"auc": auc, "tpr_at_1pct_fpr": _tpr_at(fpr, tpr, low_fpr),
            "advantage": (tpr - fpr).max(axis=1)}


def _group_sums(counts: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """(B, groups): the counts of each row summed over the samples of each tie group."""
    order = np.argsort(group, kind="stable")
    ordered = group[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    out = np.zeros((counts.shape[0], groups))
    out[:, ordered[starts]] = np.add.reduceat(counts[:, order].astype(np.float64), starts, axis=1)
    return out


def _roc_axis(per_group: np.ndarray) -> np.ndarray:
    """(B, groups + 1): the ROC coordinate after each threshold, from the (0, 0) point on."""
    cumulative = np.cumsum(per_group, axis=1)
    total = cumulative[:, -1:]
    return np.concatenate([np.zeros((per_group.shape[0], 1)), cumulative / total], axis=1)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> np.ndarray:
    """Row-wise `common.mia._tpr_at_fpr`: linear between ROC points, the top of a vertical
    segment lying exactly at ``target``."""
    rows = np.arange(fpr.shape[0])
    last = (fpr <= target).sum(axis=1) - 1                 # fpr rows are non-decreasing
    nxt = np.minimum(last + 1, fpr.shape[1] - 1)
    f0, f1, t0, t1 = fpr[rows, last], fpr[rows, nxt], tpr[rows, last], tpr[rows, nxt]
    exact = (f0 == target) | (nxt == last)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = t0 + (target - f0) / (f1 - f0) * (t1 - t0)
    return np.where(exact, t0, between)
