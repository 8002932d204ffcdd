"""`--personalize finetune`: a site fine-tunes the federation's model on its own train split, one
epoch at a time, and keeps the epoch (0 = the federated model itself) with the lowest loss on
its own val split (segmentation: the highest Dice). The test split is never given to it.

Fine-tuning follows the run's optimiser, loss, augmentation and learning-rate schedule (warm-up
and decay over the ``epochs`` of fine-tuning, `common.training.schedule`), without DP-SGD: the
fine-tuned model stays at the site and nothing of it leaves (in deployment it is kept in the
site's state folder, `client.personalize_task`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import nn

from common.config import RunConfig
from common.datasets.base import Split, TaskInfo
from common.training.local import train_local
from common.training.prediction import evaluate
from common.training.schedule import EpochWindow

EPOCH_SEED = 104_723          # epoch e of fine-tuning trains with seed + e x EPOCH_SEED
NO_VAL = "no validation data: the federated model is kept (epoch 0)"


@dataclass(frozen=True)
class Finetuned:
    """How one site's fine-tuning went: the epoch kept and every epoch's validation score."""

    epoch: int                                   # epochs of fine-tuning kept (0: none)
    epochs: int                                  # epochs run (may stop early: patience)
    criterion: str                               # "val_loss" or "val_dice"; "" without val
    scores: dict[int, float] = field(default_factory=dict)   # epoch -> validation score
    note: str = ""

    def to_json(self) -> dict:
        out = {"epoch": self.epoch, "epochs": self.epochs, "criterion": self.criterion,
               "scores": {str(e): v for e, v in self.scores.items()}}
        return {**out, "note": self.note} if self.note else out


def _score(model: nn.Module, val: Split, task: TaskInfo) -> tuple[str, float]:
    metrics = evaluate(model, val, task)
    if task.kind == "segmentation":
        return "val_dice", -float(metrics["dice"])        # lower is better below
    return "val_loss", float(metrics["loss"])


def finetune(model: nn.Module, train: Split, val: Split | None, task: TaskInfo, cfg: RunConfig,
             *, epochs: int, seed: int, patience: int = 0) -> Finetuned:
    """Fine-tune ``model`` in place (module docstring); it ends holding the kept epoch's
    weights. ``patience`` > 0 stops after that many epochs in a row without a better score."""
    if val is None or len(val) == 0:
        return Finetuned(0, 0, "", note=NO_VAL)
    # Not DP-SGD, and nothing of it leaves: the loss is the plain one of the site's own labels
    # (under dp='sample' a logit-adjusted loss would otherwise ask for the noised prior).
    cfg = cfg.replace(dp="off")
    criterion, best = _score(model, val, task)
    scores, best_epoch, best_state, since, done = {0: best}, 0, copy.deepcopy(
        model.state_dict()), 0, 0
    for e in range(1, epochs + 1):
        train_local(model, train, task, cfg, epochs=1, seed=seed + e * EPOCH_SEED,
                    window=EpochWindow(start=e - 1, total=epochs))
        done = e
        _, value = _score(model, val, task)
        scores[e] = value
        if value < best:
            best, best_epoch, best_state, since = value, e, copy.deepcopy(model.state_dict()), 0
        else:
            since += 1
        if patience and since >= patience:
            break
    model.load_state_dict(best_state)
    if criterion == "val_dice":
        scores = {e: -v for e, v in scores.items()}
    return Finetuned(best_epoch, done, criterion, scores)
