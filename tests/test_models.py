"""Model registry: output shapes, norm choice, and Opacus (DP-SGD) compatibility."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from common.config import MODELS, NORMS
from common.models import (
    MODEL_NAMES, NORM_NAMES, build_model, count_parameters, group_norm, is_segmentation_model,
)

torch.set_num_threads(1)

W = 4  # smallest allowed width keeps every model fast on CPU
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _build(name: str, dims: int = 2, cin: int = 1, ncls: int = 3, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, spatial_dims=dims, in_channels=cin, num_classes=ncls, width=W, **kw)


def _expected_shape(name: str, batch: int, ncls: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
    return (batch, ncls, *spatial) if is_segmentation_model(name) else (batch, ncls)


def test_registry_matches_config() -> None:
    assert MODEL_NAMES == MODELS
    assert NORM_NAMES == NORMS
    assert [n for n in MODEL_NAMES if is_segmentation_model(n)] == ["unet", "basicunet", "attentionunet", "unetplusplus", "vnet", "segresnet"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dims,size", [(2, 28), (2, 64), (3, 16), (3, 28)])
def test_output_shape(name: str, dims: int, size: int) -> None:
    model = _build(name, dims=dims, ncls=3).eval()
    spatial = (size,) * dims
    with torch.no_grad():
        out = model(torch.rand(2, 1, *spatial))
    assert out.shape == _expected_shape(name, 2, 3, spatial)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "unet", "cnn"])
def test_rgb_input_and_odd_shapes(name: str) -> None:
    model = _build(name, cin=3, ncls=5).eval()
    for spatial in [(28, 28), (30, 20)]:  # 30x20 is not a multiple of the U-Net's stride
        with torch.no_grad():
            out = model(torch.rand(2, 3, *spatial))
        assert out.shape == _expected_shape(name, 2, 5, spatial)
    with pytest.raises(RuntimeError):  # the stem really takes 3 channels, not 1
        model(torch.rand(2, 1, 28, 28))


def test_unet_crop_keeps_pixels_independent_of_padding() -> None:
    """Per-pixel logits at 28 px come from the real image, not from the padding's content."""
    model = _build("unet").eval()
    x = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        padded_inner = model.unet(nn.functional.pad(x, (0, 4, 0, 4)))[..., :28, :28]
    assert torch.allclose(out, padded_inner)


def test_width_scales_channels_and_parameters() -> None:
    small = _build("resnet18")
    big = build_model("resnet18", spatial_dims=2, in_channels=1, num_classes=3, width=8)
    assert small.conv1.out_channels == 4 and small.fc.in_features == 32
    assert big.conv1.out_channels == 8 and big.fc.in_features == 64
    assert count_parameters(big) > 3 * count_parameters(small)
    assert _build("resnet50").fc.in_features == 4 * 8 * W  # bottleneck expansion 4


def test_resnet_depths() -> None:
    for name, blocks in [("resnet10", 4), ("resnet18", 8), ("resnet34", 16), ("resnet50", 16)]:
        model = _build(name)
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        assert sum(len(s) for s in stages) == blocks


def test_count_parameters_ignores_frozen() -> None:
    model = _build("cnn")
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    head = model[-1]
    head.weight.requires_grad_(False)
    assert count_parameters(model) == total - head.weight.numel()


@pytest.mark.parametrize("name", MODELS)
def test_default_norm_is_group_everywhere(name: str) -> None:
    model = _build(name)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms, "expected GroupNorm layers"
    assert not any(isinstance(m, BATCH_NORMS + INSTANCE_NORMS) for m in model.modules())
    for m in norms:
        assert m.num_channels % m.num_groups == 0 and m.num_groups <= 8


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121", "unet", "cnn"])
@pytest.mark.parametrize("norm,kind", [("batch", BATCH_NORMS), ("instance", INSTANCE_NORMS)])
def test_norm_choice_reaches_every_layer(name: str, norm: str, kind: tuple) -> None:
    """MONAI's ResNet would put BatchNorm in its blocks whatever norm it is given; ours may not."""
    model = _build(name, norm=norm)
    any_norm = (nn.GroupNorm,) + BATCH_NORMS + INSTANCE_NORMS
    found = [m for m in model.modules() if isinstance(m, any_norm)]
    assert found and all(isinstance(m, kind) for m in found)


def test_group_norm_groups() -> None:
    assert [group_norm(c).num_groups for c in (4, 6, 8, 12, 16, 130, 7)] == [4, 6, 8, 6, 8, 5, 7]


@pytest.mark.parametrize("name", MODELS)
def test_opacus_validator_accepts_group_norm_models(name: str) -> None:
    model = _build(name)
    assert ModuleValidator.validate(model, strict=False) == []
    for m in model.modules():
        assert not getattr(m, "inplace", False), f"in-place module {m} breaks Opacus hooks"


def test_opacus_validator_rejects_batch_norm() -> None:
    errors = ModuleValidator.validate(_build("resnet18", norm="batch"), strict=False)
    assert errors and all("BatchNorm" in str(e) for e in errors)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # inputs need no grad here
@pytest.mark.parametrize("name,norm,dims", [("resnet18", "group", 2), ("resnet50", "group", 2),
                                            ("densenet121", "group", 2), ("cnn", "group", 2),
                                            ("cnn", "instance", 3), ("unet", "group", 2)])
def test_per_sample_gradients_are_exact(name: str, norm: str, dims: int) -> None:
    """Opacus per-sample grads exist for every parameter, sum to the batch gradient, and equal
    the gradient of each sample alone; an in-place op or a norm mixing samples would break this."""
    model = _build(name, dims=dims, norm=norm).double()  # float64: compare without rounding noise
    size = 16 if dims == 2 else 8
    x = torch.rand(3, 1, *([size] * dims), dtype=torch.float64)
    y = torch.randint(0, 3, (3,) if not is_segmentation_model(name) else (3,) + x.shape[2:])
    loss_fn = nn.CrossEntropyLoss(reduction="sum")

    gsm = GradSampleModule(model, loss_reduction="sum")
    loss_fn(gsm(x), y).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    per_sample = [p.grad_sample.detach().clone() for p in params]
    batch_grad = [p.grad.detach().clone() for p in params]
    gsm._close()

    for gs, g in zip(per_sample, batch_grad):
        assert gs.shape == (3, *g.shape)
        assert torch.allclose(gs.sum(0), g, atol=1e-9, rtol=1e-7)
    for i in range(3):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        for gs, p in zip(per_sample, params):
            assert torch.allclose(gs[i], p.grad, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "vgg16"}, "model='vgg16'.*resnet10, resnet18.*cnn, unet"),
    ({"spatial_dims": 1}, "spatial_dims=1.*2, 3"),
    ({"norm": "layer"}, "norm='layer'.*group, instance, batch"),
    ({"width": 2}, "width=2.*>= 4"),
    ({"in_channels": 0}, "in_channels=0"),
    ({"num_classes": 1.5}, "num_classes=1.5"),
])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"name": "cnn", "spatial_dims": 2, "in_channels": 1, "num_classes": 2} | kwargs
    name = args.pop("name")
    with pytest.raises(ValueError, match=match):
        build_model(name, **args)


def test_is_segmentation_model_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="model='UNet'.*densenet121"):
        is_segmentation_model("UNet")
