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
3x3 stem without max-pooling (`STEM_NAMES`): by default stride 2 (``stride2``: 28 px -> 14 px
stages 14, 7, 4, 2; what ../shared/yardstick uses, as accurate as stride 1 on the shared
validation splits at a third of the cost in 2D and an eighth in 3D, docs/recipes.md), or
``stride1`` (28 px kept), or MONAI's ImageNet stem (``imagenet``: 7x7 stride 2 + max-pool, for
images of 64 px and more). The segmentation nets pad their input to a multiple of their total
stride and crop the output back (`PaddedUNet`), so any spatial size works.

The classifiers (ResNet, DenseNet) first pass their input through `InputNorm` (no parameters;
default ``zscore``: each sample standardised on its own). The datasets give [0, 1]; fed raw to a
bias-free conv + GroupNorm whose groups span several channels, an input mean far from 0 becomes
a per-channel offset that the group statistics do not remove and that swamps the image's
structure: on the shared data the ResNet then stays at the majority class (docs/recipes.md).

Segmentation nets (output ``(N, num_classes, *spatial)``) and how ``width`` (w) scales them:

* ``unet``: MONAI UNet, one residual unit per level; w, 2w, 4w, 8w; total stride 8.
* ``basicunet``: MONAI BasicUNet; features (w, w, 2w, 4w, 8w, w); stride 16.
* ``attentionunet``: MONAI AttentionUnet; w, 2w, 4w, 8w; stride 8.
* ``unetplusplus``: MONAI BasicUNetPlusPlus, final output only; features as basicunet; stride 16.
* ``vnet``: MONAI VNet's blocks (MONAI fixes 16..256 channels); c, 2c, 4c, 8c, 16c with
  c = w/2 rounded up to a multiple of in_channels; stride 16.
* ``segresnet``: MONAI SegResNet, blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1); w, 2w, 4w,
  8w; stride 8.

At w=16 basicunet gets features (16, 16, 32, 64, 128, 16), half MONAI's default; vnet likewise
gets half of MONAI's VNet channels (c=8; its 5x5(x5) kernels make it by far the largest net:
~2.3M parameters in 2D at w=16), and w=32 reproduces MONAI's VNet. With instance norm the padded
side is at least twice the stride, so the deepest level keeps more than one voxel.

AttentionUnet and VNet hard-code BatchNorm (and AttentionUnet an InstanceNorm in its merge
convolutions); every norm layer of theirs is replaced by the requested one. MONAI's SegResNet
adds its residual in place (``x += identity``), and VNet and BasicUNet default to in-place
activations; all are made out-of-place after building (`_make_dp_safe`). AttentionUnet's
merge convolutions keep MONAI's PReLU, for which Opacus falls back to functorch per-sample
gradients inside hook mode.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from monai.networks.blocks.segresnet_block import ResBlock
from monai.networks.layers import Conv, Norm, Pool, get_act_layer, get_norm_layer
from monai.networks.nets import (
    AttentionUnet, BasicUNet, BasicUNetPlusPlus, DenseNet, ResNet, SegResNet, UNet,
)
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition
from torch import nn

from common.config import ConfigError

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


class InputNorm(nn.Module):
    """Maps the datasets' [0, 1] intensities to what the network trains on, per sample and
    without parameters (no state, nothing to aggregate; no record affects another's):

    * ``none``: unchanged;
    * ``pm1``: ``2x - 1``, i.e. [-1, 1];
    * ``zscore``: each sample's channel standardised to mean 0, std 1 over its pixels/voxels.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in INPUT_NORMS:
            raise ConfigError(f"input_norm={mode!r}: unknown; expected one of "
                              f"{', '.join(INPUT_NORMS)}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "pm1":
            return x * 2.0 - 1.0
        if self.mode == "zscore":
            dims = tuple(range(2, x.ndim))
            mean = x.mean(dim=dims, keepdim=True)
            std = x.std(dim=dims, keepdim=True, unbiased=False)
            return (x - mean) / (std + 1e-5)
        return x

    def extra_repr(self) -> str:
        return self.mode


INPUT_NORMS = ("none", "pm1", "zscore")
DEFAULT_INPUT_NORM = "zscore"


class _ResNet(ResNet):
    """MONAI ResNet that applies its ``norm`` inside the residual stages too, after `InputNorm`."""

    def __init__(self, *, norm: str | tuple, input_norm: str = DEFAULT_INPUT_NORM,
                 **kwargs) -> None:
        # Set before super().__init__(), which calls _make_layer; a plain attribute is allowed then.
        self._stage_norm = norm
        super().__init__(norm=norm, **kwargs)
        self.input_norm = InputNorm(input_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_norm(x))

    def _make_layer(self, block, planes, blocks, spatial_dims, shortcut_type, stride=1,
                    norm="batch") -> nn.Sequential:
        return super()._make_layer(block, planes, blocks, spatial_dims, shortcut_type, stride,
                                   norm=self._stage_norm)


# stem name -> (first conv's kernel size, its stride, max-pool after it?)
_STEM_LAYOUTS: dict[str, tuple[int, int, bool]] = {
    "stride1": (3, 1, False),
    "stride2": (3, 2, False),
    "imagenet": (7, 2, True),
}
STEM_NAMES: tuple[str, ...] = tuple(_STEM_LAYOUTS)
DEFAULT_STEM = "stride2"
_STEMMED = frozenset({"resnet10", "resnet18", "resnet34", "resnet50", "densenet121"})

_RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet10": (DPResNetBlock, [1, 1, 1, 1]),
    "resnet18": (DPResNetBlock, [2, 2, 2, 2]),
    "resnet34": (DPResNetBlock, [3, 4, 6, 3]),
    "resnet50": (DPResNetBottleneck, [3, 4, 6, 3]),
}


def _resnet(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int,
            stem: str, input_norm: str) -> nn.Module:
    block, layers = _RESNET_LAYOUTS[name]
    size, stride, pool = _STEM_LAYOUTS[stem]
    return _ResNet(block=block, layers=layers, block_inplanes=[w, 2 * w, 4 * w, 8 * w],
                   spatial_dims=dims, n_input_channels=cin, conv1_t_size=size,
                   conv1_t_stride=stride, no_max_pool=not pool, shortcut_type="B",
                   num_classes=ncls, act=ACT, norm=norm, input_norm=input_norm)


class _DenseNet(DenseNet):
    """MONAI DenseNet after `InputNorm`."""

    def __init__(self, *, input_norm: str = DEFAULT_INPUT_NORM, **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_norm = InputNorm(input_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_norm(x))


def _densenet121(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int,
                 stem: str, input_norm: str) -> nn.Module:
    """DenseNet-121 layout (6, 12, 24, 16) with 2w initial features and growth rate w/2."""
    init_features = 2 * w
    model = _DenseNet(spatial_dims=dims, in_channels=cin, out_channels=ncls,
                      init_features=init_features, growth_rate=max(2, w // 2),
                      block_config=(6, 12, 24, 16), act=ACT, norm=norm, input_norm=input_norm)
    if stem != "imagenet":
        # MONAI's stem (7x7 stride-2 conv + max-pool) shrinks 28 px to 7 px, too small for three
        # transitions; replace it by a 3x3 conv (stride 1 or 2) and no pooling.
        _, stride, _ = _STEM_LAYOUTS[stem]
        conv = Conv[Conv.CONV, dims](cin, init_features, kernel_size=3, stride=stride, padding=1,
                                     bias=False)
        nn.init.kaiming_normal_(conv.weight)
        model.features.conv0 = conv
        model.features.pool0 = nn.Identity()
    return model


class PaddedUNet(nn.Module):
    """A U-shaped net that zero-pads inputs to a multiple of its total stride and crops the output.

    Without this, a 28 px input hits 7 px after two stride-2 stages and the third gives 4 px,
    whose upsampled 8 px no longer matches the 7 px skip connection. ``min_size`` (if larger)
    is the smallest padded side: instance norm needs more than one voxel at the bottom level.
    """

    def __init__(self, unet: nn.Module, multiple: int, min_size: int = 0) -> None:
        super().__init__()
        self.unet = unet
        self.multiple = multiple
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        pad: list[int] = []
        for size in reversed(spatial):  # F.pad lists the last dim first
            target = max(size + (-size) % self.multiple, self.min_size)
            pad += [0, target - size]
        out = self.unet(F.pad(x, pad) if any(pad) else x)
        return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


def _padded(net: nn.Module, multiple: int, norm: str | tuple) -> PaddedUNet:
    """Wrap ``net``; with instance norm pad to at least 2 x ``multiple`` (2 voxels at the
    deepest level)."""
    is_instance = (norm[0] if isinstance(norm, tuple) else norm) == "instance"
    return PaddedUNet(net, multiple=multiple, min_size=2 * multiple if is_instance else 0)


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
               nn.GroupNorm)


def _replace_norms(model: nn.Module, norm: str | tuple, dims: int) -> None:
    """Swap every norm layer of ``model`` for ``norm`` with the same channel count."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, _NORM_TYPES):
                channels = child.num_channels if isinstance(child, nn.GroupNorm) \
                    else child.num_features
                setattr(parent, child_name,
                        get_norm_layer(name=norm, spatial_dims=dims, channels=channels))


class DPSegResBlock(ResBlock):
    """MONAI's SegResNet block with an out-of-place residual add (Opacus-safe)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act(self.norm1(x)))
        out = self.conv2(self.act(self.norm2(out)))
        return out + x


def _make_dp_safe(model: nn.Module) -> nn.Module:
    """Turn off every in-place activation/dropout and swap in-place residual blocks.

    An in-place op on a module's output breaks the full backward hooks Opacus installs.
    """
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
        if type(module) is ResBlock:
            module.__class__ = DPSegResBlock   # same parameters, out-of-place forward
    return model


def _unet(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int) -> nn.Module:
    strides = (2, 2, 2)
    unet = UNet(spatial_dims=dims, in_channels=cin, out_channels=ncls,
                channels=(w, 2 * w, 4 * w, 8 * w), strides=strides, num_res_units=1,
                act=ACT, norm=norm)
    return _padded(unet, 2 ** len(strides), norm)


def _basic_features(w: int) -> tuple[int, ...]:
    return (w, w, 2 * w, 4 * w, 8 * w, w)


def _basicunet(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int) -> nn.Module:
    net = BasicUNet(spatial_dims=dims, in_channels=cin, out_channels=ncls,
                    features=_basic_features(w), act=ACT, norm=norm)
    return _padded(net, 16, norm)   # four max-pooling stages


class _UNetPlusPlus(BasicUNetPlusPlus):
    """BasicUNet++ returning only its final (full-depth) logits, without deep-supervision heads.

    The three auxiliary 1x1 heads would get no gradient (their outputs are discarded), and
    parameters without a per-sample gradient upset Opacus' optimizer, so they are removed.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(deep_supervision=False, **kwargs)
        self.final_conv_0_1 = nn.Identity()
        self.final_conv_0_2 = nn.Identity()
        self.final_conv_0_3 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[-1]


def _unetplusplus(name: str, dims: int, cin: int, ncls: int, norm: str | tuple,
                  w: int) -> nn.Module:
    net = _UNetPlusPlus(spatial_dims=dims, in_channels=cin, out_channels=ncls,
                        features=_basic_features(w), act=ACT, norm=norm)
    return _padded(net, 16, norm)


def _attentionunet(name: str, dims: int, cin: int, ncls: int, norm: str | tuple,
                   w: int) -> nn.Module:
    strides = (2, 2, 2)
    net = AttentionUnet(spatial_dims=dims, in_channels=cin, out_channels=ncls,
                        channels=(w, 2 * w, 4 * w, 8 * w), strides=strides)
    _replace_norms(net, norm, dims)   # MONAI hard-codes BatchNorm (and InstanceNorm in merges)
    return _padded(net, 2 ** len(strides), norm)


class _VNet(nn.Module):
    """MONAI's VNet layout built from its transition blocks with ``c`` channels at the top.

    MONAI's ``VNet`` fixes c = 16; c = 16 gives the same network (same module names).
    Dropout is MONAI's default (0.5 in the two deepest down and up transitions) with the
    dropout dimensionality matching the input: MONAI's default Dropout3d would treat a 2D
    batch as one unbatched volume.
    """

    def __init__(self, dims: int, cin: int, ncls: int, c: int) -> None:
        super().__init__()
        act = ("elu", {"inplace": False})
        self.in_tr = InputTransition(dims, cin, c, act)
        self.down_tr32 = DownTransition(dims, c, 1, act, dropout_dim=dims)
        self.down_tr64 = DownTransition(dims, 2 * c, 2, act, dropout_dim=dims)
        self.down_tr128 = DownTransition(dims, 4 * c, 3, act, dropout_prob=0.5, dropout_dim=dims)
        self.down_tr256 = DownTransition(dims, 8 * c, 2, act, dropout_prob=0.5, dropout_dim=dims)
        self.up_tr256 = UpTransition(dims, 16 * c, 16 * c, 2, act, dropout_prob=(0.5, 0.5),
                                     dropout_dim=dims)
        self.up_tr128 = UpTransition(dims, 16 * c, 8 * c, 2, act, dropout_prob=(0.5, 0.5),
                                     dropout_dim=dims)
        self.up_tr64 = UpTransition(dims, 8 * c, 4 * c, 1, act, dropout_dim=dims)
        self.up_tr32 = UpTransition(dims, 4 * c, 2 * c, 1, act, dropout_dim=dims)
        self.out_tr = OutputTransition(dims, 2 * c, ncls, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out16 = self.in_tr(x)
        out32 = self.down_tr32(out16)
        out64 = self.down_tr64(out32)
        out128 = self.down_tr128(out64)
        out256 = self.down_tr256(out128)
        x = self.up_tr256(out256, out128)
        x = self.up_tr128(x, out64)
        x = self.up_tr64(x, out32)
        x = self.up_tr32(x, out16)
        return self.out_tr(x)


def _vnet(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int) -> nn.Module:
    # Half the width (see the module docstring); the input transition adds the input repeated
    # along channels, so c must be a multiple of cin.
    c = max(2, w // 2)
    c += (-c) % cin
    net = _VNet(dims, cin, ncls, c)
    _replace_norms(net, norm, dims)   # MONAI hard-codes BatchNorm
    return _padded(net, 16, norm)


def _segresnet(name: str, dims: int, cin: int, ncls: int, norm: str | tuple, w: int) -> nn.Module:
    net = SegResNet(spatial_dims=dims, in_channels=cin, out_channels=ncls, init_filters=w,
                    blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), act=ACT, norm=norm)
    return _padded(net, 8, norm)   # three stride-2 stages


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
    "cnn": _cnn,
    "unet": _unet,
    "basicunet": _basicunet,
    "attentionunet": _attentionunet,
    "unetplusplus": _unetplusplus,
    "vnet": _vnet,
    "segresnet": _segresnet,
}
_SEGMENTATION = frozenset({"unet", "basicunet", "attentionunet", "unetplusplus", "vnet",
                           "segresnet"})

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
NORM_NAMES: tuple[str, ...] = tuple(_NORMS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ConfigError(f"model={name!r}: unknown model; expected one of "
                          f"{', '.join(MODEL_NAMES)}")


def is_segmentation_model(name: str) -> bool:
    """True if the model outputs per-pixel logits (N, classes, *spatial) instead of (N, classes)."""
    _check_name(name)
    return name in _SEGMENTATION


def build_model(name: str, *, spatial_dims: int, in_channels: int, num_classes: int,
                norm: str = "group", width: int = 16, stem: str = DEFAULT_STEM,
                input_norm: str = DEFAULT_INPUT_NORM) -> nn.Module:
    """Build a registry model; classifiers return logits (N, num_classes).

    ``width`` is the channel count of the first stage (later stages scale as 2w, 4w, 8w; see
    the module docstring for each segmentation net); ``num_classes`` is the number of output
    channels of the segmentation nets, which accept any spatial size.
    """
    _check_name(name)
    if spatial_dims not in SPATIAL_DIMS:
        raise ConfigError(f"spatial_dims={spatial_dims!r}: expected one of "
                          f"{', '.join(map(str, SPATIAL_DIMS))}")
    if norm not in _NORMS:
        raise ConfigError(f"norm={norm!r}: unknown normalisation; expected one of "
                          f"{', '.join(NORM_NAMES)}")
    for field, value, lo in (("in_channels", in_channels, 1), ("num_classes", num_classes, 1),
                             ("width", width, MIN_WIDTH)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            # width is a run setting; channels and classes come from the data
            error = ConfigError if field == "width" else ValueError
            raise error(f"{field}={value!r}: expected an integer >= {lo}")
    if stem not in _STEM_LAYOUTS:
        raise ConfigError(f"stem={stem!r}: unknown stem; expected one of {', '.join(STEM_NAMES)}")
    if name == "densenet121" and stem == DEFAULT_STEM:
        # DenseNet's three transitions halve again: after a stride-2 stem a 16-28 px image
        # reaches its last block at 1x1, where a GroupNorm with one channel per group holds a
        # single value (per-sample gradients of one record then fail). It keeps 28 px.
        stem = "stride1"
    extra = {"stem": stem, "input_norm": input_norm} if name in _STEMMED else {}
    model = _BUILDERS[name](name, spatial_dims, in_channels, num_classes, _NORMS[norm], width,
                            **extra)
    return _make_dp_safe(model)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
