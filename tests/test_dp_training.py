"""Sample-level DP-SGD at a site (common/training/dp_*.py) on tiny models and images."""

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError, RunConfig
from common.datasets.base import Split, TaskInfo
from common.training.dp_local import DPTrainResult, default_steps, train_local_dp
from common.training.dp_model import (AUTO_MODE, check_dp_model, mode_deviation,
                                      pick_grad_sample_mode)
from common.training.dp_wrapping import dp_wrapped
from common.training.memory import retain_freed_memory
from common.models import build_model
from common.privacy.ledger import PrivacyLedger
from common.privacy.planner import plan

torch.set_num_threads(1)

TASK = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=8)
TASK28 = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=28)
# plain SGD and a clip no gradient reaches: DP-SGD with sigma = 0 must equal ordinary SGD
EXACT = RunConfig(lr=0.05, momentum=0.0, max_grad_norm=1e6)


def _split(n: int = 12, size: int = 8, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.random((n, 1, size, size), dtype=np.float32),
                 np.arange(n, dtype=np.int64) % 3)


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", spatial_dims=2, in_channels=1, num_classes=3, width=4)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _sgd_step(model: nn.Module, split: Split, lr: float, loss_fn=F.cross_entropy,
              extra=None) -> tuple[list[torch.Tensor], float]:
    """One ordinary full-batch SGD step on a copy; returns its weights and the batch loss."""
    model = copy.deepcopy(model)
    loss = loss_fn(model(torch.from_numpy(split.images)), torch.from_numpy(split.labels))
    loss.backward()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            grad = p.grad + (extra[i] if extra is not None else 0.0)
            p -= lr * grad
    return _params(model), float(loss)


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=atol)


def _assert_plain_module(model: nn.Module, keys: list[str]) -> None:
    """No Opacus wrapper, hooks or parameter attributes are left behind."""
    assert list(model.state_dict()) == keys
    assert not hasattr(model, "autograd_grad_sample_hooks")
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    for p in model.parameters():
        assert p.grad is None
        assert not any(hasattr(p, a) for a in ("grad_sample", "summed_grad", "_forward_counter"))
    torch.save(model, io.BytesIO())   # serialisable as is


@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch"])
def test_zero_noise_and_unreachable_clip_equal_one_plain_sgd_step(mode):
    split, model = _split(), _cnn()
    expected, loss = _sgd_step(model, split, EXACT.lr)
    result = train_local_dp(model, split, TASK, EXACT.replace(grad_sample_mode=mode), epochs=1,
                            seed=0, noise_multiplier=0.0, sample_rate=1.0, steps=1)
    _assert_same(_params(model), expected)
    assert result.steps == 1 and result.num_samples == 12 and result.grad_sample_mode == mode
    assert result.loss == pytest.approx(loss, rel=1e-5)        # every sample drawn at q = 1
    assert (result.noise_multiplier, result.sample_rate) == (0.0, 1.0)


class _Tied(nn.Module):
    """One Linear applied twice: Opacus accumulates its per-sample gradients over both calls."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


@pytest.mark.parametrize("make", [_cnn, _Tied])
def test_per_sample_gradients_match_a_loop_over_samples(make):
    torch.manual_seed(0)
    model = make()
    images = torch.rand(5, 1, 2, 2) if make is _Tied else torch.rand(5, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 0, 1])
    loop = []
    for i in range(5):
        model.zero_grad()
        F.cross_entropy(model(images[i:i + 1]), labels[i:i + 1]).backward()
        loop.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with dp_wrapped(model, optimizer, mode="hooks", noise_multiplier=0.0, max_grad_norm=1.0,
                    expected_batch_size=5) as (net, _):
        F.cross_entropy(net(images), labels).backward()
        got = [p.grad_sample.clone() for p in model.parameters()]
    for j, g in enumerate(got):
        torch.testing.assert_close(g, torch.stack([row[j] for row in loop]), rtol=1e-4,
                                   atol=1e-6)


def test_clipping_bounds_the_update():
    split, model = _split(), _cnn()
    before = _params(model)
    train_local_dp(model, split, TASK, EXACT.replace(max_grad_norm=1e-3), epochs=1, seed=0,
                   noise_multiplier=0.0, sample_rate=1.0, steps=1)
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(_params(model), before)))
    # mean of clipped per-sample gradients has norm <= C, so the step is <= lr * C
    assert 0 < float(step) <= EXACT.lr * 1e-3 * (1 + 1e-4)


def test_proximal_gradient_is_added_after_privatisation():
    split, model = _split(), _cnn()
    anchor = [p.detach() + 0.1 * torch.randn_like(p) for p in model.parameters()]
    mu = 0.5
    extra = [mu * (p.detach() - g) for p, g in zip(model.parameters(), anchor)]
    expected, _ = _sgd_step(model, split, EXACT.lr, extra=extra)
    train_local_dp(model, split, TASK, EXACT, epochs=1, seed=0, noise_multiplier=0.0,
                   sample_rate=1.0, steps=1, proximal_mu=mu, global_params=anchor)
    _assert_same(_params(model), expected)


def test_weighted_ce_is_a_per_sample_mean():
    split = _split(n=10)                     # labels 0,1,2,0,...: classes 4, 3, 3 times
    model = _cnn()
    counts = np.bincount(split.labels, minlength=3)
    weight = torch.tensor(1 / counts / np.mean(1 / counts), dtype=torch.float32)
    per_sample = lambda out, y: F.cross_entropy(out, y, weight=weight, reduction="none").mean()
    expected, _ = _sgd_step(model, split, EXACT.lr, loss_fn=per_sample)
    train_local_dp(model, split, TASK, EXACT.replace(loss="weighted_ce"), epochs=1, seed=0,
                   noise_multiplier=0.0, sample_rate=1.0, steps=1)
    _assert_same(_params(model), expected)


def test_noise_is_random_reproducible_and_has_the_planned_scale():
    split, init = _split(), _cnn()
    plain, _ = _sgd_step(init, split, EXACT.lr)
    cfg, sigma = EXACT.replace(max_grad_norm=10.0), 2.0
    runs = {}
    for seed in (1, 1, 2):
        model = copy.deepcopy(init)
        train_local_dp(model, split, TASK, cfg, epochs=1, seed=seed, noise_multiplier=sigma,
                       sample_rate=1.0, steps=1)
        runs.setdefault(seed, []).append(torch.cat([p.flatten() for p in model.parameters()]))
    torch.testing.assert_close(runs[1][0], runs[1][1], rtol=0, atol=0)
    assert not torch.allclose(runs[1][0], runs[2][0])
    # gradients are far below the clip, so weights - plain SGD weights = -lr * noise / n with
    # noise ~ N(0, (sigma * C)^2) per coordinate
    noise = (torch.cat([p.flatten() for p in plain]) - runs[1][0]) / cfg.lr
    assert float(noise.std()) == pytest.approx(sigma * 10.0 / len(split), rel=0.15)
    assert abs(float(noise.mean())) < 0.2 * sigma * 10.0 / len(split)


@pytest.mark.parametrize("n,batch,epochs", [(40, 8, 2), (30, 7, 1), (93, 1, 1), (50, 16, 3),
                                             (20, 64, 2)])   # a site smaller than a batch
def test_steps_match_the_privacy_plan_and_ledger(n, batch, epochs):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    split = _split(n=n, size=2)
    task = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=2)
    p = plan(n, batch, epochs, 3, noise_multiplier=1.1)
    result = train_local_dp(model, split, task, RunConfig(batch_size=batch), epochs=epochs,
                            seed=0, noise_multiplier=p.noise_multiplier, sample_rate=p.sample_rate)
    assert result.steps == p.steps_per_round == default_steps(epochs, p.sample_rate)
    ledger = PrivacyLedger(p.accountant)
    ledger.record(result.noise_multiplier, result.sample_rate, result.steps)
    assert ledger.epsilon(p.delta) == pytest.approx(p.epsilon_after(1), rel=1e-9)


def test_explicit_steps_and_empty_poisson_batches():
    # n * q = 1: a quarter of the logical batches are empty and only noise is applied
    split, model = _split(n=2), _cnn()
    result = train_local_dp(model, split, TASK, EXACT, epochs=2, seed=3, noise_multiplier=1.0,
                            sample_rate=0.5, steps=9)
    assert result.steps == 9
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_check_dp_model_names_every_batchnorm_layer():
    model = build_model("resnet10", spatial_dims=2, in_channels=1, num_classes=2, norm="batch",
                        width=4)
    with pytest.raises(ConfigError) as err:
        check_dp_model(model)
    message = str(err.value)
    bn_paths = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn_paths) > 5
    for path in bn_paths:
        assert f"{path} (BatchNorm2d)" in message
    assert "norm=group or instance" in message
    # Opacus skips parameter-free layers; a non-affine BatchNorm still mixes the batch
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, affine=False))
    with pytest.raises(ConfigError, match=r"1 \(BatchNorm2d\)"):
        check_dp_model(plain.eval())
    assert not plain.training                                   # mode restored
    check_dp_model(build_model("resnet10", spatial_dims=2, in_channels=1, num_classes=2,
                               norm="instance", width=4))


def test_train_local_dp_refuses_batchnorm_before_training():
    model = build_model("cnn", spatial_dims=2, in_channels=1, num_classes=3, norm="batch",
                        width=4)
    before = _params(model)
    with pytest.raises(ConfigError, match=r"^model is not compatible with DP-SGD.*1 \(BatchNorm2d"):
        train_local_dp(model, _split(), TASK, EXACT, epochs=1, seed=0, noise_multiplier=1.0,
                       sample_rate=0.5)
    _assert_same(_params(model), before, atol=0)


def test_pick_grad_sample_mode():
    resnet = build_model("resnet18", spatial_dims=2, in_channels=1, num_classes=3, width=4)
    assert pick_grad_sample_mode(resnet, "auto") == AUTO_MODE == "hooks"
    assert pick_grad_sample_mode(resnet, "hooks") == "hooks"
    with pytest.raises(ConfigError, match="grad_sample_mode='fast'.*hooks, ew, functorch"):
        pick_grad_sample_mode(resnet, "fast")
    unet = build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, width=4)
    with pytest.raises(ConfigError, match=r"ExpandedWeights.*\(ConvTranspose2d\)"):
        pick_grad_sample_mode(unet, "ew")
    densenet = build_model("densenet121", spatial_dims=2, in_channels=1, num_classes=2, width=4)
    with pytest.raises(ConfigError, match="grad_sample_mode='ew' does not work for this model"):
        pick_grad_sample_mode(densenet, "ew", torch.rand(2, 1, 16, 16))
    assert pick_grad_sample_mode(densenet, "functorch", torch.rand(2, 1, 16, 16)) == "functorch"
    for p in densenet.parameters():                             # the probe leaves no trace
        assert p.grad is None and not hasattr(p, "grad_sample")


def test_resnet18_trains_under_dp_in_every_usable_mode():
    split, init = _split(n=16, size=28), None
    torch.manual_seed(0)
    init = build_model("resnet18", spatial_dims=2, in_channels=1, num_classes=3, width=4)
    keys = list(init.state_dict())
    example = torch.from_numpy(split.images[:2])
    usable = []
    for mode in ("hooks", "ew", "functorch"):
        try:
            usable.append(pick_grad_sample_mode(init, mode, example))
        except ConfigError:
            continue
    assert usable == ["hooks", "ew", "functorch"]
    for mode in ("ew", "functorch"):                            # same per-sample gradients
        assert mode_deviation(init, mode, example) < 1e-4
    for mode in usable:
        model = copy.deepcopy(init)
        cfg = RunConfig(grad_sample_mode=mode, lr=0.05, max_grad_norm=1.0)
        result = train_local_dp(model, split, TASK28, cfg, epochs=1, seed=0,
                                noise_multiplier=0.5, sample_rate=0.25, steps=2)
        assert isinstance(result, DPTrainResult) and result.steps == 2
        assert result.grad_sample_mode == mode and np.isfinite(result.loss)
        moved = sum(float((a - b).abs().sum()) for a, b in zip(_params(model), _params(init)))
        assert moved > 0 and all(torch.isfinite(p).all() for p in model.parameters())
        _assert_plain_module(model, keys)


def test_same_model_trains_twice_and_stays_a_plain_module():
    split = _split()
    model, twin = _cnn(), _cnn()
    keys = list(model.state_dict())
    for rnd in range(2):
        a = train_local_dp(model, split, TASK, EXACT, epochs=2, seed=rnd,
                           noise_multiplier=1.0, sample_rate=0.25)
        b = train_local_dp(twin, split, TASK, EXACT, epochs=2, seed=rnd,
                           noise_multiplier=1.0, sample_rate=0.25)
        assert a.steps == b.steps == 8
        assert a.loss == b.loss
        _assert_same(_params(model), _params(twin), atol=0)    # rewrapping changes nothing
        _assert_plain_module(model, keys)
    reloaded = _cnn(seed=5)
    reloaded.load_state_dict(model.state_dict())                # keys match the original model


def test_model_is_unwrapped_even_when_training_fails():
    split, model = _split(), _cnn()
    keys = list(model.state_dict())
    bad = Split(split.images, np.full(len(split), 7, dtype=np.int64))   # class 7 of 3
    with pytest.raises(IndexError):
        train_local_dp(model, bad, TASK, EXACT, epochs=1, seed=0, noise_multiplier=1.0,
                       sample_rate=1.0, steps=1)
    _assert_plain_module(model, keys)
    result = train_local_dp(model, split, TASK, EXACT, epochs=1, seed=0, noise_multiplier=1.0,
                            sample_rate=1.0, steps=1)
    assert result.steps == 1


def test_retain_freed_memory_is_idempotent():
    import platform
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is expected
    assert retain_freed_memory() is expected


@pytest.mark.parametrize("kwargs,match", [
    ({"split": Split(np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64))}, "empty"),
    ({"split": _split(n=3), "sample_rate": 0.25}, "too small for DP-SGD: 3 samples"),
    ({"sample_rate": 0.0}, "sample_rate=0.0"),
    ({"sample_rate": 1.5}, "sample_rate=1.5"),
    ({"steps": 0}, "steps=0"),
    ({"epochs": 0}, "epochs=0"),
    ({"noise_multiplier": -1.0}, "noise_multiplier=-1.0"),
    ({"noise_multiplier": float("nan")}, "noise_multiplier=nan"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = {"split": _split(), "epochs": 1, "noise_multiplier": 1.0, "sample_rate": 0.5,
            "steps": None} | kwargs
    with pytest.raises(ValueError, match=match):
        train_local_dp(_cnn(), args.pop("split"), TASK, EXACT, seed=0, **args)


def test_ema_decay_returns_the_moving_average_of_the_dp_sgd_iterates(monkeypatch):
    """The iterates do not depend on the average (same seed, same noise): record them in a run
    without it, then a run with decay 0.6 must end at w_0 averaged by hand,
    a_t = 0.6 a_(t-1) + 0.4 w_t from a_0 = the starting weights."""
    import common.training.dp_local as dp_local

    split, init = _split(24), _cnn()
    cfg = EXACT.replace(dp="sample", max_grad_norm=1.0, batch_size=6)
    iterates = []
    real_step = dp_local._optimiser_step

    def recording(loop, taken):
        stepped = real_step(loop, taken)
        if stepped:
            iterates.append(_params(loop.net._module if hasattr(loop.net, "_module")
                                    else loop.net))
        return stepped

    monkeypatch.setattr(dp_local, "_optimiser_step", recording)
    last = copy.deepcopy(init)
    train_local_dp(last, split, TASK, cfg, epochs=2, seed=3, noise_multiplier=1.0,
                   sample_rate=0.25)
    monkeypatch.setattr(dp_local, "_optimiser_step", real_step)
    assert len(iterates) == default_steps(2, 0.25) and len(iterates) > 2
    _assert_same(_params(last), iterates[-1])
    averaged = copy.deepcopy(init)
    train_local_dp(averaged, split, TASK, cfg.replace(ema_decay=0.6), epochs=2, seed=3,
                   noise_multiplier=1.0, sample_rate=0.25)
    expected = _params(init)
    for w in iterates:
        expected = [0.6 * a + 0.4 * b for a, b in zip(expected, w)]
    _assert_same(_params(averaged), expected, atol=1e-5)
    assert not all(torch.allclose(a, b) for a, b in zip(_params(averaged), iterates[-1]))


def test_ema_decay_needs_dp_sample():
    with pytest.raises(ConfigError, match="ema_decay=0.9 .* needs dp='sample'"):
        RunConfig(ema_decay=0.9)
    assert RunConfig(dp="sample", ema_decay=0.9).ema_decay == 0.9


def _clipped_loop_gradients(model: nn.Module, split: Split,
                            clip: float) -> list[list[torch.Tensor]]:
    """Each record's CE gradient clipped to norm ``clip``, by a plain loop (no Opacus)."""
    rows = []
    for i in range(len(split)):
        model.zero_grad()
        F.cross_entropy(model(torch.from_numpy(split.images[i:i + 1])),
                        torch.from_numpy(split.labels[i:i + 1])).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        rows.append([g * min(1.0, clip / (float(norm) + 1e-6)) for g in grads])
    model.zero_grad(set_to_none=True)
    return rows


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_dp_class_balance_weights_each_clipped_gradient_by_its_class(tau):
    """One DP-SGD step at sigma 0, q 1: the update is lr / n times the sum of
    w_y * clip(g_i), with w = (p_min / p_y) ** tau from the noised counts (clamped at 0, plus
    one), computed by hand."""
    split, model = _split(), _cnn()
    counts = np.array([7.6, 2.2, -1.0])                  # noised: can be negative
    shares = np.array([8.6, 3.2, 1.0])
    weights = (1.0 / shares) ** tau                      # p_min / p_c; class 2 is the rarest
    clip, cfg = 0.05, EXACT.replace(dp="sample", dp_class_balance=tau)
    rows = _clipped_loop_gradients(copy.deepcopy(model), split, clip)
    expected = [p.detach() - cfg.lr / len(split) * sum(weights[y] * r[j]
                                                       for y, r in zip(split.labels, rows))
                for j, p in enumerate(model.parameters())]
    train_local_dp(model, split, TASK, cfg.replace(max_grad_norm=clip), epochs=1, seed=0,
                   noise_multiplier=0.0, sample_rate=1.0, steps=1, prior_counts=counts)
    _assert_same(_params(model), [e.float() for e in expected], atol=1e-6)


def test_dp_class_balance_keeps_every_contribution_within_the_clip():
    from common.training.balanced_clipping import weight_clipped_grad_samples
    a, b = nn.Parameter(torch.zeros(2, 3)), nn.Parameter(torch.zeros(3))
    a.grad_sample = torch.tensor([[[3.0, 0, 0], [0, 0, 0]], [[0.1, 0, 0], [0, 0, 0]]])
    b.grad_sample = torch.tensor([[0.0, 4.0, 0], [0.0, 0.0, 0.0]])
    original = a.grad_sample
    weight_clipped_grad_samples([a, b], torch.tensor([0.5, 1.0]), max_grad_norm=1.0)
    # record 0 has norm 5: clipped to 1, then halved; record 1 (norm 0.1) is kept whole
    torch.testing.assert_close(a.grad_sample[0, 0, 0], torch.tensor(0.5 * 3 / 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.grad_sample[0, 1], torch.tensor(0.5 * 4 / 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.grad_sample[1, 0, 0], torch.tensor(0.1), atol=1e-6, rtol=0)
    assert original[0, 0, 0] == 3.0                      # out of place: Opacus' tensor untouched


def test_dp_class_balance_needs_dp_sample_counts_and_one_class_per_record():
    from common.training.balanced_clipping import class_balance_weights
    with pytest.raises(ConfigError, match="dp_class_balance=1 .* needs dp='sample'"):
        RunConfig(dp_class_balance=1.0)
    cfg = EXACT.replace(dp="sample", dp_class_balance=1.0)
    with pytest.raises(ConfigError, match="needs the site's noised class counts"):
        train_local_dp(_cnn(), _split(), TASK, cfg, epochs=1, seed=0, noise_multiplier=1.0,
                       sample_rate=0.5)
    multilabel = TaskInfo(kind="multilabel", num_classes=3, spatial_dims=2, channels=1, size=8)
    labels = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    with pytest.raises(ConfigError, match="a multilabel task has none"):
        train_local_dp(_cnn(), Split(_split().images, labels), multilabel,
                       cfg.replace(loss="ce"), epochs=1, seed=0, noise_multiplier=1.0,
                       sample_rate=0.5, prior_counts=np.array([4.0, 4.0, 4.0]))
    torch.testing.assert_close(class_balance_weights(np.array([99.0, 9.0]), 0.5),
                               torch.tensor([0.1 ** 0.5, 1.0]))


def test_aug_multiplicity_clips_the_mean_gradient_of_each_records_copies():
    """One DP-SGD step at sigma 0, q 1, a clip that binds: the update is lr / n times the sum
    over records of clip(mean of its K copies' gradients), the copies being the rows the
    seeded augmentation draws for np.repeat(index, K), computed here by a plain loop."""
    from common.training.batches import batch_source
    k, clip = 3, 0.05
    split, model = _split(), _cnn()
    cfg = EXACT.replace(dp="sample", augment="crop,intensity", aug_multiplicity=k,
                        max_grad_norm=clip)
    _, fetch = batch_source(split, TASK, cfg, torch.device("cpu"), 0)
    images, labels = fetch(np.repeat(np.arange(len(split)), k))
    assert not torch.equal(images[0], images[1])             # the copies differ
    probe = copy.deepcopy(model)
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(split)):
        probe.zero_grad()
        F.cross_entropy(probe(images[i * k:(i + 1) * k]), labels[i * k:(i + 1) * k]).backward()
        mean = [p.grad.clone() for p in probe.parameters()]   # mean over the record's copies
        norm = float(torch.sqrt(sum((g ** 2).sum() for g in mean)))
        total = [t + g * min(1.0, clip / (norm + 1e-6)) for t, g in zip(total, mean)]
    expected = [p.detach() - cfg.lr / len(split) * t for p, t in zip(model.parameters(), total)]
    train_local_dp(model, split, TASK, cfg, epochs=1, seed=0, noise_multiplier=0.0,
                   sample_rate=1.0, steps=1)
    _assert_same(_params(model), expected, atol=1e-6)


def test_average_copies_folds_rows_into_records():
    from common.training.aug_multiplicity import average_copies, repeat_index
    assert repeat_index(np.array([4, 7]), 3).tolist() == [4, 4, 4, 7, 7, 7]
    p = nn.Parameter(torch.zeros(2))
    p.grad_sample = torch.tensor([[1.0, 0], [3.0, 2], [5.0, 4], [0, 6]])
    average_copies([p], 2)
    torch.testing.assert_close(p.grad_sample, torch.tensor([[2.0, 1], [2.5, 5]]))
    p.grad_sample = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="5 per-sample gradients are not a whole number"):
        average_copies([p], 2)


def test_aug_multiplicity_needs_dp_sample_and_an_augmentation():
    with pytest.raises(ConfigError, match="aug_multiplicity=4 .* needs dp='sample' and an "
                                          "--augment"):
        RunConfig(dp="sample", aug_multiplicity=4)
    with pytest.raises(ConfigError, match="aug_multiplicity=4"):
        RunConfig(augment="crop", aug_multiplicity=4)
    assert RunConfig(dp="sample", augment="crop", aug_multiplicity=4).aug_multiplicity == 4
