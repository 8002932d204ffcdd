"""A model's weights as one flat vector: how they travel between server and sites.

Flower ships every array of a message as its own object, one HTTP request per object and hop;
a ResNet-18's ~120 tensors made each model transfer on a deployment cost tens of seconds. Both
ends build the same network from the run config, so they agree on the tensors' names, shapes and
order; the weights travel as one float32 vector and are unpacked against the local model.
Every strategy fedclinic offers (FedAvg, FedProx, FedAdam, FedYogi, FedMedian, FedTrimmedAvg,
Krum, client-level DP clipping) works elementwise or on the global L2 norm, so aggregating the
packed vector is the same as aggregating tensor by tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

PACKED_KEY = "model"


def pack_state(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """All tensors of a state dict, flattened and concatenated in key order, as float32."""
    parts = [t.detach().reshape(-1).to(torch.float32) for t in state.values()]
    return torch.cat(parts) if parts else torch.zeros(0)


def unpack_state(flat: torch.Tensor | np.ndarray, like: Mapping[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """The inverse of `pack_state`, with names, shapes and dtypes taken from `like`."""
    if isinstance(flat, np.ndarray):       # Flower hands arrays out read-only
        flat = torch.from_numpy(np.array(flat, dtype=np.float32))
    sizes = [t.numel() for t in like.values()]
    if flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ValueError(f"packed weights hold {flat.numel()} values but this model has "
                         f"{sum(sizes)}: server and site built different networks (same "
                         f"fedclinic version and run config on both sides?)")
    out = {}
    for (name, ref), chunk in zip(like.items(), torch.split(flat, sizes)):
        chunk = chunk.reshape(ref.shape)
        out[name] = chunk.round().to(ref.dtype) if not ref.dtype.is_floating_point \
            else chunk.to(ref.dtype)
    return out
