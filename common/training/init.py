"""`--init-from PATH`: the initial weights of a run (federation and both baselines) from a model
file instead of a seeded random init: transfer learning from a public dataset.

Accepted files (read with ``torch.load(weights_only=True)``: tensors and plain values only, so a
file cannot run code): a fedclinic ``final_model.pt`` / ``best_model.pt`` / ``checkpoints/
latest.pt`` (a dict with ``state_dict``), or a plain torch state dict (name -> tensor; the
``module.`` / ``_module.`` prefixes of DataParallel and Opacus are dropped). Every tensor of the
network must be in the file with its shape, except the classification head when only the
number of classes differs: the head keeps the seeded random init of this run and the note says
so. Anything else is a `ConfigError` naming the file and the layers (missing, unexpected, or
with another shape), before any round starts.

Across dimensions (a 2D model starting a 3D run, or the reverse: the issue's "pretrain on one
modality, federate on the other"), the convolution kernels are converted as I3D does (Carreira
and Zisserman, 2017): a 2D kernel is repeated along the new depth axis and divided by its
length, a 3D kernel summed over depth. Either way a convolution gives the same output on an
input that is constant along depth (away from the zero padding at its first and last slices),
so the pretrained filters keep their meaning; every other
tensor (normalisation, head) has the same shape in both and is taken as it is.

The file is public to the federation (pretrained elsewhere, e.g. on a public dataset), so it
costs the sites no privacy; in deployment the server reads it and sends the weights as the
initial global model, as it sends a random init.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.config import ConfigError

PREFIXES = ("_module.", "module.")     # Opacus GradSampleModule, DataParallel
SHOWN = 6                              # layers named per kind of mismatch


@dataclass(frozen=True)
class InitFrom:
    """The initial state dict a run starts from, and what people are told about it."""

    state: dict[str, torch.Tensor]
    source: str                        # "fedclinic final_model.pt (round 10)" / "state dict"
    reinitialised: tuple[str, ...] = ()   # head tensors left at this run's random init
    converted: tuple[str, ...] = ()    # kernels taken across dimensions (module docstring)

    @property
    def note(self) -> str:
        loaded = len(self.state) - len(self.reinitialised)
        text = f"init-from: {loaded} of {len(self.state)} tensors from {self.source}"
        if self.converted:
            text += (f"; {len(self.converted)} convolution kernels converted across spatial "
                     f"dimensions (2D kernels repeated along depth / 3D kernels summed over it)")
        if self.reinitialised:
            text += (f"; head {', '.join(self.reinitialised)} re-initialised (the file's "
                     f"number of classes differs from this task's)")
        return text


def _read(path: Path) -> tuple[Mapping[str, object], str]:
    """The file's tensors by name, and what the file is."""
    if not path.is_file():
        raise ConfigError(f"init_from={str(path)!r}: no such file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:        # pickle, zip and torch errors all mean "not a model file"
        first = (str(exc).strip().splitlines() or ["empty or truncated"])[0][:200]
        raise ConfigError(f"init_from={str(path)!r}: not a readable torch model file "
                          f"({type(exc).__name__}: {first})") from None
    if isinstance(saved, Mapping) and isinstance(saved.get("state_dict"), Mapping):
        where = f" (round {saved['round']})" if "round" in saved else ""
        return saved["state_dict"], f"the fedclinic model file {path.name}{where}"
    if isinstance(saved, Mapping) and saved and all(isinstance(v, torch.Tensor)
                                                    for v in saved.values()):
        return saved, f"the state dict {path.name}"
    raise ConfigError(f"init_from={str(path)!r}: holds no state dict (expected a fedclinic "
                      f"final_model.pt / best_model.pt, or a mapping of layer name to tensor)")


def _strip(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in state.items():
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        if isinstance(value, torch.Tensor):
            out[name] = value
    return out


def head_keys(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    """State-dict names of the classification head: the last Linear (or 1x1 conv) layer whose
    output size is the number of classes."""
    head = None
    for name, module in model.named_modules():
        out = getattr(module, "out_features", getattr(module, "out_channels", None))
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and out == num_classes:
            head = name
    if head is None:
        return ()
    prefix = f"{head}." if head else ""
    return tuple(k for k in model.state_dict() if k.startswith(prefix)
                 and "." not in k[len(prefix):])


def across_dims(kernel: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """``kernel`` (out, in, [d,] h, w) converted to the shape of ``like`` across one spatial
    dimension (module docstring), or None when the two are not a 2D and a 3D form of the same
    kernel."""
    if kernel.dim() == 4 and like.dim() == 5 and kernel.shape == like.shape[:2] + like.shape[3:]:
        depth = like.shape[2]
        return kernel.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    if kernel.dim() == 5 and like.dim() == 4 and kernel.shape[:2] + kernel.shape[3:] == like.shape:
        return kernel.sum(dim=2)
    return None


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def load_init(path: str | Path, model: nn.Module, num_classes: int) -> InitFrom:
    """The state dict ``model`` starts from: the file's tensors, the head kept from ``model``
    when only the number of classes differs (module docstring). ``model`` is not changed."""
    path = Path(path)
    raw, source = _read(path)
    found, own = _strip(raw), model.state_dict()
    converted = {k: t for k in own if k in found
                 and (t := across_dims(found[k], own[k])) is not None}
    found.update(converted)
    missing = [k for k in own if k not in found]
    unexpected = [k for k in found if k not in own]
    reshaped = [k for k in own if k in found and found[k].shape != own[k].shape]
    head = set(head_keys(model, num_classes))
    if missing or unexpected or any(k not in head for k in reshaped):
        problems = []
        if reshaped:
            problems.append("other shapes: " + _listed(
                [f"{k} ({_shape(found[k])} in the file, {_shape(own[k])} here)"
                 for k in reshaped]))
        if missing:
            problems.append("missing from the file: " + _listed(missing))
        if unexpected:
            problems.append("not in this network: " + _listed(unexpected))
        raise ConfigError(f"init_from={str(path)!r}: the file's layers do not fit this run's "
                          f"network (model, width, norm and input channels must be the ones "
                          f"it was trained with): " + "; ".join(problems))
    state = {k: (own[k].clone() if k in reshaped else found[k].to(own[k].dtype).clone())
             for k in own}
    return InitFrom(state, source, tuple(reshaped), tuple(converted))


def initial_state(init_from: str, model: nn.Module, num_classes: int) -> InitFrom | None:
    """`load_init` loaded into ``model`` when ``init_from`` names a file; None (``model`` left
    at its seeded random init) when it is ''."""
    if not init_from:
        return None
    init = load_init(init_from, model, num_classes)
    model.load_state_dict(init.state)
    return init
