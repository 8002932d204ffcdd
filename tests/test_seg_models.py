"""Segmentation models: output shapes for any spatial size, DP-safe norms/activations, and
exact Opacus per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from common.training.dp_model import check_dp_model
from common.models import MODEL_NAMES, PaddedUNet, build_model, count_parameters, \
    is_segmentation_model
from common.segmentation import make_seg_loss

torch.set_num_threads(1)

SEG_MODELS = ("unet", "basicunet", "attentionunet", "unetplusplus", "vnet", "segresnet")
W = 4
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
ANY_NORM = BATCH_NORMS + INSTANCE_NORMS + (nn.GroupNorm,)


def _build(name: str, dims: int = 2, cin: int = 1, ncls: int = 3, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, spatial_dims=dims, in_channels=cin, num_classes=ncls,
                       width=kw.pop("width", W), **kw)


def test_segmentation_registry() -> None:
    assert tuple(n for n in MODEL_NAMES if is_segmentation_model(n)) == SEG_MODELS
    assert not is_segmentation_model("resnet18")


@pytest.mark.parametrize("name", SEG_MODELS)
@pytest.mark.parametrize("dims,spatial", [(2, (28, 28)), (2, (64, 64)), (2, (30, 21)),
                                          (3, (16, 16, 16)), (3, (12, 10, 9))])
def test_output_shape_for_any_size(name: str, dims: int, spatial: tuple[int, ...]) -> None:
    model = _build(name, dims=dims, ncls=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *spatial))
    assert out.shape == (2, 3, *spatial)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SEG_MODELS)
def test_rgb_input(name: str) -> None:
    """3 input channels (VNet rounds its width to a multiple of them)."""
    model = _build(name, cin=3, ncls=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 28, 28)).shape == (1, 2, 28, 28)


@pytest.mark.parametrize("name", SEG_MODELS)
@pytest.mark.parametrize("norm,kind", [("group", (nn.GroupNorm,)), ("instance", INSTANCE_NORMS),
                                       ("batch", BATCH_NORMS)])
def test_norm_choice_reaches_every_layer(name: str, norm: str, kind: tuple) -> None:
    """AttentionUnet and VNet hard-code BatchNorm in MONAI; ours may not have any left."""
    model = _build(name, norm=norm)
    found = [m for m in model.modules() if isinstance(m, ANY_NORM)]
    assert found and all(isinstance(m, kind) for m in found)
    if norm == "group":
        assert all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8 for m in found)
        check_dp_model(model)   # Opacus' validator accepts it


@pytest.mark.parametrize("name", SEG_MODELS)
def test_no_inplace_modules(name: str) -> None:
    model = _build(name)
    assert not [type(m).__name__ for m in model.modules() if getattr(m, "inplace", False)]


@pytest.mark.parametrize("name", SEG_MODELS)
def test_instance_norm_trains_on_small_volumes(name: str) -> None:
    """Instance norm needs > 1 voxel at the deepest level; the padding guarantees it."""
    model = _build(name, dims=3, norm="instance").train()
    out = model(torch.rand(2, 1, 8, 8, 8))
    out.mean().backward()
    assert out.shape == (2, 3, 8, 8, 8)


@pytest.mark.parametrize("name", SEG_MODELS)
def test_padding_does_not_leak_into_logits(name: str) -> None:
    """Cropped logits equal the wrapped net's logits on the explicitly padded input."""
    model = _build(name).eval()
    assert isinstance(model, PaddedUNet)
    x = torch.rand(1, 1, 28, 20)
    pad_h, pad_w = (-28) % model.multiple, (-20) % model.multiple
    with torch.no_grad():
        out = model(x)
        ref = model.unet(nn.functional.pad(x, (0, pad_w, 0, pad_h)))[..., :28, :20]
    assert torch.allclose(out, ref)


def test_width_scales_parameters() -> None:
    for name in SEG_MODELS:
        small, big = _build(name, width=4), _build(name, width=8)
        assert count_parameters(big) > 3 * count_parameters(small), name


def test_basicunet_features_follow_width() -> None:
    net = _build("basicunet", width=16).unet
    convs = [net.conv_0, net.down_1.convs, net.down_2.convs, net.down_3.convs, net.down_4.convs,
             net.upcat_1.convs]
    assert [c.conv_1.conv.out_channels for c in convs] == [16, 16, 32, 64, 128, 16]


def test_unetplusplus_has_no_deep_supervision_heads() -> None:
    net = _build("unetplusplus").unet
    assert all(isinstance(getattr(net, f"final_conv_0_{i}"), nn.Identity) for i in (1, 2, 3))
    out = net(torch.rand(1, 1, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 16, 16)


def _no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


def _per_sample_grads(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                      reduction: str) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
    gsm = GradSampleModule(model, loss_reduction=reduction)
    loss_fn(gsm(x), y).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad_sample.detach().clone() for p in params]
    gsm._close()
    return params, grads


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("name,dims", [(n, 2) for n in SEG_MODELS] + [("basicunet", 3),
                                                                      ("segresnet", 3)])
def test_per_sample_gradients_are_exact(name: str, dims: int) -> None:
    """Opacus hook-mode per-sample grads equal each sample's own gradient (an in-place op or a
    norm mixing samples would break this; MONAI's SegResNet `x += identity` raises)."""
    model = _no_dropout(_build(name, dims=dims)).double()
    spatial = (12, 12) if dims == 2 else (6, 6, 6)
    x = torch.rand(3, 1, *spatial, dtype=torch.float64)
    y = torch.randint(0, 3, (3, *spatial))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    params, per_sample = _per_sample_grads(model, loss_fn, x, y, "sum")
    for i in range(3):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        for gs, p in zip(per_sample, params):
            assert torch.allclose(gs[i], p.grad, atol=1e-9, rtol=1e-7)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("loss", ["dice_ce", "focal", "weighted_ce"])
def test_seg_losses_are_per_sample_means_for_opacus(loss: str) -> None:
    """With loss_reduction='mean', Opacus scales by N: exact only if the batch loss is the
    mean of per-sample losses (weighted CE normalised per sample, Dice per sample)."""
    model = _build("basicunet").double()
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 3, (3, 12, 12))
    loss_fn = make_seg_loss(loss, 3, class_weights=torch.tensor([0.2, 1.0, 1.8])).double()
    params, per_sample = _per_sample_grads(model, loss_fn, x, y, "mean")
    for i in range(3):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        for gs, p in zip(per_sample, params):
            assert torch.allclose(gs[i], p.grad, atol=1e-9, rtol=1e-6)
