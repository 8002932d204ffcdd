"""Model selection without peeking: the best global model by the sites' validation statistics,
early stopping, and the operating point chosen from the same statistics.

Each round `server.round_log.RoundLog.evaluate` shows `ModelSelection.observe` the sites'
evaluate metrics (their validation statistics, `common.validation_stats`, ride along with the
test metrics as their policy allows); the global test split is never looked at here. The
criterion is the sample-weighted validation loss when every reporting site sent it (no DP),
else the validation AUC read from the summed score histograms (binary) or the balanced accuracy
of the summed confusion matrix (multi-class) - under DP those counts are noised, and only the
rounds with a noised metric release have them. The round's model is kept as ``best_model.pt``
when it is the best so far; ``patience`` rounds in a row without a better one end the run
(`EarlyStopped`). With no statistics at all (under DP the policy kept them local, or the sites
have no val split) nothing is selected and the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from common.datasets import Split, TaskInfo
from common.operating_point import (
    MIN_HISTOGRAM_SIGNAL, OperatingPoint, PositiveClass, argmax_point, choose_operating_point,
    histogram_auc, histogram_signal, metrics_at, prior_point,
)
from common.class_prior import ClassPrior
from common.privacy.mechanisms import derived_metrics
from common.report.selection import LOWER_IS_BETTER, Selection
from common.training.prediction import predict_proba
from common.validation_stats import COUNT_KINDS, RoundValidation, combine

BEST_MODEL = "best_model.pt"
NOT_SENT = ("no site sent validation statistics: they leave only as the test metrics do (no DP "
            "and a policy that lets test metrics leave; under DP only noised, with "
            "test_metrics = 'noised', in the rounds a metric release is due), and a site "
            "needs a val split")


class EarlyStopped(Exception):
    """``patience`` rounds in a row without a better validation score: end the run."""


def round_score(kind: str, v: RoundValidation) -> tuple[str, float] | None:
    """The round's criterion and value (module docstring), or None when it has none."""
    if v.loss is not None:
        return "val_loss", v.loss
    if v.counts is None:
        return None
    if kind == "binary":
        value = histogram_auc(v.counts)
        return None if value != value else ("val_auc", value)
    return "val_balanced_accuracy", derived_metrics(kind, v.counts)["balanced_accuracy"]


def _better(criterion: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if criterion in LOWER_IS_BETTER else value > best


@dataclass
class ModelSelection:
    """The run's selection state, fed one round at a time."""

    task: TaskInfo
    patience: int = 0
    target_sensitivity: float = 0.0
    positive: PositiveClass | None = None
    prior_adjusted: bool = False     # trained with loss=logit_adjusted (choose_operating_point)
    criterion: str = ""
    best_round: int = 0
    best_value: float | None = None
    best_stats: RoundValidation | None = None
    scores: dict[int, float] = field(default_factory=dict)
    since_best: int = 0          # rounds with a score since the best one
    noised: bool = False
    prior: ClassPrior = field(init=False)   # the sites' noised training class counts (DP)

    def __post_init__(self) -> None:
        self.prior = ClassPrior(self.task.num_classes)

    def observe(self, server_round: int, sites: Mapping[str, Mapping[str, dict]]) -> bool:
        """The round's sites (metrics.jsonl form: site -> {"train", "test"}); True when its
        model is the best so far (the caller keeps it)."""
        for site, v in sites.items():
            self.prior.observe(site, v.get("train") or {})
        per_site = {s: v.get("test") or {} for s, v in sites.items()}
        stats = combine(self.task.kind, self.task.num_classes, per_site)
        scored = None if stats is None else round_score(self.task.kind, stats)
        if scored is None:
            return False
        criterion, value = scored
        if self.criterion and criterion != self.criterion:
            return False                 # another criterion than the run's: not comparable
        self.criterion = criterion
        self.scores[server_round] = value
        self.noised = self.noised or stats.noised
        if _better(criterion, value, self.best_value):
            self.best_round, self.best_value, self.best_stats = server_round, value, stats
            self.since_best = 0
            return True
        self.since_best += 1
        return False

    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def stop_reason(self, last_round: int) -> str:
        return (f"early stopping: {self.since_best} rounds without a better validation score "
                f"({self.criterion}; best {self.best_value:.4f} at round {self.best_round}, "
                f"patience {self.patience}); the run stops after round {last_round}")

    def progress(self) -> str:
        """' | val loss 0.412 (best r3)' for the round's progress line, '' without a score."""
        if not self.scores:
            return ""
        last = self.scores[max(self.scores)]
        name = self.criterion.replace("val_", "val ").replace("_", " ")
        return f" | {name} {last:.3f} (best r{self.best_round})"

    def replay(self, history: list[dict]) -> None:
        """Rebuild the state from a resumed run's metrics.jsonl lines."""
        for line in history:
            if line.get("round", 0) > 0:
                self.observe(int(line["round"]), line.get("sites", {}))

    def operating_point(self) -> OperatingPoint:
        """Chosen from the best round's summed validation counts; without them (DP, the
        policy kept them local), or when a binary task's noised histograms are mostly noise
        (`common.operating_point.histogram_signal` below `MIN_HISTOGRAM_SIGNAL`: a few val
        cases per site), from the sites' noised training class prior when they sent it
        (`common.class_prior`)."""
        stats = self.best_stats
        if stats is None:
            return self._prior_point(NOT_SENT)
        signal = (histogram_signal(stats.counts, stats.noise_sd)
                  if self.task.kind == "binary" and stats.noised and stats.noise_sd else None)
        if signal is not None and signal < MIN_HISTOGRAM_SIGNAL:
            unused = (f"; --target-sensitivity {self.target_sensitivity:g} not applied"
                      if self.target_sensitivity > 0 else "")
            why = (f"the noised val histograms of round {self.best_round} are mostly noise (the "
                   f"smaller class's total is {signal:.2f} sd of its noise, under "
                   f"{MIN_HISTOGRAM_SIGNAL:g}){unused}")
            return self._prior_point(why, also=why)
        source = (f"the validation statistics of {len(stats.sites)} site(s) at "
                  f"round {self.best_round}" + (", noised" if stats.noised else ""))
        return choose_operating_point(self.task, stats.counts,
                                      target_sensitivity=self.target_sensitivity,
                                      positive=self.positive, source=source,
                                      prior_adjusted=self.prior_adjusted)

    def _prior_point(self, why: str, also: str = "") -> OperatingPoint:
        """The operating point from the sites' noised training class prior, its rule followed by
        ``also``; without that prior the argmax, ``why`` saying why there is nothing better."""
        counts = self.prior.counts()
        if counts is None or self.task.kind not in COUNT_KINDS:
            return argmax_point(why, self.positive)
        point = prior_point(self.task, counts, positive=self.positive,
                            source=f"noised counts of {len(self.prior.sites)} site(s)",
                            prior_adjusted=self.prior_adjusted)
        return replace(point, rule=f"{point.rule}; {also}") if also else point

    def outcome(self, last_round: int, stopped: str = "") -> Selection:
        """What the report says: the chosen round (or why none), the operating point."""
        if not self.criterion:
            skipped = ("no model selection for segmentation yet" if
                       self.task.kind == "segmentation" else NOT_SENT)
            return Selection("", last_round, last_round, skipped=skipped, stopped=stopped,
                             operating_point=self.operating_point())
        return Selection(self.criterion, self.best_round, last_round, self.best_value,
                         dict(self.scores), stopped=stopped, noised=self.noised,
                         operating_point=self.operating_point())


def score_at_operating_point(selection: Selection, model: torch.nn.Module, split: Split | None,
                             task: TaskInfo) -> Selection:
    """``selection`` with the chosen model's metrics on ``split`` (the global test split) at
    its operating point; unchanged without a split or an operating point."""
    point = selection.operating_point
    if split is None or len(split) == 0 or point is None or task.kind not in (
            "binary", "multiclass", "ordinal"):
        return selection
    probs = predict_proba(model, split.images, task)
    return replace(selection, at_operating_point=metrics_at(point, task.kind,
                                                            np.asarray(split.labels), probs))


def chosen_state(run_dir: Path, selection: Selection) -> dict | None:
    """The state dict of the chosen model: best_model.pt when a model was selected, else None
    (the final model is the chosen one)."""
    path = run_dir / BEST_MODEL
    if not selection.selected or not path.exists():
        return None
    return torch.load(path, weights_only=False)["state_dict"]
