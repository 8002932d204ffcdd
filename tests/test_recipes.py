"""Classification recipes: the lr schedule, classification augmentation, the stem and input
scaling, the recipe defaults (and that config.json records them), DP-SGD with all of them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from common import rundir
from common.augment import augment_batch, parse_augment
from common.config import ConfigError, RunConfig
from common.datasets.base import Split, TaskInfo
from common.models import DEFAULT_STEM, InputNorm, build_model
from common.task_defaults import (CLASSIFICATION_RECIPE, DP_CLASSIFICATION_RECIPE,
                                  describe_task_defaults,
                                  with_task_defaults)
from common.training import local as local_mod
from common.training.batches import batch_source
from common.training.dp_local import train_local_dp
from common.training.local import train_local
from common.training.logit_adjusted import (LogitAdjustedLoss, label_prior_offsets,
                                            logit_adjusted_loss)
from common.training.losses import check_dp_loss, make_loss
from common.training.schedule import EpochWindow, lr_factor, round_window, step_schedule

torch.set_num_threads(1)

BINARY = TaskInfo(kind="binary", num_classes=2, spatial_dims=2, channels=1, size=28)
VOLUME = TaskInfo(kind="binary", num_classes=2, spatial_dims=3, channels=1, size=8)


def _split(n: int = 8, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.random((n, *shape), dtype=np.float32), np.arange(n, dtype=np.int64) % 2)


# --------------------------------------------------------------------------- schedule


def test_warmup_then_cosine_hand_checked() -> None:
    f = lambda p: lr_factor("cosine", 0.1, p)   # noqa: E731
    assert f(0.0) == 0.0
    assert f(0.05) == pytest.approx(0.5)                 # half-way up the warm-up
    assert f(0.1) == pytest.approx(1.0)                  # warm-up done: the full rate
    assert f(0.55) == pytest.approx(0.5)                 # cosine's middle: (1 + cos(pi/2)) / 2
    assert f(0.325) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert f(1.0) == pytest.approx(0.0, abs=1e-12)
    values = [f(p / 100) for p in range(101)]
    peak = values.index(max(values))
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))    # rises ...
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))     # ... then falls


def test_constant_and_step_schedules() -> None:
    assert lr_factor("constant", 0.0, 0.7) == 1.0
    assert lr_factor("constant", 0.2, 0.1) == pytest.approx(0.5)
    assert [lr_factor("step", 0.0, p) for p in (0.49, 0.5, 0.74, 0.75, 1.0)] == \
        [1.0, 0.1, 0.1, 0.01, 0.01]
    with pytest.raises(ConfigError, match="lr_schedule='linear'"):
        lr_factor("linear", 0.0, 0.5)


def test_rounds_walk_along_one_schedule() -> None:
    cfg = RunConfig(rounds=4, local_epochs=2, lr=0.1, lr_schedule="cosine", warmup_fraction=0.0)
    assert round_window(cfg, 1) == EpochWindow(0, 8)
    assert round_window(cfg, 3) == EpochWindow(4, 8)
    assert round_window(cfg, 9) == EpochWindow(6, 8)        # clamped (a resumed, shorter run)
    # round 3's first step sits where the pooled run's step at epoch 4 sits
    fed = step_schedule(cfg, 2, round_window(cfg, 3))
    pooled = step_schedule(cfg, 8, None)
    assert fed.lr(0.25) == pytest.approx(pooled.lr(4.25))
    assert pooled.lr(4.0) == pytest.approx(0.05)              # the run's middle: half the rate
    with pytest.raises(ValueError, match="runs past the run's 8 epochs"):
        step_schedule(cfg, 3, round_window(cfg, 4))


def _recorded_lrs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The lr of every optimiser step train_local takes (make_optimizer wrapped)."""
    seen: list[float] = []
    real = local_mod.make_optimizer

    def spy(cfg, params):
        opt = real(cfg, params)
        step = opt.step

        def recording_step(*a, **k):
            seen.append(opt.param_groups[0]["lr"])
            return step(*a, **k)

        opt.step = recording_step
        return opt

    monkeypatch.setattr(local_mod, "make_optimizer", spy)
    return seen


def test_train_local_follows_the_schedule_step_by_step(monkeypatch) -> None:
    seen = _recorded_lrs(monkeypatch)
    cfg = RunConfig(model="cnn", width=4, batch_size=4, lr=0.1, lr_schedule="cosine",
                    warmup_fraction=0.25)
    model = build_model("cnn", spatial_dims=2, in_channels=1, num_classes=2, width=4)
    train_local(model, _split(8, (1, 8, 8)), BINARY, cfg, epochs=2, seed=0)
    # 2 epochs x 2 steps, at the steps' middles p = 1/8, 3/8, 5/8, 7/8 of the run
    expected = [0.1 * lr_factor("cosine", 0.25, p) for p in (1 / 8, 3 / 8, 5 / 8, 7 / 8)]
    assert seen == pytest.approx(expected)
    assert expected[0] == pytest.approx(0.05)               # in the warm-up: p / w = 0.5
    seen.clear()                                           # FedAvg: round 2 of 2, 1 epoch each
    fed = cfg.replace(rounds=2, local_epochs=1)
    train_local(model, _split(8, (1, 8, 8)), BINARY, fed, epochs=1, seed=0,
                window=round_window(fed, 2))
    assert seen == pytest.approx(expected[2:])


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (3, 3, 20, 20), (2, 1, 8, 10, 12)])
def test_classification_augmentation_keeps_shape_dtype_and_is_seeded(shape) -> None:
    ops = parse_augment("flip,hflip,rotate,crop,intensity")
    images = torch.rand(shape)
    gen = lambda s: torch.Generator().manual_seed(s)   # noqa: E731
    a, none = augment_batch(images, None, ops, gen(3))
    b, _ = augment_batch(images, None, ops, gen(3))
    c, _ = augment_batch(images, None, ops, gen(4))
    assert none is None and a.shape == images.shape and a.dtype == images.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, images)


def test_crop_is_a_whole_pixel_shift_and_hflip_the_last_axis() -> None:
    image = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10)
    for seed in range(6):
        out, _ = augment_batch(image, None, ("crop",), torch.Generator().manual_seed(seed))
        inside = out[out != 0]
        assert set(inside.tolist()) <= set(image.flatten().tolist())   # no interpolation
    flips = {tuple(augment_batch(image, None, ("hflip",), torch.Generator().manual_seed(s))[0]
                   .flatten()[:2].tolist()) for s in range(8)}
    assert flips == {(0.0, 1.0), (9.0, 8.0)}                          # left-right only


def test_each_record_is_augmented_on_its_own() -> None:
    """A record's augmented image does not depend on the other records of the batch (DP-SGD)."""
    ops = parse_augment("flip,rotate,crop,intensity")
    batch = torch.rand(3, 1, 16, 16)
    other = batch.clone()
    other[1:] = torch.rand(2, 1, 16, 16) * 5
    a, _ = augment_batch(batch, None, ops, torch.Generator().manual_seed(0))
    b, _ = augment_batch(other, None, ops, torch.Generator().manual_seed(0))
    assert torch.allclose(a[0], b[0])


def test_batch_source_augments_classification_images_only() -> None:
    split = _split(6, (1, 12, 12))
    plain = RunConfig()
    _, fetch = batch_source(split, BINARY, plain.replace(augment=""), torch.device("cpu"), 0)
    _, aug1 = batch_source(split, BINARY, plain.replace(augment="hflip,crop"),
                           torch.device("cpu"), 0)
    _, aug2 = batch_source(split, BINARY, plain.replace(augment="hflip,crop"),
                           torch.device("cpu"), 0)
    index = np.arange(6)
    (x, y), (xa, ya), (xb, _) = fetch(index), aug1(index), aug2(index)
    assert torch.equal(x, torch.from_numpy(split.images)) and torch.equal(y, ya)
    assert xa.shape == x.shape and not torch.equal(xa, x) and torch.equal(xa, xb)


# --------------------------------------------------------------------------- model


def _spatial_after_stem(stem: str, size: int = 28, dims: int = 2) -> tuple[int, ...]:
    model = build_model("resnet18", spatial_dims=dims, in_channels=1, num_classes=2, width=4,
                        stem=stem).eval()
    seen: list[tuple[int, ...]] = []
    model.layer4.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    with torch.no_grad():
        model(torch.rand(1, 1, *(size,) * dims))
    return seen[0]


def test_default_stem_keeps_resolution_at_28_px() -> None:
    """At 28 px the default stem leaves the last stage a 2x2 (2D) map, not 1x1 (ImageNet's
    7x7 stride-2 conv + max-pool: 28 -> 7 px -> 1 px)."""
    assert DEFAULT_STEM == "stride2" and _spatial_after_stem(DEFAULT_STEM) == (2, 2)
    assert _spatial_after_stem("stride1") == (4, 4)
    assert _spatial_after_stem("imagenet") == (1, 1)
    assert _spatial_after_stem("stride2", dims=3) == (2, 2, 2)


def test_input_norm_modes() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(InputNorm("none")(x), x)
    assert torch.allclose(InputNorm("pm1")(x), 2 * x - 1)
    z = InputNorm("zscore")(x)
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)
    with pytest.raises(ConfigError, match="input_norm='half'"):
        InputNorm("half")
    model = build_model("resnet18", spatial_dims=2, in_channels=1, num_classes=2, width=4)
    assert model.input_norm.mode == "zscore"
    assert not any("input_norm" in k for k in model.state_dict())   # nothing new to aggregate


# --------------------------------------------------------------------------- defaults


def test_recipe_defaults_fill_in_and_land_in_config_json(tmp_path) -> None:
    values, filled = with_task_defaults({"dataset": "synthetic", "batch_size": 32})
    assert filled == {k: v for k, v in CLASSIFICATION_RECIPE.items() if k != "batch_size"}
    assert values["batch_size"] == 32                               # given wins
    assert "classification defaults" in describe_task_defaults("classification", filled)
    cfg = RunConfig.from_dict({**values, "output_dir": str(tmp_path)})
    run = rundir.create_run_dir(cfg, "r")
    saved = json.loads((run / rundir.CONFIG).read_text())
    for key, value in CLASSIFICATION_RECIPE.items():
        assert saved[key] == (32 if key == "batch_size" else value)
    assert RunConfig.load(run / rundir.CONFIG) == cfg


def test_segmentation_and_dp_keep_their_own_defaults() -> None:
    seg, _ = with_task_defaults({"task": "segmentation"})
    assert seg["model"] == "unet" and "lr_schedule" not in seg
    dp, filled = with_task_defaults({"dp": "sample"})
    assert filled == DP_CLASSIFICATION_RECIPE and "width" not in filled   # DP: its own
    assert dp["loss"] == "logit_adjusted" and dp["batch_size"] == 64
    given, filled = with_task_defaults({"dp": "sample", "lr": 0.05, "loss": "ce"})
    assert given["lr"] == 0.05 and given["loss"] == "ce" and "lr" not in filled


# --------------------------------------------------------------------------- DP-SGD


@pytest.mark.parametrize("dims", [2, 3])
def test_dp_sgd_trains_with_the_recipe_model_augmentation_and_schedule(dims) -> None:
    task = BINARY if dims == 2 else VOLUME
    shape = (1, 28, 28) if dims == 2 else (1, 8, 8, 8)
    cfg = RunConfig(dp="sample", width=4, batch_size=4, lr=0.1, lr_schedule="cosine",
                    warmup_fraction=0.1, augment="hflip,crop,rotate,intensity",
                    max_grad_norm=1.0)
    torch.manual_seed(0)
    model = build_model("resnet18", spatial_dims=dims, in_channels=1, num_classes=2, width=4)
    result = train_local_dp(model, _split(8, shape), task, cfg, epochs=2, seed=0,
                            noise_multiplier=0.5, sample_rate=0.5,
                            window=EpochWindow(2, 4))
    assert result.steps == 4 and math.isfinite(result.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------------------- loss, clipping


def test_logit_adjusted_prior_hand_checked() -> None:
    offsets = label_prior_offsets(np.array([1, 1, 1]), 2, multilabel=False)
    assert torch.allclose(offsets, torch.log(torch.tensor([0.2, 0.8])))     # (0+1, 3+1) / 5
    ml = label_prior_offsets(np.array([[1, 0], [1, 0]], dtype=np.float32), 2, multilabel=True)
    assert torch.allclose(ml, torch.tensor([math.log(3), -math.log(3)]))    # p = 3/4, 1/4
    loss = logit_adjusted_loss(np.array([1, 1, 1]), 2, multilabel=False)
    zero = torch.zeros(4, 2)
    # an all-positive site's loss is already small at zero logits (no push on the bias)
    assert loss(zero, torch.ones(4, dtype=torch.long)).item() == pytest.approx(-math.log(0.8))
    cfg = RunConfig(loss="logit_adjusted")
    assert isinstance(make_loss(cfg, BINARY, np.array([0, 1])), LogitAdjustedLoss)
    dp = cfg.replace(dp="sample")
    check_dp_loss(dp)              # allowed: under DP its prior is the noised class counts
    with pytest.raises(ConfigError, match="needs the site's noised class counts"):
        make_loss(dp, BINARY, np.array([0, 1]))             # never the exact labels' prior
    noised = make_loss(dp, BINARY, np.array([0, 1, 1, 1]), prior_counts=np.array([-2.0, 9.0]))
    assert torch.allclose(noised.offsets, torch.log(torch.tensor([1 / 11, 10 / 11])))  # +1 each
    with pytest.raises(ConfigError, match="multilabel"):
        make_loss(dp, TaskInfo("multilabel", 2, 2, 1, 8), np.zeros((2, 2)),
                  prior_counts=np.array([1.0, 1.0]))
    with pytest.raises(ConfigError, match="weighted_ce"):
        check_dp_loss(dp.replace(loss="weighted_ce"))


def test_grad_clip_bounds_each_step() -> None:
    split = _split(4, (1, 8, 8))
    cfg = RunConfig(model="cnn", width=4, batch_size=4, lr=1.0, momentum=0.0, grad_clip=1e-3)
    torch.manual_seed(0)
    model = build_model("cnn", spatial_dims=2, in_channels=1, num_classes=2, width=4)
    before = [p.detach().clone() for p in model.parameters()]
    train_local(model, split, BINARY, cfg, epochs=1, seed=0)     # one step of plain SGD
    moved = math.sqrt(sum(float(((p.detach() - b) ** 2).sum())
                          for p, b in zip(model.parameters(), before)))
    assert 0 < moved <= 1e-3 * (1 + 1e-4)


def test_a_logit_adjusted_model_keeps_the_argmax_for_multiclass_but_gets_a_threshold() -> None:
    from common.datasets.base import TaskInfo
    from common.operating_point import ARGMAX, HIST_BINS, THRESHOLD, choose_operating_point
    multi = TaskInfo(kind="multiclass", num_classes=3, spatial_dims=2, channels=1, size=28)
    counts = np.array([[50, 1, 1], [2, 5, 1], [1, 1, 3]])
    plain = choose_operating_point(multi, counts, target_sensitivity=0.0, positive=None,
                                   source="val")
    adjusted = choose_operating_point(multi, counts, target_sensitivity=0.0, positive=None,
                                      source="val", prior_adjusted=True)
    assert plain.kind != ARGMAX and adjusted.kind == ARGMAX
    assert "logit-adjusted" in adjusted.skipped
    hist = np.zeros((2, HIST_BINS))
    hist[0, :10], hist[1, 30:] = 5, 5
    binary = choose_operating_point(BINARY, hist, target_sensitivity=0.0, positive=None,
                                    source="val", prior_adjusted=True)
    assert binary.kind == THRESHOLD


def test_the_recipe_bench_shifts_each_part_of_the_train_split_by_its_own_scanner() -> None:
    """bench.recipes' `shift_sites`: every sample kept once with its label, part 0 imaged by
    the reference scanner (unchanged), the other parts by their site's profile."""
    from bench.recipes import _shifted
    from common.acquisition import site_profile

    rng = np.random.default_rng(0)
    images = rng.uniform(0.2, 0.8, size=(12, 1, 4, 4, 4)).astype(np.float32)
    images[:, 0, 0, 0, 0] = np.arange(12) / 100     # tag each sample by one voxel
    split = Split(images, np.arange(12) % 2)
    out = _shifted(split, 3, seed=5)
    assert len(out) == 12 and sorted(out.labels.tolist()) == sorted(split.labels.tolist())
    first = out.images[:4]
    tags = np.rint(first[:, 0, 0, 0, 0] * 100).astype(int)      # reference: exact
    np.testing.assert_array_equal(first, images[tags])
    np.testing.assert_array_equal(out.labels[:4], split.labels[tags])
    assert site_profile(1, 5).name != "reference" and site_profile(2, 5).name != "reference"
    for shifted in out.images[4:]:                   # parts 1 and 2: no image left as it was
        assert not any(np.allclose(shifted, original) for original in images)
