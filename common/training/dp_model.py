"""Whether a model can train with DP-SGD, and which Opacus per-sample-gradient mode to use."""

from __future__ import annotations

import torch
from opacus.validators import ModuleValidator
from torch import nn

from common.config import GRAD_SAMPLE_MODES, ConfigError
from common.training.dp_wrapping import grad_sample_wrapped

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
    with grad_sample_wrapped(model, mode) as wrapped:
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
