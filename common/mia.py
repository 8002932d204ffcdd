"""Empirical privacy audit: membership-inference attacks on a trained classifier.

A reported epsilon is an upper bound from the accountant; these attacks give a lower-bound style
sanity check next to it. The auditor knows a site's training samples (members) and held-out samples
from the same distribution (non-members) and asks how well a per-sample score tells them apart:

* ``loss-threshold`` (Yeom et al. 2018): score = -loss, since training drives members' loss down.
* ``calibrated`` (Watson et al. 2022, difficulty calibration): score = loss_ref(x) - loss_target(x)
  with a reference model that never trained on these members (e.g. the initial model). Subtracting
  the reference loss removes how hard a sample is *per se*, leaving the part training explained.

Each attack is summarised by ROC-AUC (0.5 = no leakage), the TPR at 1% FPR (the low-FPR regime
that matters for privacy, Carlini et al. 2022) and the membership advantage max(TPR - FPR).
`audit` adds a seeded percentile-bootstrap confidence interval to each (`common.mia_bootstrap`):
with a few hundred test patients per site an AUC of 0.55 may well be chance, and the interval
says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from common.datasets.base import Split, TaskInfo
from common.mia_bootstrap import LOW_FPR, RESAMPLES, bootstrap_intervals
from common.training.checks import check_split
from common.training.prediction import classification_logits

ATTACKS = ("loss-threshold", "calibrated")
LossFn = Callable[[nn.Module, Split, TaskInfo], np.ndarray]   # (N,) loss per sample
MIN_SIDE = 2
SKIPPED = "skipped"          # key of a site (or the whole audit) the attack could not score
NO_SITE = (f"no site could be audited: each needs at least {MIN_SIDE} members and {MIN_SIDE} "
           f"non-members with finite membership scores (see each site's reason)")
BOOTSTRAP_STREAM = 0xB007    # second seed word: the bootstrap's draws differ from `balanced`'s


@dataclass(frozen=True)
class MIAResult:
    attack: str              # one of ATTACKS
    auc: float               # ROC-AUC of the membership score (0.5 = no leakage)
    tpr_at_1pct_fpr: float   # TPR at 1% FPR, linearly interpolated on the ROC curve
    advantage: float         # max over thresholds of TPR - FPR
    n_members: int
    n_nonmembers: int


def per_sample_loss(model: nn.Module, split: Split, task: TaskInfo,
                    batch_size: int = 256) -> np.ndarray:
    """(N,) float64 cross-entropy per sample (multilabel: BCE summed over the labels).

    The model runs in eval mode without gradients; its train/eval mode is restored afterwards.
    """
    check_split(split, task, "per_sample_loss")
    logits = classification_logits(model, split.images, task, batch_size)
    if task.kind == "multilabel":
        target = torch.as_tensor(np.asarray(split.labels), dtype=torch.float64)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)
    else:
        target = torch.as_tensor(np.asarray(split.labels), dtype=torch.int64)
        loss = F.cross_entropy(logits, target, reduction="none")
    return loss.numpy()


def _check_sides(n_members: int, n_nonmembers: int, where: str) -> None:
    for name, n in (("members", n_members), ("non-members", n_nonmembers)):
        if n < MIN_SIDE:
            raise ValueError(f"{where}: {n} {name}; a membership-inference attack needs at least "
                             f"{MIN_SIDE} members and {MIN_SIDE} non-members")


def _tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """TPR where the piecewise-linear ROC curve (points sorted by threshold) crosses ``target``.

    At a vertical segment exactly at ``target`` (tied scores) the highest TPR there is taken.
    """
    last = int(np.flatnonzero(fpr <= target)[-1])   # fpr[0] == 0, so there is always one
    if fpr[last] == target or last == len(fpr) - 1:
        return float(tpr[last])
    nxt = last + 1
    frac = (target - fpr[last]) / (fpr[nxt] - fpr[last])
    return float(tpr[last] + frac * (tpr[nxt] - tpr[last]))


def scores_to_result(attack: str, member_scores: np.ndarray,
                     nonmember_scores: np.ndarray) -> MIAResult:
    """Summarise membership scores (higher = "more likely a member") as an `MIAResult`."""
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} unknown; expected one of {', '.join(ATTACKS)}")
    members = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).reshape(-1)
    _check_sides(members.size, nonmembers.size, f"{attack} attack")
    scores = np.concatenate([members, nonmembers])
    if not np.isfinite(scores).all():
        raise ValueError(f"{attack} attack: {int((~np.isfinite(scores)).sum())} membership scores "
                         f"are NaN or infinite; the model's losses must be finite")
    is_member = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    fpr, tpr, _ = roc_curve(is_member, scores, drop_intermediate=False)
    return MIAResult(attack=attack,
                     auc=float(roc_auc_score(is_member, scores)),
                     tpr_at_1pct_fpr=_tpr_at_fpr(fpr, tpr, LOW_FPR),
                     advantage=float(np.max(tpr - fpr)),
                     n_members=int(members.size),
                     n_nonmembers=int(nonmembers.size))


def loss_threshold_attack(model: nn.Module, members: Split, nonmembers: Split,
                          task: TaskInfo) -> MIAResult:
    """Yeom et al.: members should have lower loss, so the membership score is ``-loss``."""
    _check_sides(len(members), len(nonmembers), "loss_threshold_attack")
    return scores_to_result("loss-threshold", -per_sample_loss(model, members, task),
                            -per_sample_loss(model, nonmembers, task))


def calibrated_attack(model: nn.Module, reference_model: nn.Module, members: Split,
                      nonmembers: Split, task: TaskInfo) -> MIAResult:
    """Difficulty-calibrated loss attack: score = ``loss_ref(x) - loss_target(x)``.

    ``reference_model`` must not have trained on ``members`` (the initial global model, or a model
    trained on other data), otherwise the calibration cancels the very signal being measured.
    """
    _check_sides(len(members), len(nonmembers), "calibrated_attack")
    return scores_to_result("calibrated", _calibrated_scores(model, reference_model, members, task),
                            _calibrated_scores(model, reference_model, nonmembers, task))


def _calibrated_scores(model: nn.Module, reference_model: nn.Module, split: Split,
                       task: TaskInfo) -> np.ndarray:
    return per_sample_loss(reference_model, split, task) - per_sample_loss(model, split, task)


def balanced(members: Split, nonmembers: Split, seed: int) -> tuple[Split, Split]:
    """Subsample the larger side without replacement so both sides have the same size.

    Deterministic in ``seed``; the kept samples stay in their original order. AUC does not need
    balance, but TPR at a fixed FPR and the advantage are less noisy with equal sides.
    """
    _check_sides(len(members), len(nonmembers), "balanced")
    size = min(len(members), len(nonmembers))
    rng = np.random.default_rng(seed)
    return _take(members, size, rng), _take(nonmembers, size, rng)


def _take(split: Split, size: int, rng: np.random.Generator) -> Split:
    if len(split) == size:
        return split
    return split.subset(np.sort(rng.choice(len(split), size=size, replace=False)))


def audit(model: nn.Module, pairs: list[tuple[Split, Split]], task: TaskInfo, *,
          reference_model: nn.Module | None = None, seed: int = 0,
          loss: LossFn = per_sample_loss, resamples: int = RESAMPLES) -> dict:
    """Run the attacks per site and pooled over the sites it could audit; plain python values
    (JSON-ready).

    ``pairs[i]`` is site ``i``'s (members, non-members). Each pair is balanced with seed
    ``seed + i``; "pooled" concatenates the balanced pairs of the audited sites. The calibrated
    attack is reported only when ``reference_model`` is given. ``loss`` scores each sample
    (`per_sample_loss` for classifiers; `common.training.seg_inference.per_sample_seg_loss`, mean
    CE per image, for segmentation). Returns ``{"sites": {i: {attack: summary}}, "pooled":
    {attack: summary}}`` where a summary is `asdict(MIAResult)` plus, unless ``resamples`` is 0,
    the bootstrap interval of each value as flat scalars (``auc_ci_low``, ``auc_ci_high``,
    ``tpr_at_1pct_fpr_ci_low``, ..., ``ci_level``, ``bootstrap_resamples``;
    `common.mia_bootstrap.MIAIntervals.flat`), resampled with seed ``(seed + i,
    BOOTSTRAP_STREAM)`` for site ``i`` and ``(seed, ...)`` pooled.

    A site the attack cannot score is not an error: with fewer than `MIN_SIDE` members or
    non-members (a small site, or one whose bad files were skipped), or with non-finite scores (a
    diverged model), its entry is ``{SKIPPED: reason}`` and the pooled attack leaves it out. When
    no site is left, "pooled" is {} and a top-level ``SKIPPED`` key says why.
    """
    if not pairs:
        raise ValueError("audit: pairs is empty; expected one (members, non-members) pair per site")
    sites: dict[int, dict] = {}
    audited = []
    for i, pair in enumerate(pairs):
        scores = _site_scores(model, reference_model, pair, task, seed + i, i, loss)
        if isinstance(scores, str):
            sites[i] = {SKIPPED: scores}
            continue
        sites[i] = _summarise(scores, seed + i, resamples)
        audited.append(scores)
    if not audited:
        return {"sites": sites, "pooled": {}, SKIPPED: NO_SITE}
    pooled = {attack: tuple(np.concatenate([s[attack][side] for s in audited]) for side in (0, 1))
              for attack in audited[0]}
    return {"sites": sites, "pooled": _summarise(pooled, seed, resamples)}


def too_few(n_members: int, n_nonmembers: int) -> str | None:
    """Why a site with these sides cannot be audited, or None when it can."""
    if min(n_members, n_nonmembers) >= MIN_SIDE:
        return None
    return (f"{n_members} member(s) and {n_nonmembers} non-member(s); the membership-inference "
            f"attack needs at least {MIN_SIDE} of each")


def not_finite(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> str | None:
    """Why these scores cannot be summarised (some are NaN or infinite), or None when they can.
    Counts the samples whose score is not finite under any attack."""
    bad = [np.concatenate([~np.isfinite(m), ~np.isfinite(n)]) for m, n in scores.values()]
    count = int(np.logical_or.reduce(bad).sum()) if bad else 0
    if not count:
        return None
    return f"{count} membership scores are NaN or infinite (the model's losses are not finite)"


def _site_scores(model: nn.Module, reference_model: nn.Module | None, pair: tuple[Split, Split],
                 task: TaskInfo, seed: int, site: int,
                 loss: LossFn) -> dict[str, tuple[np.ndarray, np.ndarray]] | str:
    """{attack: (member scores, non-member scores)} on the balanced pair of one site, or the
    reason the site cannot be audited (`too_few`, `not_finite`)."""
    if len(pair) != 2:
        raise ValueError(f"audit: pairs[{site}] has {len(pair)} entries; expected (members, "
                         f"non-members)")
    members, nonmembers = pair
    reason = too_few(len(members), len(nonmembers))
    if reason is not None:
        return reason
    sides = balanced(members, nonmembers, seed)
    losses = [np.asarray(loss(model, split, task), dtype=np.float64) for split in sides]
    out = {"loss-threshold": (-losses[0], -losses[1])}
    if reference_model is not None:
        ref = [np.asarray(loss(reference_model, split, task), dtype=np.float64) for split in sides]
        out["calibrated"] = (ref[0] - losses[0], ref[1] - losses[1])
    return not_finite(out) or out


def _summarise(scores: dict[str, tuple[np.ndarray, np.ndarray]], seed: int,
               resamples: int) -> dict[str, dict]:
    out = {}
    for attack, (members, nonmembers) in scores.items():
        summary = asdict(scores_to_result(attack, members, nonmembers))
        if resamples:
            summary.update(bootstrap_intervals(members, nonmembers, seed=(seed, BOOTSTRAP_STREAM),
                                               resamples=resamples).flat())
        out[attack] = summary
    return out
