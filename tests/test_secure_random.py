"""Secure randomness for DP-SGD (common/training/secure_random.py, train_local_dp(secure=...)).

The attack (issue 13): the coordinator knows the run seed (it chose it), the round and the site
id, so it knows the seed a site trains with (client.train_task.local_seed) and the weights it
sent; replaying the site's training with that seed reproduces the site's noise and sampling.
"""

import os

import numpy as np
import pytest
import torch
from torch import nn

from common.config import RunConfig
from common.datasets.base import Split, TaskInfo
from common.models import build_model
from common.privacy.planner import plan
from common.training.dp_local import train_local_dp
from common.training.poisson_sampling import poisson_loader
from common.training.secure_random import CsprngSource, secure_generator

torch.set_num_threads(1)

TASK = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=8)
CFG = RunConfig(lr=0.1, momentum=0.0, batch_size=12)
PUBLIC_SEED = 2_718_281   # stands in for local_seed(cfg.seed, round, site): the server knows it


def _split(n: int = 48) -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.random((n, 1, 8, 8), dtype=np.float32), np.arange(n, dtype=np.int64) % 3)


def _sent_model() -> nn.Module:
    """The global weights the server sent (it knows them)."""
    torch.manual_seed(0)
    return build_model("cnn", spatial_dims=2, in_channels=1, num_classes=3, width=4)


def _train(secure: bool, split: Split, p, seed: int = PUBLIC_SEED):
    model = _sent_model()
    result = train_local_dp(model, split, TASK, CFG, epochs=1, seed=seed,
                            noise_multiplier=p.noise_multiplier, sample_rate=p.sample_rate,
                            secure=secure)
    return [t.detach().clone() for t in model.parameters()], result


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def test_public_seed_replay_reproduces_seeded_weights_but_not_secure_ones():
    split = _split()
    p = plan(len(split), CFG.batch_size, 1, 3, target_epsilon=1.0)
    seeded, seeded_result = _train(False, split, p)
    secure, secure_result = _train(True, split, p)
    replay, _ = _train(False, split, p)   # the coordinator's replay with the public seed
    assert _max_diff(replay, seeded) == 0.0   # the attack works on the seeded path ...
    # ... and fails on the secure one: the replay misses by the noise, not by rounding
    noise_std = CFG.lr * p.noise_multiplier * CFG.max_grad_norm / int(len(split) * p.sample_rate)
    assert _max_diff(replay, secure) > noise_std
    again, _ = _train(True, split, p)      # the same seed does not repeat the secure noise
    assert _max_diff(again, secure) > noise_std
    for result in (seeded_result, secure_result):   # the accounted schedule is unchanged
        assert result.steps == p.steps_per_round
        assert (result.noise_multiplier, result.sample_rate) == (p.noise_multiplier,
                                                                  p.sample_rate)
    assert (seeded_result.secure, secure_result.secure) == (False, True)


def test_secure_training_survives_empty_poisson_batches():
    split = _split(n=2)   # n * q = 1: a quarter of the logical batches are empty
    model = _sent_model()
    result = train_local_dp(model, split, TASK, CFG, epochs=2, seed=0, noise_multiplier=1.0,
                            sample_rate=0.5, steps=12, secure=True)
    assert result.steps == 12
    assert all(torch.isfinite(t).all() for t in model.parameters())


def test_secure_poisson_batches_have_the_expected_size():
    n, q, steps = 1000, 0.1, 200
    batches = list(poisson_loader(n, q, steps, None, source=CsprngSource()))
    assert len(batches) == steps
    sizes = np.array([len(b) for b in batches])
    # mean of 200 Binomial(1000, 0.1) sizes: sd 0.67; 6 sd either side
    assert abs(sizes.mean() - n * q) < 4.0
    for b in batches:
        assert b.dtype == np.int64 and np.all(np.diff(b) > 0) and (b.size == 0 or b[-1] < n)
    other = list(poisson_loader(n, q, steps, None, source=CsprngSource()))
    assert any(not np.array_equal(x, y) for x, y in zip(batches, other))


def test_poisson_loader_takes_a_seed_or_a_source_not_both():
    with pytest.raises(ValueError, match="exactly one"):
        poisson_loader(10, 0.5, 1, 3, source=CsprngSource())
    with pytest.raises(ValueError, match="exactly one"):
        poisson_loader(10, 0.5, 1, None)


def test_secure_noise_is_gaussian_with_the_requested_std():
    z = CsprngSource().normal((400, 500), 2.0)
    assert z.shape == (400, 500) and z.dtype == torch.float64
    z = z.flatten() / 2.0
    n = z.numel()
    assert abs(float(z.mean())) < 6 / n ** 0.5
    assert abs(float(z.std()) - 1.0) < 0.01
    tail = float((z.abs() > 2).double().mean())   # P(|N| > 2) = 0.0455, sd 4.7e-4 here
    assert abs(tail - 0.0455) < 0.003
    assert torch.equal(CsprngSource().normal((3,), 0.0), torch.zeros(3, dtype=torch.float64))


def test_secure_noise_is_added_in_float64_and_keeps_the_value_dtype():
    value = torch.full((50, 40), 3.0)
    source = CsprngSource()
    noised = source.add_noise(value, 0.5)
    assert noised.dtype == torch.float32 and noised.shape == value.shape
    assert 0.4 < float((noised - value).std()) < 0.6
    assert torch.equal(source.add_noise(value, 0.0), value)
    like = source.noise_like(torch.zeros((2, 3), dtype=torch.float64), 1.0)
    assert like.dtype == torch.float64 and like.shape == (2, 3)


def test_keystream_bytes_are_uniform_and_never_repeat():
    source = CsprngSource()
    a, b = source.random_bytes(1 << 24), source.random_bytes(1 << 24)   # > one chunk each
    assert len(a) == len(b) == 1 << 24 and a != b
    counts = np.bincount(np.frombuffer(a, dtype=np.uint8), minlength=256)
    assert counts.min() > 0.95 * len(a) / 256 and counts.max() < 1.05 * len(a) / 256
    assert CsprngSource().random_bytes(64) != CsprngSource().random_bytes(64)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_its_parents_stream():
    source = CsprngSource()
    source.random_bytes(16)   # the stream exists before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: without re-keying it would draw exactly what the parent draws next
        os.write(write, source.random_bytes(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != source.random_bytes(32)


def test_secure_generators_have_no_seed_to_replay():
    a, b = secure_generator(), secure_generator()
    draws = torch.rand(16, generator=a)
    assert not torch.equal(draws, torch.rand(16, generator=b))
    # its reported seed does not regenerate its stream: the state came from the OS, not a seed
    fresh = secure_generator()
    replay = torch.Generator().manual_seed(fresh.initial_seed())
    assert not torch.equal(torch.rand(16, generator=fresh), torch.rand(16, generator=replay))


def test_secure_must_be_a_bool():
    with pytest.raises(TypeError, match="secure="):
        train_local_dp(_sent_model(), _split(), TASK, CFG, epochs=1, seed=0,
                       noise_multiplier=1.0, sample_rate=0.25, secure="no")
