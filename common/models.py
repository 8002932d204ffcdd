"""Model registry: MONAI networks sized for CPU training on small 2D/3D medical images.

Every network is built so that, with ``norm`` set to ``"group"`` or ``"instance"``, Opacus can
compute per-sample gradients for DP-SGD. That needs three things MONAI does not give by default:

* no in-place activations (MONAI defaults to ``ReLU(inplace=True)``) and no in-place residual
  additions (MONAI's ResNet blocks do ``out += residual``); both break Opacus' backward hooks;
* the requested norm in *every* layer: MONAI 1.6's ``ResNet._make_layer`` does not forward the
  network's ``norm`` to its blocks or shortcut, so they would silently get BatchNorm;
* GroupNorm whose group count divides each layer's channel count, which differs per layer
  (DenseNet) and with ``width``; we register a MONAI norm factory that picks it per layer.

Inputs as small as 28 px must survive four downsampling stages, so ResNet and DenseNet use a
3x3 stride-1 stem without max-pooling, and the U-Net pads its input to a multiple of 8 and crops
the output back.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Norm, Pool, get_act_layer, get_norm_layer
from monai.networks.nets import DenseNet, ResNet, UNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import nn

SPATIAL_DIMS = (2, 3)
MIN_WIDTH = 4
MAX_GROUPS = 8  # GroupNorm uses the largest divisor of the channel count that is <= this

ACT = ("relu", {"inplace": False})
_GROUP_NORM_KEY = "fedclinic_group"


def _num_groups(channels: int) -> int:
    """Largest divisor of ``channels`` not above MAX_GROUPS (so GroupNorm always accepts it)."""
    return max(g for g in range(1, min(MAX_GROUPS, channels) + 1) if channels % g == 0)


def group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with a group count that divides ``num_channels`` (affine, like MONAI's default)."""
    return nn.GroupNorm(_num_groups(num_channels), num_channels)


def _group_norm_factory(dim: int | None = None) -> Callable[[int], nn.GroupNorm]:
    """MONAI ``Norm`` factory: GroupNorm is the same for every spatial dim."""
    return group_norm


if _GROUP_NORM_KEY.upper() not in Norm:
    Norm.add_factory_callable(_GROUP_NORM_KEY, _group_norm_factory)

# MONAI norm specifiers, passed by name to MONAI's layer factories (as its densenet.py does).
_NORMS: dict[str, str | tuple] = {
    "group": (_GROUP_NORM_KEY, {}),
    "instance": ("instance", {"affine": True}),
    "batch": "batch",
}


class DPResNetBlock(ResNetBlock):
    """MONAI's basic block with a non-in-place ReLU and residual add (Opacus-safe)."""

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1,
                 downsample: nn.Module | None = None, act: str | tuple = ACT,
                 norm: str | tuple = "batch") -> None:
        super().__init__(in_planes, planes, spatial_dims, stride, downsample, act, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class DPResNetBottleneck(ResNetBottleneck):
    """MONAI's bottleneck block with a non-in-place ReLU and residual add (Opacus-safe)."""

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1,
                 downsample: nn.Module | None = None, act: str | tuple = ACT,
                 norm: str | tuple = "batch") -> None:
        super().__init__(in_planes, planes, spatial_dims, stride, downsample, act, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class _ResNet(ResNet):
    """MONAI ResNet that applies its ``norm`` inside the residual stages too."""

    def __init__(self, *, norm: str | tuple, **kwargs) -> None:
        # Set before super().__init__(), which calls _make_layer; a plain attribute is allowed then.
        self._stage_norm = norm
        super().__init__(norm=norm, **kwargs)

    def _make_layer(self, block, planes, blocks, spatial_dims, shortcut_type, stride=1,
                    norm="batch") -> nn.Sequential:
        return super()._make_layer(block, planes, blocks, spatial_dims, shortcut_type, stride,
                                   norm=self._stage_norm)


_RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet10": (DPResNetBlock, [1, 1, 1, 1]),
    "resnet18": (DPResNetBlock, [2, 2, 2, 2]),
    "resnet34": (DPResNetBlock, [3, 4, 6, 3]),
    "resnet50": (DPResNetBottleneck, [3, 4, 6, 3]),
}


def _resnet(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int) -> nn.Module:
    block, layers = _RESNET_LAYOUTS[name]
    return _ResNet(block=block, layers=layers, block_inplanes=[w, 2 * w, 4 * w, 8 * w],
                   spatial_dims=dims, n_input_channels=cin, conv1_t_size=3, conv1_t_stride=1,
                   no_max_pool=True, shortcut_type="B", num_classes=ncls, act=ACT, norm=norm)


def _densenet121(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int) -> nn.Module:
    """DenseNet-121 layout (6, 12, 24, 16) with 2w initial features and growth rate w/2."""
    init_features = 2 * w
    model = DenseNet(spatial_dims=dims, in_channels=cin, out_channels=ncls,
                     init_features=init_features, growth_rate=max(2, w // 2),
                     block_config=(6, 12, 24, 16), act=ACT, norm=norm)
    # MONAI's stem (7x7 stride-2 conv + max-pool) shrinks 28 px to 7 px, too small for three
    # transitions; replace it by a 3x3 stride-1 conv and no pooling.
    stem = Conv[Conv.CONV, dims](cin, init_features, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(stem.weight)
    model.features.conv0 = stem
    model.features.pool0 = nn.Identity()
    return model


class PaddedUNet(nn.Module):
    """MONAI UNet that zero-pads inputs to a multiple of its total stride and crops the output.

    Without this, a 28 px input hits 7 px after two stride-2 stages and the third gives 4 px,
    whose upsampled 8 px no longer matches the 7 px skip connection.
    """

    def __init__(self, unet: UNet, multiple: int) -> None:
        super().__init__()
        self.unet = unet
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        pad: list[int] = []
        for size in reversed(spatial):  # F.pad lists the last dim first
            pad += [0, (-size) % self.multiple]
        out = self.unet(F.pad(x, pad) if any(pad) else x)
        return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


def _unet(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int) -> nn.Module:
    strides = (2, 2, 2)
    unet = UNet(spatial_dims=dims, in_channels=cin, out_channels=ncls,
                channels=(w, 2 * w, 4 * w, 8 * w), strides=strides, num_res_units=1,
                act=ACT, norm=norm)
    return PaddedUNet(unet, multiple=2 ** len(strides))


def _cnn(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int) -> nn.Module:
    """Three conv-norm-ReLU layers (two stride-2), global average pool and a linear head."""
    conv = Conv[Conv.CONV, dims]
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((cin, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2)):
        layers += [conv(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                   get_norm_layer(name=norm, spatial_dims=dims, channels=c_out),
                   get_act_layer(name=ACT)]
    layers += [Pool[Pool.ADAPTIVEAVG, dims](1), nn.Flatten(), nn.Linear(4 * w, ncls)]
    return nn.Sequential(*layers)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet10": _resnet,
    "resnet18": _resnet,
    "resnet34": _resnet,
    "resnet50": _resnet,
    "densenet121": _densenet121,
    "unet": _unet,
    "cnn": _cnn,
}
_SEGMENTATION = frozenset({"unet"})

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
NORM_NAMES: tuple[str, ...] = tuple(_NORMS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"model={name!r}: unknown model; expected one of {', '.join(MODEL_NAMES)}")


def is_segmentation_model(name: str) -> bool:
    """True if the model outputs per-pixel logits (N, classes, *spatial) instead of (N, classes)."""
    _check_name(name)
    return name in _SEGMENTATION


def build_model(name: str, *, spatial_dims: int, in_channels: int, num_classes: int,
                norm: str = "group", width: int = 16) -> nn.Module:
    """Build a registry model; classifiers return logits (N, num_classes).

    ``width`` is the channel count of the first stage (later stages scale as 2w, 4w, 8w);
    ``num_classes`` is the number of output channels for the U-Net.
    """
    _check_name(name)
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims={spatial_dims!r}: expected one of "
                         f"{', '.join(map(str, SPATIAL_DIMS))}")
    if norm not in _NORMS:
        raise ValueError(f"norm={norm!r}: unknown normalisation; expected one of "
                         f"{', '.join(NORM_NAMES)}")
    for field, value, lo in (("in_channels", in_channels, 1), ("num_classes", num_classes, 1),
                             ("width", width, MIN_WIDTH)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{field}={value!r}: expected an integer >= {lo}")
    return _BUILDERS[name](name, spatial_dims, in_channels, num_classes, _NORMS[norm], width)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
