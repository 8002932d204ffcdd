"""`--personalize local-norm` (FedBN, Li et al. 2021): which of a model's tensors are federated.

Under local-norm the normalisation layers (GroupNorm, BatchNorm, InstanceNorm, LayerNorm: their
affine weights and biases, and BatchNorm's running statistics) stay at each site: a site's
train reply packs only the other tensors, the server aggregates only those, and each site
trains and evaluates with its own normalisation parameters (kept in its state, `client.
personal_state`). Both ends build the same network from the run config, so they agree on
which tensors travel (`federated_keys`); without local-norm every tensor does, as before.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from common.packing import pack_state, unpack_state

LOCAL_NORM = "local-norm"
NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm,
               nn.modules.instancenorm._InstanceNorm)


def norm_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict names of every normalisation layer's parameters and buffers."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            prefix = f"{name}." if name else ""
            keys += [prefix + k for k in module.state_dict()]
    return tuple(k for k in model.state_dict() if k in set(keys))


def federated_keys(model: nn.Module, personalize: str) -> tuple[str, ...]:
    """The state-dict names that travel and are aggregated: all of them, or under local-norm
    all but the normalisation layers'."""
    local = set(norm_keys(model)) if personalize == LOCAL_NORM else set()
    return tuple(k for k in model.state_dict() if k not in local)


def local_keys(model: nn.Module, personalize: str) -> tuple[str, ...]:
    """What stays at the site (nothing unless local-norm)."""
    return norm_keys(model) if personalize == LOCAL_NORM else ()


def federated_state(state: Mapping[str, torch.Tensor], model: nn.Module, personalize: str
                    ) -> dict[str, torch.Tensor]:
    """The federated part of ``state`` (a state dict of ``model``'s network)."""
    return {k: state[k] for k in federated_keys(model, personalize)}


def pack_federated(model: nn.Module, personalize: str,
                   state: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The packed vector of what leaves: ``state`` (default: the model's own) less what stays."""
    state = model.state_dict() if state is None else state
    return pack_state(federated_state(state, model, personalize))


def unpack_federated(flat: torch.Tensor | np.ndarray, model: nn.Module, personalize: str,
                     base: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A full state dict: the federated tensors from ``flat``, the rest from ``base``
    (default: the model's own, i.e. its local normalisation parameters)."""
    base = model.state_dict() if base is None else base
    like = federated_state(base, model, personalize)
    return {**{k: v for k, v in base.items()}, **unpack_state(flat, like)}
