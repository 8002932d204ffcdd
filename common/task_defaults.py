"""Defaults that depend on the task, filled in at the command line for options not given.

Classification gets the recipe of docs/recipes.md (width, batch, lr, weight decay, warm-up +
cosine schedule, logit-adjusted cross-entropy; no augmentation: it hurt at these budgets);
under dp='sample' its own, `DP_CLASSIFICATION_RECIPE`. The logit-adjusted loss is what keeps
FedAvg off the majority class under label skew (5 Dirichlet(0.5) PneumoniaMNIST sites, 10
rounds: val balanced accuracy 0.500 with plain CE, 0.934 with it; pooled it changes nothing,
0.961 vs 0.962). With RunConfig's own defaults (ResNet, SGD at lr 0.02, plain cross-entropy,
batch 16) a U-Net settles on "all background" when lesions cover a few percent of the pixels;
these settings learn on the synthetic data (README, Segmentation). 3D lesions are about 1% of a
volume, where class-weighted CE learns and Dice+CE was not measured. Under sample-level DP
class weights would come from the site's private voxel counts
(`common.training.losses.check_dp_loss` refuses them), so there the 3D default is Dice+CE,
whose Dice term copes with the imbalance without them.
"""

from __future__ import annotations

from typing import Any, Mapping

from common.config import RunConfig

# The classification recipe (docs/recipes.md: chosen on the validation splits of PneumoniaMNIST
# and AdrenalMNIST3D only, bench/recipes.py reproduces the table), one for 2D and 3D: a MedMNIST
# file's dimensionality is only known once it is read. Not under dp='sample': there
# the batch size and learning rate set the privacy plan, and the DP defaults are their own.
# (bench/dp_recipes.py, docs/recipes.md "Under --dp sample": pooled, at epsilon 8, no
# candidate clearly beat RunConfig's own defaults; federated it is another matter, below.)
CLASSIFICATION_RECIPE: dict[str, Any] = {
    "width": 32, "batch_size": 64, "lr": 0.01, "weight_decay": 5e-4, "lr_schedule": "cosine",
    "warmup_fraction": 0.1, "loss": "logit_adjusted",
}

# Under dp='sample': FedAvg over 5 Dirichlet(0.5) PneumoniaMNIST sites at epsilon 8, 5 rounds,
# scored on the VAL split (docs/recipes.md "Under --dp sample", federated): RunConfig's own
# defaults (batch 16, lr 0.02, constant) reach val AUC 0.727 / 0.814 (seeds 0 / 1) and call
# every case "pneumonia"; batch 64, lr 0.1, cosine 0.948 / -, with the logit-adjusted loss
# (its prior the site's noised class counts) 0.948 / 0.968. Width, clipping and epochs stay
# RunConfig's: at 10 rounds (bench/dp_federated.py, docs/recipes.md) lr 0.05 / 0.2, batch 128,
# warm-up, 4 local epochs, width 32, weight decay 5e-4 and augmentation (flips + shifts: val AUC
# 0.83; intensity: level) did not beat these on val over 2 seeds.
DP_CLASSIFICATION_RECIPE: dict[str, Any] = {
    "batch_size": 64, "lr": 0.1, "lr_schedule": "cosine", "loss": "logit_adjusted",
}

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "segmentation": {"model": "unet", "optimizer": "adam", "lr": 0.01, "batch_size": 8,
                     "loss": "dice_ce"},
    "classification": CLASSIFICATION_RECIPE,
}
TASK_DEFAULTS_3D: dict[str, dict[str, Any]] = {"segmentation": {"loss": "weighted_ce"}}
TASK_DEFAULTS_3D_DP: dict[str, dict[str, Any]] = {"segmentation": {"loss": "dice_ce"}}


def with_task_defaults(given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`given` (options set on the command line) plus the task's own defaults for the options it
    leaves out; also returns what was filled in, so the command can say so."""
    if given.get("resume"):          # a resumed run keeps its own settings, defaults included
        return dict(given), {}
    task = str(given.get("task", RunConfig.task))
    private = str(given.get("dp", RunConfig.dp)) == "sample"
    if task == "classification" and private:
        preset = dict(DP_CLASSIFICATION_RECIPE)
    else:
        preset = dict(TASK_DEFAULTS.get(task, {}))
    if int(given.get("spatial_dims", RunConfig.spatial_dims)) == 3:
        preset.update((TASK_DEFAULTS_3D_DP if private else TASK_DEFAULTS_3D).get(task, {}))
    filled = {k: v for k, v in preset.items() if k not in given}
    return {**given, **filled}, filled


def describe_task_defaults(task: str, filled: Mapping[str, Any]) -> str:
    """One line naming the task defaults a command used ('' if none)."""
    if not filled:
        return ""
    shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
    return f"fedclinic: {task} defaults for options not given: {shown} (give any to override)"
