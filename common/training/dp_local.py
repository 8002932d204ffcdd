"""Sample-level DP-SGD for local training at a site (Opacus), protecting each patient record.

One call of `train_local_dp` runs exactly the DP-SGD schedule a
`common.privacy.planner.PrivacyPlan` accounts for one round: ``steps`` logical batches, each
drawn by Poisson sampling (every record included independently with probability
``sample_rate``, `common.training.poisson_sampling`), per-sample gradients clipped to
``cfg.max_grad_norm``, Gaussian noise of std ``noise_multiplier * max_grad_norm`` added to their
sum, which is divided by Opacus' expected batch size ``int(n * sample_rate)``. Logical batches
larger than `MAX_PHYSICAL_BATCH` are cut into physical batches by Opacus' `BatchMemoryManager`
(the step is taken after the last one), so memory stays bounded whatever the sampling draws.

No accountant lives here: the result carries ``(noise_multiplier, sample_rate, steps)`` for the
caller's `common.privacy.ledger.PrivacyLedger`.

Randomness (threat model: the coordinator is honest-but-curious and may send any configuration,
outsiders see the network, only the site's machine is trusted). The guarantee needs the Poisson
sampling and the noise to be unknown to the adversary:
- ``secure=True`` (deployment): both come from `common.training.secure_random.CsprngSource`
  (ChaCha20 keyed from the OS CSPRNG, never from ``seed``), the noise hardened against the
  floating-point attack as Opacus' ``secure_mode`` does (sum of four normals / 2). A replay
  with the public seed does not reproduce the released weights. ``seed`` still drives the
  grad-sample-mode probe inputs, augmentation and the global torch RNG (dropout): none of them is
  privacy-relevant, since the guarantee holds given any data-independent randomness of that kind.
  Cost (bench/secure_noise.py): about 8 % of a ResNet-18 step at 28 px, batch 64.
- ``secure=False`` (simulation): both come from torch generators seeded from ``seed`` (Opacus
  ``secure_mode=False``): runs are reproducible, but anyone who knows the seed (the server
  chooses it) can replay the noise and cancel it, so the guarantee holds only against parties
  who do not know the seed: fine for a simulation, void in deployment.

The optimiser and loss are ``cfg``'s (`make_optimizer`, `training_loss`), the learning rate of
logical step ``k`` of ``steps`` follows ``cfg.lr_schedule`` at ``epochs * (k + 1/2) / steps``
epochs into the call (`common.training.schedule`; public, data-independent); with
``cfg.loss='weighted_ce'`` the class weights come from the site's labels (masks), a
data-dependent choice outside the DP guarantee. FedProx: the gradient ``mu * (w - w_global)`` of
the proximal term involves no record, so it is added after clipping and noising
(post-processing, no privacy cost). ``cfg.dp_class_balance`` weights each record's clipped
gradient by its class, from the noised class counts (`common.training.balanced_clipping`;
weights <= 1, same sensitivity). ``cfg.aug_multiplicity`` K > 1 averages each record's gradient
over K augmented copies before clipping (`common.training.aug_multiplicity`; same sensitivity,
K times the compute; physical batches then hold ``MAX_PHYSICAL_BATCH // K`` records).

Segmentation: a record is one image or volume with its mask (3D volumes in slice mode are
refused: a slice is not a patient); the seg losses are per-record means, and ``cfg.augment``
transforms each record on its own, so neither couples the records of a batch.

Speed (bench/dp_overhead.py): Opacus' hook mode (`common.training.dp_model.AUTO_MODE`), plus two
process-level savings that leave the results unchanged: `retain_freed_memory`
(`common.training.memory`) and the direct store of per-sample gradients while a model is wrapped
(`common.training.dp_wrapping`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from common.config import ConfigError, RunConfig
from common.datasets.base import Split, TaskInfo
from common.training.aug_multiplicity import average_copies, repeat_index
from common.training.balanced_clipping import class_balance_weights, weight_clipped_grad_samples
from common.training.batches import BatchFn, batch_source, model_device, slice_depth
from common.training.checks import check_split
from common.training.dp_model import PROBE_SAMPLES, check_dp_model, pick_grad_sample_mode
from common.training.dp_wrapping import dp_wrapped
from common.training.local import fedprox_anchor
from common.training.losses import training_loss
from common.training.memory import retain_freed_memory
from common.training.optimiser import make_optimizer
from common.training.poisson_sampling import poisson_loader
from common.training.schedule import EpochWindow, StepSchedule, step_schedule
from common.training.secure_random import CsprngSource

MAX_PHYSICAL_BATCH = 64   # samples per forward/backward; larger Poisson batches are split

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DPTrainResult:
    loss: float              # mean per-sample data loss over the last epoch's sampled records
    num_samples: int         # training samples at the site (the FedAvg weight)
    steps: int               # logical DP-SGD optimiser steps taken (what the ledger records)
    seconds: float           # wall-clock time of the training loop
    noise_multiplier: float  # sigma used for every step
    sample_rate: float       # Poisson sampling probability q used for every step
    grad_sample_mode: str    # Opacus per-sample-gradient mode actually used
    secure: bool = False     # sampling and noise from the OS-keyed CSPRNG (not from the seed)


def default_steps(epochs: int, sample_rate: float) -> int:
    """Logical steps of ``epochs`` epochs at ``sample_rate``: ``epochs * round(1 / q)``.

    `common.privacy.planner.plan` uses ``q = 1 / steps_per_epoch``, so this equals its
    ``steps_per_round`` exactly (rounding, not Opacus' ``int(1 / q)``, which can lose a step to
    floating point).
    """
    return epochs * max(1, round(1 / sample_rate))


@dataclass(frozen=True)
class _Schedule:
    """The checked arguments of one `train_local_dp` call: what it runs and accounts."""
    n: int                   # records at the site
    epochs: int
    steps: int               # logical steps to take
    sample_rate: float
    noise_multiplier: float
    seed: int                # noise/sampling only when not secure; augmentation, probes always
    proximal_mu: float
    secure: bool = False     # sampling and noise from a CsprngSource
    window: EpochWindow | None = None   # where the call sits in the run's lr schedule

    @property
    def last_epoch_from(self) -> int:
        """The first logical step of the last epoch (the reported loss averages from here)."""
        return (self.epochs - 1) * self.steps // self.epochs

    @property
    def seeds(self) -> tuple[int, int]:
        """Independent seeds for Poisson sampling and for the noise."""
        a, b = np.random.SeedSequence(self.seed).generate_state(2, dtype=np.uint32)
        return int(a), int(b)


@dataclass(frozen=True)
class _DPLoop:
    """The fixed parts of one `train_local_dp` loop (the model wrapped by Opacus)."""
    schedule: _Schedule
    net: nn.Module                   # per-sample-gradient module around the caller's model
    optimizer: DPOptimizer
    params: list[nn.Parameter]       # trainable parameters
    loss_fn: LossFn
    fetch: BatchFn
    prox: list[tuple[nn.Parameter, torch.Tensor]]   # (parameter, global weights) under FedProx
    mode: str                        # Opacus grad-sample mode
    lr: float                        # named in the error when the loss diverges
    started: float                   # time.perf_counter() when the loop began
    lr_schedule: StepSchedule        # the learning rate of every logical step
    class_weights: torch.Tensor | None = None   # --dp-class-balance: weight per class, on device
    copies: int = 1                  # --aug-multiplicity: augmented copies per record and step


def _per_sample_loss(loss_fn: nn.Module) -> LossFn:
    """``loss_fn`` as a plain mean over samples of per-sample losses.

    Opacus needs the batch loss to be the mean of per-sample terms. Class-weighted CE with
    ``reduction='mean'`` divides by the batch's summed weights instead, which would couple the
    records of a batch (and break the sensitivity bound), so it is recomputed per sample. The
    segmentation losses (`common.segmentation.make_seg_loss`) already are such means.
    """
    if isinstance(loss_fn, nn.CrossEntropyLoss) and loss_fn.weight is not None:
        weight = loss_fn.weight
        return lambda out, y: F.cross_entropy(out, y, weight=weight, reduction="none").mean()
    return loss_fn


def _check_dp_split(split: Split, task: TaskInfo) -> None:
    check_split(split, task, "train_local_dp")
    if slice_depth(split, task) > 1:
        raise ConfigError("train_local_dp: a 2D network on 3D volumes (volume_mode='slices') "
                          "would make every slice a DP-SGD record, but the patient is the volume; "
                          "use volume_mode=3d for sample-level DP")


def _check_dp_args(n: int, epochs: int, noise_multiplier: float, sample_rate: float,
                   steps: int | None, proximal_mu: float) -> None:
    if epochs < 1:
        raise ValueError(f"train_local_dp: epochs={epochs}; expected >= 1")
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise ValueError(f"train_local_dp: sample_rate={sample_rate!r}; expected 0 < q <= 1 "
                         f"(from common.privacy.planner.plan)")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"train_local_dp: noise_multiplier={noise_multiplier!r}; expected a "
                         f"finite number >= 0")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"train_local_dp: steps={steps!r}; expected an integer >= 1 or None")
    if proximal_mu < 0:
        raise ValueError(f"train_local_dp: proximal_mu={proximal_mu}; expected >= 0")
    if int(n * sample_rate) < 1:
        raise ConfigError(f"train_local_dp: the split is too small for DP-SGD: {n} samples at "
                          f"sample_rate={sample_rate:.4g} give an expected batch of "
                          f"{n * sample_rate:.3g} < 1 sample; use a larger site or batch_size")


def _prepare_model(model: nn.Module, split: Split, cfg: RunConfig, seed: int) -> str:
    """Put ``model`` in training mode, check it for DP-SGD and pick its grad-sample mode (a
    non-default mode is probed on seeded random inputs of the split's shape)."""
    model.train()
    check_dp_model(model)
    retain_freed_memory()
    example = torch.rand((PROBE_SAMPLES, *split.images.shape[1:]),
                         generator=torch.Generator().manual_seed(seed)).to(model_device(model))
    return pick_grad_sample_mode(model, cfg.grad_sample_mode, example)


def _noise(schedule: _Schedule, device: torch.device) -> dict:
    """`dp_wrapped`'s noise argument: a CSPRNG source (secure) or a generator seeded from the
    schedule's noise seed."""
    if schedule.secure:
        return {"noise_source": CsprngSource()}
    return {"noise_generator": torch.Generator(device).manual_seed(schedule.seeds[1])}


def _loader(schedule: _Schedule) -> DataLoader:
    """The schedule's Poisson batches: from a CSPRNG source (secure) or its sampling seed."""
    if schedule.secure:
        return poisson_loader(schedule.n, schedule.sample_rate, schedule.steps, None,
                              source=CsprngSource())
    return poisson_loader(schedule.n, schedule.sample_rate, schedule.steps, schedule.seeds[0])


def _class_weights(cfg: RunConfig, task: TaskInfo, prior_counts: np.ndarray | None,
                   device: torch.device) -> torch.Tensor | None:
    """``cfg.dp_class_balance``'s weight per class (`common.training.balanced_clipping`), or
    None when it is off."""
    if cfg.dp_class_balance == 0:
        return None
    if task.kind in ("segmentation", "multilabel"):
        raise ConfigError(f"dp_class_balance weights each record by its one class; a "
                          f"{task.kind} task has none: drop --dp-class-balance")
    return class_balance_weights(prior_counts, cfg.dp_class_balance).to(device)


@contextmanager
def _dp_loop(model: nn.Module, split: Split, task: TaskInfo, cfg: RunConfig,
             schedule: _Schedule, global_params: list[torch.Tensor] | None,
             prior_counts: np.ndarray | None = None) -> Iterator[_DPLoop]:
    """Set ``model`` up for DP-SGD and yield the loop's fixed parts, with ``model`` wrapped by
    Opacus inside a forked global RNG (the caller's RNG state is left untouched)."""
    mode = _prepare_model(model, split, cfg, schedule.seed)
    device = model_device(model)
    anchor = fedprox_anchor(model, schedule.proximal_mu, global_params) or []
    prox = [(p, g) for p, g in zip(model.parameters(), anchor) if p.requires_grad]
    loss_fn = _per_sample_loss(training_loss(cfg, task, split, prior_counts).to(device))
    _, fetch = batch_source(split, task, cfg, device, schedule.seed)   # + augmentation (seg)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = _class_weights(cfg, task, prior_counts, device)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), dp_wrapped(
            model, make_optimizer(cfg, params), mode=mode,
            noise_multiplier=schedule.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
            expected_batch_size=int(schedule.n * schedule.sample_rate), **_noise(schedule, device)
    ) as (net, optimizer):
        yield _DPLoop(schedule, net, optimizer, params, loss_fn, fetch, prox, mode, cfg.lr, started,
                      step_schedule(cfg, schedule.epochs, schedule.window), weights,
                      cfg.aug_multiplicity)


def _backward(loop: _DPLoop, index: np.ndarray, taken: int) -> tuple[float, int]:
    """Per-sample gradients of one non-empty physical batch; ``(loss sum, records)``."""
    inputs, targets = loop.fetch(repeat_index(index, loop.copies))
    loss = loop.loss_fn(loop.net(inputs), targets)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"train_local_dp: loss became {loss.item()} at "
                                 f"step {taken + 1}; lower lr={loop.lr}")
    loss.backward()
    if loop.copies > 1:
        average_copies(loop.params, loop.copies)
        targets = targets[::loop.copies]
    if loop.class_weights is not None:
        weight_clipped_grad_samples(loop.params, loop.class_weights[targets],
                                    loop.optimizer.max_grad_norm)
    return loss.item() * len(index), len(index)


def _empty_grad_samples(params: list[nn.Parameter]) -> None:
    """Per-sample gradients of an empty Poisson batch: DPOptimizer then adds noise only."""
    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def _optimiser_step(loop: _DPLoop, taken: int) -> int:
    """Clip and accumulate the physical batch; when it ends a logical batch, add the noise, the
    FedProx gradient and take the step (logical step ``taken``, at its scheduled lr). Returns
    the logical steps taken (0 or 1)."""
    stepped = loop.optimizer.pre_step()   # clip, accumulate; at a batch's end: noise
    if stepped:
        for p, g in loop.prox:
            p.grad.add_(p.detach() - g, alpha=loop.schedule.proximal_mu)
        at = loop.schedule.epochs * (taken + 0.5) / loop.schedule.steps
        loop.lr_schedule.apply_at(loop.optimizer.original_optimizer, at)
        loop.optimizer.original_optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return int(stepped)


class _Ema:
    """The exponential moving average of the trainable parameters over the logical steps
    (``decay`` per step, torch's `get_ema_multi_avg_fn`); `copy_to` puts it into the model.
    Post-processing of the DP-SGD iterates: it costs no privacy (De et al., 2022, "Unlocking
    high-accuracy differentially private image classification through scale")."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params = params
        self.average = [p.detach().clone() for p in params]
        self.update = get_ema_multi_avg_fn(decay)
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        self.update(self.average, [p.detach() for p in self.params], self.steps)

    def copy_to(self) -> None:
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.copy_(a)


def _run_steps(loop: _DPLoop, ema_decay: float = 0.0) -> tuple[int, np.ndarray]:
    """Every logical step of the schedule; ``(steps taken, [all, last epoch] x [loss sum, n])``.
    With ``ema_decay`` the parameters end as the moving average of the iterates (`_Ema`)."""
    loader = _loader(loop.schedule)
    taken, sums = 0, np.zeros((2, 2))
    ema = _Ema(loop.params, ema_decay) if ema_decay > 0 else None
    torch.manual_seed(loop.schedule.seed)
    physical = max(1, MAX_PHYSICAL_BATCH // loop.copies)   # records; x copies rows each
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical,
                            optimizer=loop.optimizer) as batches:
        for index in batches:
            if len(index) == 0:
                _empty_grad_samples(loop.params)
            else:
                batch_sum = _backward(loop, index, taken)
                sums[0] += batch_sum
                if taken >= loop.schedule.last_epoch_from:
                    sums[1] += batch_sum
            stepped = _optimiser_step(loop, taken)
            taken += stepped
            if ema is not None and stepped:
                ema.step()
    if ema is not None:
        ema.copy_to()
    return taken, sums


def _result(loop: _DPLoop, taken: int, sums: np.ndarray) -> DPTrainResult:
    """The result of a finished loop; RuntimeError unless it took the planned steps."""
    schedule = loop.schedule
    if taken != schedule.steps:
        raise RuntimeError(f"train_local_dp: took {taken} DP-SGD steps but the plan assumes "
                           f"{schedule.steps}; the privacy accounting would be wrong")
    row = sums[1] if sums[1, 1] else sums[0]
    loss_value = row[0] / row[1] if row[1] else float("nan")
    return DPTrainResult(loss=float(loss_value), num_samples=schedule.n, steps=taken,
                         seconds=time.perf_counter() - loop.started,
                         noise_multiplier=float(schedule.noise_multiplier),
                         sample_rate=float(schedule.sample_rate), grad_sample_mode=loop.mode,
                         secure=schedule.secure)


def train_local_dp(model: nn.Module, split: Split, task: TaskInfo, cfg: RunConfig, *, epochs: int,
                   seed: int, noise_multiplier: float, sample_rate: float,
                   steps: int | None = None, proximal_mu: float = 0.0,
                   global_params: list[torch.Tensor] | None = None,
                   secure: bool = False, window: EpochWindow | None = None,
                   prior_counts: np.ndarray | None = None) -> DPTrainResult:
    """Train ``model`` in place on ``split`` with DP-SGD; see the module docstring.

    ``steps`` logical steps are taken (default `default_steps` ``(epochs, sample_rate)``, equal
    to the plan's ``steps_per_round``); pass the plan's ``noise_multiplier`` and ``sample_rate``
    and record the returned triple in the site's ledger. FedProx applies when ``proximal_mu > 0``
    and ``global_params`` are given.

    ``secure=True`` draws the Poisson sampling and the noise from the OS-keyed CSPRNG (never
    from ``seed``): use it wherever the weights leave for a party that may know the seed. With
    ``secure=False`` the same seed and initial weights give identical weights.

    The reported loss is the mean per-sample loss over the records sampled in the last epoch's
    steps (the last ``steps / epochs``), a training diagnostic that is not privatised.

    ``window``: where this call sits in the run's learning-rate schedule (`train_local`).
    ``prior_counts``: the site's noised class counts, the prior of loss='logit_adjusted'
    (`common.training.losses.make_loss`).
    """
    _check_dp_split(split, task)
    if not isinstance(secure, bool):
        raise TypeError(f"train_local_dp: secure={secure!r}; expected True or False")
    n = len(split)
    _check_dp_args(n, epochs, noise_multiplier, sample_rate, steps, proximal_mu)
    schedule = _Schedule(n, epochs, default_steps(epochs, sample_rate) if steps is None else steps,
                         sample_rate, noise_multiplier, seed, proximal_mu, secure, window)
    with _dp_loop(model, split, task, cfg, schedule, global_params, prior_counts) as loop:
        taken, sums = _run_steps(loop, cfg.ema_decay)
    return _result(loop, taken, sums)
