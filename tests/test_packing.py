"""Weights travel as one flat vector; packing must be lossless and aggregation-neutral."""

import numpy as np
import pytest
import torch

from common.models import build_model
from common.packing import pack_state, unpack_state


def test_pack_unpack_round_trip_is_exact_for_every_tensor():
    model = build_model("resnet18", spatial_dims=2, in_channels=1, num_classes=3, width=4)
    state = model.state_dict()
    state["counter"] = torch.tensor(12345, dtype=torch.int64)      # an integer buffer too
    flat = pack_state(state)
    assert flat.dtype == torch.float32 and flat.dim() == 1
    back = unpack_state(flat.numpy(), state)            # as Flower hands it out: numpy
    assert list(back) == list(state)
    for name in state:
        assert back[name].dtype == state[name].dtype and torch.equal(back[name], state[name])


def test_averaging_packed_vectors_equals_averaging_each_tensor():
    a = build_model("cnn", spatial_dims=2, in_channels=1, num_classes=2, width=4).state_dict()
    b = build_model("cnn", spatial_dims=2, in_channels=1, num_classes=2, width=4).state_dict()
    mean = unpack_state((0.25 * pack_state(a) + 0.75 * pack_state(b)), a)
    for name in a:
        assert torch.allclose(mean[name], 0.25 * a[name] + 0.75 * b[name])


def test_a_vector_for_another_network_is_refused():
    state = build_model("cnn", spatial_dims=2, in_channels=1, num_classes=2, width=4).state_dict()
    with pytest.raises(ValueError, match="different networks"):
        unpack_state(np.zeros(7, np.float32), state)
