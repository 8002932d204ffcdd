"""Local training, losses, optimisers, prediction and evaluation on tiny toy problems."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.config import RunConfig
from common.datasets.base import Split, TaskInfo
from common.metrics import METRIC_NAMES
from common.training.local import TrainResult, train_local
from common.training.losses import FocalLoss, make_loss
from common.training.optimiser import make_optimizer
from common.training.prediction import evaluate, predict_proba
from common.training.seeding import set_seed

torch.set_num_threads(1)

BINARY = TaskInfo(kind="binary", num_classes=2, spatial_dims=2, channels=1, size=4)
MULTILABEL = TaskInfo(kind="multilabel", num_classes=3, spatial_dims=2, channels=1, size=4)
VOLUME = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=3, channels=1, size=4)
CFG = RunConfig(batch_size=8, lr=0.1, momentum=0.9)


def _toy_split(n: int = 40, seed: int = 0) -> Split:
    """Separable: class 1 images are bright (0.6..1), class 0 images dark (0..0.4)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    base = np.where(labels[:, None, None, None] == 1, 0.6, 0.0)
    images = (base + 0.4 * rng.random((n, 1, 4, 4))).astype(np.float32)
    return Split(images, labels)


def _linear(in_features: int = 16, out: int = 2, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, out))


def _distance(model: nn.Module, reference: list[torch.Tensor]) -> float:
    pairs = zip(model.parameters(), reference)
    return math.sqrt(sum(float(((p.detach() - r) ** 2).sum()) for p, r in pairs))


def test_training_lowers_loss_on_separable_problem():
    split, model = _toy_split(), _linear()
    before = evaluate(model, split, BINARY)
    first = train_local(model, split, BINARY, CFG, epochs=1, seed=1)
    later = train_local(model, split, BINARY, CFG, epochs=5, seed=2)
    after = evaluate(model, split, BINARY)
    assert isinstance(first, TrainResult)
    assert first.num_samples == 40 and first.steps == 5            # ceil(40 / 8) batches
    assert later.steps == 25 and later.seconds >= 0
    assert later.loss < first.loss
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] == 1.0


def test_same_seed_gives_identical_weights_different_seed_differs():
    split = _toy_split()
    start = _linear(dropout=0.3)
    a, b, c = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    ra = train_local(a, split, BINARY, CFG, epochs=2, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)        # caller's RNG state untouched
    torch.manual_seed(999)                                       # global state must not matter
    rb = train_local(b, split, BINARY, CFG, epochs=2, seed=7)
    train_local(c, split, BINARY, CFG, epochs=2, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ra.loss == rb.loss
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_weighted_ce_weights_rare_classes_more():
    labels = np.array([0] * 9 + [1] * 3, dtype=np.int64)          # class 2 absent
    task = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=4)
    loss = make_loss(CFG.replace(loss="weighted_ce"), task, labels)
    w = loss.weight
    # 1/count with absent class 2 counted as 1: [1/9, 1/3, 1] -> normalised to mean 1
    raw = torch.tensor([1 / 9, 1 / 3, 1.0])
    assert torch.allclose(w, raw / raw.mean())
    assert w[1] == pytest.approx(3 * w[0]) and w.mean() == pytest.approx(1.0)
    multi = make_loss(CFG.replace(loss="weighted_ce"), MULTILABEL,
                      np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=np.float32))
    # pos_weight = negatives / positives per label: 2/2, 3/1, no positives -> 1
    assert torch.allclose(multi.pos_weight, torch.tensor([1.0, 3.0, 1.0]))


def test_focal_with_gamma_zero_equals_ce_and_down_weights_easy_examples():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 3) * 3, torch.tensor([0, 1, 2, 2, 1, 0])
    task3 = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=4)
    focal0 = make_loss(CFG.replace(loss="focal", focal_gamma=0.0), task3, target.numpy())
    assert torch.allclose(focal0(logits, target), F.cross_entropy(logits, target))
    focal2 = make_loss(CFG.replace(loss="focal", focal_gamma=2.0), task3, target.numpy())
    assert isinstance(focal2, FocalLoss)
    assert focal2(logits, target) < F.cross_entropy(logits, target)
    ml_target = (torch.rand(6, 3) > 0.5).float()
    ml_focal0 = make_loss(CFG.replace(loss="focal", focal_gamma=0.0), MULTILABEL, ml_target.numpy())
    assert torch.allclose(ml_focal0(logits, ml_target),
                          F.binary_cross_entropy_with_logits(logits, ml_target))
    # hand check of one sigmoid-focal cell: logit 0 -> p = 0.5, loss = (1 - 0.5)^2 * ln 2
    one = FocalLoss(2.0, multilabel=True)(torch.zeros(1, 1), torch.ones(1, 1))
    assert one.item() == pytest.approx(0.25 * math.log(2))


def test_fedprox_keeps_weights_near_global():
    split = _toy_split()
    start = _linear()
    anchor = [p.detach().clone() for p in start.parameters()]
    free, prox = copy.deepcopy(start), copy.deepcopy(start)
    train_local(free, split, BINARY, CFG, epochs=3, seed=0)
    train_local(prox, split, BINARY, CFG, epochs=3, seed=0, proximal_mu=10.0, global_params=anchor)
    d_free, d_prox = _distance(free, anchor), _distance(prox, anchor)
    assert d_free > 0.5
    assert d_prox < 0.2 * d_free
    wrong = [torch.zeros(3)]
    with pytest.raises(ValueError, match="global_params has 1 tensors but the model has 2"):
        train_local(copy.deepcopy(start), split, BINARY, CFG, epochs=1, seed=0,
                    proximal_mu=1.0, global_params=wrong)


def test_optimizers_and_adam_training():
    model = _linear()
    sgd = make_optimizer(CFG.replace(weight_decay=1e-4), model.parameters())
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    adam_cfg = CFG.replace(optimizer="adam", lr=0.05)
    assert isinstance(make_optimizer(adam_cfg, model.parameters()), torch.optim.Adam)
    split = _toy_split()
    before = evaluate(model, split, BINARY)["loss"]
    train_local(model, split, BINARY, adam_cfg, epochs=4, seed=0)
    assert evaluate(model, split, BINARY)["loss"] < 0.5 * before


def test_three_d_multiclass_input_trains_and_evaluates():
    rng = np.random.default_rng(1)
    labels = np.arange(30, dtype=np.int64) % 3
    images = (labels[:, None, None, None, None] / 3 + 0.3 * rng.random((30, 1, 4, 4, 4)))
    split = Split(images.astype(np.float32), labels)
    model = _linear(in_features=64, out=3)
    result = train_local(model, split, VOLUME, CFG.replace(loss="weighted_ce"), epochs=3, seed=0)
    assert result.steps == 3 * 4                                   # ceil(30 / 8) = 4 per epoch
    metrics = evaluate(model, split, VOLUME)
    assert metrics["num_examples"] == 30.0
    assert 0.0 <= metrics["accuracy"] <= 1.0 and math.isfinite(metrics["loss"])
    with pytest.raises(ValueError, match="3D task needs 5 dims"):
        train_local(model, _toy_split(), VOLUME, CFG, epochs=1, seed=0)


def test_batchnorm_skips_only_a_final_batch_of_one():
    split = _toy_split(n=17)                                       # 8 + 8 + 1
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert train_local(bn, split, BINARY, CFG, epochs=2, seed=0).steps == 4
    assert train_local(_linear(), split, BINARY, CFG, epochs=2, seed=0).steps == 6
    with pytest.raises(ValueError, match="1 sample and the model has BatchNorm"):
        train_local(bn, split.subset(np.array([0])), BINARY, CFG, epochs=1, seed=0)


def test_multilabel_train_predict_and_evaluate():
    rng = np.random.default_rng(2)
    labels = (rng.random((24, 3)) > 0.5).astype(np.float32)
    images = 0.3 * rng.random((24, 1, 4, 4)).astype(np.float32)
    images[:, 0, :3, :] += 0.5 * labels[:, :, None]               # image row j lit when label j
    split = Split(images, labels)
    model = _linear(out=3)
    for loss in ("ce", "weighted_ce", "focal"):
        result = train_local(model, split, MULTILABEL, CFG.replace(loss=loss), epochs=1, seed=0)
        assert math.isfinite(result.loss)
    probs = predict_proba(model, images, MULTILABEL, batch_size=5)
    assert probs.shape == (24, 3) and ((probs > 0) & (probs < 1)).all()
    metrics = evaluate(model, split, MULTILABEL)
    assert set(metrics) == {"loss", "num_examples", *METRIC_NAMES}
    assert metrics["num_examples"] == 24.0


def test_predict_proba_and_evaluate_values():
    split = _toy_split(n=10)
    model = _linear()
    model.train()
    probs = predict_proba(model, split.images, BINARY, batch_size=3)
    assert probs.shape == (10, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert model.training                                          # mode restored
    with torch.no_grad():
        logits = model(torch.from_numpy(split.images))
    metrics = evaluate(model, split, BINARY, batch_size=4)
    assert set(metrics) == {"loss", "num_examples", *METRIC_NAMES}
    assert all(type(v) is float for v in metrics.values())
    assert metrics["num_examples"] == 10.0
    expected_loss = F.cross_entropy(logits, torch.from_numpy(split.labels)).item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    expected_acc = float((logits.argmax(1).numpy() == split.labels).mean())
    assert metrics["accuracy"] == pytest.approx(expected_acc)


def test_bad_inputs_raise_clear_errors():
    empty = Split(np.zeros((0, 1, 4, 4), np.float32), np.zeros((0,), np.int64))
    with pytest.raises(ValueError, match="empty"):
        train_local(_linear(), empty, BINARY, CFG, epochs=1, seed=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(_linear(), empty, BINARY)
    with pytest.raises(ValueError, match="epochs=0"):
        train_local(_linear(), _toy_split(), BINARY, CFG, epochs=0, seed=0)
    with pytest.raises(ValueError, match=r"needs \(N, 2\) logits"):
        predict_proba(_linear(out=3), _toy_split().images, BINARY)


def test_set_seed_makes_random_draws_repeatable():
    set_seed(5)
    first = (np.random.rand(), torch.rand(1).item())
    set_seed(5)
    assert (np.random.rand(), torch.rand(1).item()) == first
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
