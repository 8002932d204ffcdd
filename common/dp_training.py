"""Sample-level DP-SGD for local training at a site (Opacus), protecting each patient record.

One call of `train_local_dp` runs exactly the DP-SGD schedule a
`common.privacy.planner.PrivacyPlan` accounts for one round: ``steps`` logical batches, each
drawn by Poisson sampling (every record included independently with probability
``sample_rate``), per-sample gradients clipped to ``cfg.max_grad_norm``, Gaussian noise of std
``noise_multiplier * max_grad_norm`` added to their sum, which is divided by Opacus' expected
batch size ``int(n * sample_rate)``. Logical batches larger than `MAX_PHYSICAL_BATCH` are cut
into physical batches by Opacus' `BatchMemoryManager` (the step is taken after the last one), so
memory stays bounded whatever the sampling draws.

No accountant lives here: the result carries ``(noise_multiplier, sample_rate, steps)`` for the
caller's `common.privacy.ledger.PrivacyLedger`. Randomness (sampling and noise) comes from
torch generators seeded from ``seed`` (Opacus ``secure_mode=False``): runs are reproducible, and
the noise is not hardened against floating-point attacks, which suits simulation, not deployment.

Speed (bench/dp_overhead.py): Opacus' hook mode, plus two process-level savings that leave the
results unchanged: `retain_freed_memory` (glibc keeps freed per-sample-gradient buffers instead
of unmapping them) and `_store_grad_sample` (no zero-filled copy of each per-sample gradient).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import platform
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import opacus.grad_sample.grad_sample_module as _opacus_gsm
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from common.config import GRAD_SAMPLE_MODES, ConfigError, RunConfig
from common.datasets.base import Split, TaskInfo
from common.training.batches import batch_source, model_device, slice_depth
from common.training.checks import check_split
from common.training.local import prepare_global
from common.training.losses import training_loss
from common.training.optimiser import make_optimizer

MAX_PHYSICAL_BATCH = 64   # samples per forward/backward; larger Poisson batches are split
PROBE_SAMPLES = 2         # batch on which a non-default grad-sample mode is checked against hooks
MAX_MODE_DEVIATION = 1e-4  # relative per-sample-gradient difference tolerated (float32 noise ~1e-6)

# Layers whose per-sample gradients torch's ExpandedWeights ("ew") implements; anything else
# with parameters (e.g. ConvTranspose, used by the U-Net's decoder) makes it fail.
_EW_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Embedding)
# Auto picks Opacus' hook mode for every model. In bench/dp_overhead.py (CPU, batch 64;
# bench/results/dp_overhead.json) it was the fastest mode, or tied with the fastest, for
# ResNet-18 at 28 and 64 px and for the U-Net: ExpandedWeights ("ew") tied with it at 28 px on
# a quiet machine but took up to 2.7x its time at 64 px, functorch 1.1-1.5x. It is also the only
# mode that ran on every registry model (ew fails on the U-Net's ConvTranspose and on DenseNet).
# Per-sample gradients of all three agreed to ~1e-7 relative where they ran
# (tests/test_dp_training.py checks ew and functorch against hooks, and hooks against a loop).
AUTO_MODE = "hooks"


@dataclass(frozen=True)
class DPTrainResult:
    loss: float              # mean per-sample data loss over the last epoch's sampled records
    num_samples: int         # training samples at the site (the FedAvg weight)
    steps: int               # logical DP-SGD optimiser steps taken (what the ledger records)
    seconds: float           # wall-clock time of the training loop
    noise_multiplier: float  # sigma used for every step
    sample_rate: float       # Poisson sampling probability q used for every step
    grad_sample_mode: str    # Opacus per-sample-gradient mode actually used


# --------------------------------------------------------------------------- model checks

def _first_sentence(text: str) -> str:
    head = text.strip().split(". ")[0].rstrip(".")
    return head + "."


def check_dp_model(model: nn.Module) -> None:
    """Raise ConfigError unless Opacus accepts ``model`` for DP-SGD.

    Runs Opacus' ``ModuleValidator`` (in training mode, where DP-SGD runs it; the model's mode
    is restored) and names every offending layer by its module path and type. Opacus only looks
    at layers with trainable parameters; we also check parameter-free ones, because a BatchNorm
    without affine weights still mixes the records of a batch.
    """
    was_training = model.training
    model.train()
    try:
        errors = list(ModuleValidator.validate(model, strict=False))
        named = []
        for name, module in model.named_modules():
            validator = ModuleValidator.VALIDATORS.get(type(module))
            for err in validator(module) if validator else []:
                named.append(f"{name or '<root>'} ({type(module).__name__}): "
                             f"{_first_sentence(str(err))}")
    finally:
        model.train(was_training)
    if not errors and not named:
        return
    listed = named or [_first_sentence(str(err)) for err in errors]
    raise ConfigError(f"model is not compatible with DP-SGD ({len(listed)} layer problem(s)): "
                      + "; ".join(listed) + " Use norm=group or instance (RunConfig.norm), "
                      "whose statistics stay within one sample.")


def _per_sample_grads(model: nn.Module, mode: str, example: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample gradients of ``mean(output^2)`` computed by Opacus in ``mode``."""
    with _wrapped(model, mode) as wrapped:
        wrapped(example).float().pow(2).mean().backward()
        return [p.grad_sample.detach().clone() for p in model.parameters() if p.requires_grad]


def mode_deviation(model: nn.Module, mode: str, example: torch.Tensor) -> float:
    """Largest difference between ``mode``'s and the hook mode's per-sample gradients of
    ``mean(model(example)^2)``, relative to the largest hook-mode entry (~1e-6 when correct).

    Raises whatever Opacus or torch raise when ``mode`` cannot handle the model. The global RNG
    is forked, the model's train/eval mode restored and its gradients cleared.
    """
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[example.device] if example.is_cuda else []):
            torch.manual_seed(0)
            reference = _per_sample_grads(model, "hooks", example)
            torch.manual_seed(0)
            got = _per_sample_grads(model, mode, example)
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
    scale = max((float(r.abs().max()) for r in reference), default=0.0) or 1.0
    return max((float((g - r).abs().max()) for g, r in zip(got, reference)), default=0.0) / scale


def _probe_mode(model: nn.Module, mode: str, example: torch.Tensor) -> None:
    """ConfigError unless ``mode`` runs on ``model`` and agrees with the hook mode on ``example``."""
    try:
        deviation = mode_deviation(model, mode, example)
    except Exception as exc:  # any failure inside Opacus/torch means the mode is unusable
        raise ConfigError(f"grad_sample_mode={mode!r} does not work for this model "
                          f"({type(exc).__name__}: {_first_sentence(str(exc))}); use 'hooks' or "
                          f"'auto'") from None
    if deviation > MAX_MODE_DEVIATION:
        raise ConfigError(f"grad_sample_mode={mode!r} gives per-sample gradients that differ "
                          f"from Opacus' hook mode by {deviation:.2g} (relative) on this model; "
                          f"use 'hooks' or 'auto'")


def pick_grad_sample_mode(model: nn.Module, requested: str,
                          example: torch.Tensor | None = None) -> str:
    """The Opacus per-sample-gradient mode to use for ``model``.

    ``auto`` gives `AUTO_MODE` (``hooks``: fastest on CPU and correct on every registry model).
    An explicit ``hooks`` is returned as is. ``ew`` is refused for layers ExpandedWeights cannot
    handle; ``ew`` and ``functorch``, when an ``example`` input batch is given, are also run on
    its first `PROBE_SAMPLES` samples and must reproduce the hook mode's per-sample gradients
    (ExpandedWeights, for one, fails on DenseNet's concatenated features).
    """
    if requested not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode={requested!r}: unknown; expected one of "
                          f"{', '.join(GRAD_SAMPLE_MODES)}")
    if requested == "auto":
        return AUTO_MODE
    if requested == "ew":
        bad = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
               if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, _EW_LAYERS)]
        if bad:
            raise ConfigError(f"grad_sample_mode='ew': torch ExpandedWeights has no per-sample "
                              f"gradient for {', '.join(bad)}; use 'hooks', 'functorch' or 'auto'")
    if requested != "hooks" and example is not None:
        _probe_mode(model, requested, example[:PROBE_SAMPLES])
    return requested


# --------------------------------------------------------------------------- Opacus wrapping

def _clear_dp_state(model: nn.Module) -> None:
    """Remove what Opacus leaves on parameters so the model pickles and wraps again cleanly."""
    for p in model.parameters():
        for attr in ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample",
                     "_norm_sample"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None


_opacus_store = _opacus_gsm.create_or_accumulate_grad_sample
_store_users = 0


def _store_grad_sample(*, param: torch.Tensor, grad_sample: torch.Tensor,
                       max_batch_len: int) -> None:
    """Opacus' per-layer store of per-sample gradients, without its zero-filled copy.

    Opacus accumulates into a zero-filled ``max_batch_len`` buffer (for layers run several
    times per forward pass); for the usual single call that buffer equals ``grad_sample``, so we
    keep the tensor itself: two fewer passes over every per-sample gradient (DP step 2.7x ->
    ~2.2x the non-DP one for ResNet-18 at 28 px). Repeated calls add out of place, so the
    first tensor is never modified.
    """
    if not param.requires_grad:
        return
    current = getattr(param, "_current_grad_sample", None)
    if current is None and grad_sample.shape[0] == max_batch_len:
        param._current_grad_sample = grad_sample
    elif current is None:
        _opacus_store(param=param, grad_sample=grad_sample, max_batch_len=max_batch_len)
    else:
        total = current.clone()
        total[: grad_sample.shape[0]] += grad_sample
        param._current_grad_sample = total


@contextmanager
def _direct_grad_samples() -> Iterator[None]:
    """Route Opacus' hook mode through `_store_grad_sample` while any model is wrapped."""
    global _store_users
    if _store_users == 0:
        _opacus_gsm.create_or_accumulate_grad_sample = _store_grad_sample
    _store_users += 1
    try:
        yield
    finally:
        _store_users -= 1
        if _store_users == 0:
            _opacus_gsm.create_or_accumulate_grad_sample = _opacus_store


@contextmanager
def _wrapped(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    wrapped = prepare_module(model, mode, batch_first=True, loss_reduction="mean")
    try:
        with warnings.catch_warnings(), _direct_grad_samples():
            # Opacus' backward hook on the first layer, whose input needs no gradient: harmless.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield wrapped
    finally:
        wrapped.to_standard_module()   # removes the hooks and Opacus' parameter attributes
        _clear_dp_state(model)


@contextmanager
def dp_wrapped(model: nn.Module, optimizer: torch.optim.Optimizer, *, mode: str,
               noise_multiplier: float, max_grad_norm: float, expected_batch_size: int,
               noise_generator: torch.Generator | None = None
               ) -> Iterator[tuple[nn.Module, DPOptimizer]]:
    """``(per-sample-gradient module, DPOptimizer)`` around ``model`` and ``optimizer``.

    The module computes per-sample gradients of a mean-reduced loss; the optimiser clips each to
    ``max_grad_norm``, adds N(0, (noise_multiplier * max_grad_norm)^2) noise to their sum and
    divides by ``expected_batch_size``. On exit the caller's ``model`` object (whose parameters
    were trained in place) is left as a plain module: hooks and Opacus attributes removed, so its
    ``state_dict`` keys are unchanged and it can be wrapped again.
    """
    with _wrapped(model, mode) as wrapped:
        yield wrapped, DPOptimizer(optimizer, noise_multiplier=noise_multiplier,
                                   max_grad_norm=max_grad_norm,
                                   expected_batch_size=expected_batch_size,
                                   loss_reduction="mean", generator=noise_generator,
                                   secure_mode=False)


# --------------------------------------------------------------------------- memory

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc mallopt parameter numbers (malloc.h)
_malloc_tuned = False


def retain_freed_memory() -> bool:
    """Make glibc's malloc reuse freed heap memory instead of unmapping it; True when applied.

    DP-SGD materialises per-sample gradients: for ResNet-18 (width 16, batch 64) tens of MB
    per layer and step. glibc serves blocks above 32 MB with fresh ``mmap`` pages and unmaps
    them on ``free``, so every step pays a page fault per 4 kB again; in our VM a batched matmul
    writing a fresh 38 MB block took 5x as long as one writing reused memory, and the DP step was
    3.3x the non-DP step instead of 2.6x (ResNet-18, 28x28; bench/dp_overhead.py). This turns off
    mmap'd chunks and keeps up to 1 GiB of free heap for reuse. It is process-wide and stays on (the process keeps
    its peak heap); a no-op outside glibc. Called by `train_local_dp`.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    except (OSError, AttributeError):
        return False
    _malloc_tuned = ok
    return ok


# --------------------------------------------------------------------------- training

def default_steps(epochs: int, sample_rate: float) -> int:
    """Logical steps of ``epochs`` epochs at ``sample_rate``: ``epochs * round(1 / q)``.

    `common.privacy.planner.plan` uses ``q = 1 / steps_per_epoch``, so this equals its
    ``steps_per_round`` exactly (rounding, not Opacus' ``int(1 / q)``, which can lose a step to
    floating point).
    """
    return epochs * max(1, round(1 / sample_rate))


class _Indices(torch.utils.data.Dataset):
    """Dataset of record indices: batches are cut from the numpy split, not collated per item."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate_indices(batch: list[int]) -> np.ndarray:
    return np.asarray(batch, dtype=np.int64)   # also fine for an empty Poisson batch


def _per_sample_loss(loss_fn: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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


def _seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for Poisson sampling and for the noise."""
    a, b = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint32)
    return int(a), int(b)


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


def _empty_grad_samples(params: list[nn.Parameter]) -> None:
    """Per-sample gradients of an empty Poisson batch: DPOptimizer then adds noise only."""
    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def train_local_dp(model: nn.Module, split: Split, task: TaskInfo, cfg: RunConfig, *, epochs: int,
                   seed: int, noise_multiplier: float, sample_rate: float,
                   steps: int | None = None, proximal_mu: float = 0.0,
                   global_params: list[torch.Tensor] | None = None) -> DPTrainResult:
    """Train ``model`` in place on ``split`` with DP-SGD; see the module docstring.

    ``steps`` logical steps are taken (default `default_steps` ``(epochs, sample_rate)``, equal
    to the plan's ``steps_per_round``); pass the plan's ``noise_multiplier`` and ``sample_rate``
    and record the returned triple in the site's ledger. The optimiser and loss are
    ``cfg``'s (`make_optimizer`, `training_loss`); with ``cfg.loss='weighted_ce'`` the class
    weights come from the site's labels (masks), a data-dependent choice outside the DP guarantee.

    FedProx: the gradient ``mu * (w - w_global)`` of the proximal term involves no record, so it
    is added after clipping and noising (post-processing, no privacy cost).

    The same seed and initial weights give identical weights. The reported loss is the mean
    per-sample loss over the records sampled in the last epoch's steps (the last
    ``steps / epochs``), a training diagnostic that is not privatised.

    Segmentation: a record is one image or volume with its mask (3D volumes in slice mode are
    refused: a slice is not a patient); the seg losses are per-record means, and ``cfg.augment``
    transforms each record on its own, so neither couples the records of a batch.
    """
    check_split(split, task, "train_local_dp")
    if slice_depth(split, task) > 1:
        raise ConfigError("train_local_dp: a 2D network on 3D volumes (volume_mode='slices') "
                          "would make every slice a DP-SGD record, but the patient is the volume; "
                          "use volume_mode=3d for sample-level DP")
    n = len(split)
    _check_dp_args(n, epochs, noise_multiplier, sample_rate, steps, proximal_mu)
    total = default_steps(epochs, sample_rate) if steps is None else steps
    model.train()
    check_dp_model(model)
    retain_freed_memory()
    device = model_device(model)
    example = torch.rand((PROBE_SAMPLES, *split.images.shape[1:]),
                         generator=torch.Generator().manual_seed(seed)).to(device)
    mode = pick_grad_sample_mode(model, cfg.grad_sample_mode, example)
    use_prox = proximal_mu > 0 and global_params is not None
    anchor = prepare_global(model, global_params) if use_prox else []
    prox = [(p, g) for p, g in zip(model.parameters(), anchor) if p.requires_grad]
    loss_fn = _per_sample_loss(training_loss(cfg, task, split).to(device))
    _, fetch = batch_source(split, task, cfg, device, seed)   # + augmentation (segmentation)
    sample_seed, noise_seed = _seeds(seed)
    loader = DataLoader(_Indices(n), collate_fn=_collate_indices,
                        batch_sampler=UniformWithReplacementSampler(
                            num_samples=n, sample_rate=sample_rate, steps=total,
                            generator=torch.Generator().manual_seed(sample_seed)))
    last_epoch_from = (epochs - 1) * total // epochs     # first logical step of the last epoch
    params = [p for p in model.parameters() if p.requires_grad]
    fork_devices = [device] if device.type == "cuda" else []
    start, taken, sums = time.perf_counter(), 0, np.zeros((2, 2))  # [all, last epoch] x [loss, n]
    with torch.random.fork_rng(devices=fork_devices), dp_wrapped(
            model, make_optimizer(cfg, params), mode=mode, noise_multiplier=noise_multiplier,
            max_grad_norm=cfg.max_grad_norm, expected_batch_size=int(n * sample_rate),
            noise_generator=torch.Generator(device).manual_seed(noise_seed)) as (net, optimizer):
        torch.manual_seed(seed)
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=MAX_PHYSICAL_BATCH,
                                optimizer=optimizer) as batches:
            for index in batches:
                if len(index) == 0:
                    _empty_grad_samples(params)
                else:
                    inputs, targets = fetch(index)
                    loss = loss_fn(net(inputs), targets)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"train_local_dp: loss became {loss.item()} at "
                                                 f"step {taken + 1}; lower lr={cfg.lr}")
                    loss.backward()
                    batch_sum = (loss.item() * len(index), len(index))
                    sums[0] += batch_sum
                    if taken >= last_epoch_from:
                        sums[1] += batch_sum
                if optimizer.pre_step():          # clip, accumulate; at a batch's end: noise
                    if prox:
                        for p, g in prox:
                            p.grad.add_(p.detach() - g, alpha=proximal_mu)
                    optimizer.original_optimizer.step()
                    taken += 1
                optimizer.zero_grad(set_to_none=True)
    if taken != total:
        raise RuntimeError(f"train_local_dp: took {taken} DP-SGD steps but the plan assumes "
                           f"{total}; the privacy accounting would be wrong")
    row = sums[1] if sums[1, 1] else sums[0]
    loss_value = row[0] / row[1] if row[1] else float("nan")
    return DPTrainResult(loss=float(loss_value), num_samples=n, steps=taken,
                         seconds=time.perf_counter() - start,
                         noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate),
                         grad_sample_mode=mode)
