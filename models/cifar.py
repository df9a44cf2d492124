"""CIFAR-style backbones of the CRD / SSKD model zoo (RepDistiller definitions).

Architectures follow HobbitLong/RepDistiller ``models/*.py`` (also used by the official SSKD
code); module names are kept identical to that code so that its published teacher checkpoints
load through :func:`models.weights.load_backbone_weights` (its ``fc`` / ``linear`` /
``classifier.0`` map onto our ``classifier``). Two deliberate differences:

- Pooling is adaptive (the reference uses fixed ``AvgPool2d(8)`` / ``avg_pool2d(4)``, which
  only works at 32x32); at 32x32 the result is the same, and 16x16 digits work too.
- The stem takes ``in_channels`` (1 for grayscale digits) instead of a hard-coded 3.

``vgg8`` / ``vgg13`` are the batch-norm variants, as RepDistiller's ``model_dict`` maps them;
``MobileNetV2`` is CRD's ``mobile_half`` (expansion 6, width 0.5, 1280-d head conv).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import Backbone, ModelSpec, register_model


def _conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=bias)


def _conv1x1(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, groups=groups, bias=False)


def _init_weights(module: nn.Module) -> None:
    """He init for convs (fan-out, as the reference code), unit BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _pool(x: Tensor) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ----------------------------------------------------------------------------- ResNet (CIFAR)


class _BasicBlock(nn.Module):
    """Post-activation residual block: conv-bn-relu-conv-bn (+ projected shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(Backbone):
    """ResNet-(6n+2) for 32x32 inputs: a 3x3 stem and three stages (strides 1, 2, 2)."""

    checkpoint_aliases: ClassVar[dict[str, str | None]] = {"fc.": "classifier."}

    def __init__(
        self, depth: int, widths: Sequence[int], num_classes: int | None, in_channels: int
    ) -> None:
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        super().__init__(widths[3], num_classes)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], n, 1)
        self.layer2 = self._stage(widths[1], widths[2], n, 2)
        self.layer3 = self._stage(widths[2], widths[3], n, 2)
        _init_weights(self)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [_BasicBlock(cin, cout, stride)]
        layers += [_BasicBlock(cout, cout, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return _pool(x)


# ----------------------------------------------------------------------------- Wide ResNet


class _WideBlock(nn.Module):
    """Pre-activation block of WRN; the 1x1 shortcut sees the activated input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        # camelCase kept: it is the parameter name in the reference checkpoints.
        self.convShortcut: nn.Module | None = None
        if cin != cout or stride != 1:
            self.convShortcut = _conv1x1(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        out: Tensor = self.conv2(F.relu(self.bn2(self.conv1(a))))
        shortcut: Tensor = x if self.convShortcut is None else self.convShortcut(a)
        return out + shortcut


class _WideStage(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int, stride: int) -> None:
        super().__init__()
        layers = [_WideBlock(cin, cout, stride)]
        layers += [_WideBlock(cout, cout, 1) for _ in range(blocks - 1)]
        self.layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        return out


class WideResNet(Backbone):
    """WRN-depth-k: widths 16, 16k, 32k, 64k; (depth - 4) / 6 blocks per stage."""

    checkpoint_aliases: ClassVar[dict[str, str | None]] = {"fc.": "classifier."}

    def __init__(self, depth: int, widen: int, num_classes: int | None, in_channels: int) -> None:
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        super().__init__(widths[3], num_classes)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.block1 = _WideStage(widths[0], widths[1], n, 1)
        self.block2 = _WideStage(widths[1], widths[2], n, 2)
        self.block3 = _WideStage(widths[2], widths[3], n, 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        _init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return _pool(F.relu(self.bn1(x)))


# ----------------------------------------------------------------------------- VGG (BN)

_VGG_CFGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


class CifarVGG(Backbone):
    """Five conv blocks (conv-bn-relu, last relu applied outside) with 2x2 max pools between.

    As in the reference, the pool after block 3 only runs for inputs of 64 px or more, so a
    32x32 image reaches block 4 at 4x4; the last pool is global average.
    """

    _POOL3_MIN_SIZE = 64

    def __init__(
        self, cfg: Sequence[Sequence[int]], num_classes: int | None, in_channels: int
    ) -> None:
        super().__init__(cfg[-1][-1], num_classes)
        cins = [in_channels] + [c[-1] for c in cfg[:-1]]
        self.block0 = self._block(cins[0], cfg[0])
        self.block1 = self._block(cins[1], cfg[1])
        self.block2 = self._block(cins[2], cfg[2])
        self.block3 = self._block(cins[3], cfg[3])
        self.block4 = self._block(cins[4], cfg[4])
        _init_weights(self)

    @staticmethod
    def _block(cin: int, widths: Sequence[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for w in widths:
            layers += [_conv3x3(cin, w, bias=True), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
        return nn.Sequential(*layers[:-1])  # the caller applies the last ReLU

    def forward_features(self, x: Tensor) -> Tensor:
        size = x.shape[-1]
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if size >= self._POOL3_MIN_SIZE:
            x = F.max_pool2d(x, 2)
        return _pool(F.relu(self.block4(x)))


# ----------------------------------------------------------------------------- MobileNetV2


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1); residual when shapes match.

    The expansion conv is kept even for ratio 1, as in the reference.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, 1, 0, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return x + out if self.use_residual else out


# (expansion, channels, blocks, first stride); expansion None means "the model's T".
_MBV2_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class CifarMobileNetV2(Backbone):
    """MobileNetV2 of "Knowledge Distillation via Route Constrained Optimization" (CRD zoo)."""

    checkpoint_aliases: ClassVar[dict[str, str | None]] = {"classifier.0.": "classifier."}

    def __init__(
        self, expansion: int, width: float, num_classes: int | None, in_channels: int
    ) -> None:
        last = int(1280 * width) if width > 1.0 else 1280
        super().__init__(last, num_classes)
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        stages: list[nn.Module] = []
        for t, c, n, s in _MBV2_STAGES:
            cout = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(
                    _InvertedResidual(cin, cout, s if i == 0 else 1, expansion if t is None else t)
                )
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        _init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return _pool(self.conv2(x))


# ----------------------------------------------------------------------------- ShuffleNet V1


class _ShuffleV1Block(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1; stride 2 concatenates an
    average-pooled shortcut instead of adding it."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, group_first: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.stride = stride
        # The very first block sees only 24 stem channels: its first 1x1 is not grouped.
        self.first_groups = groups if group_first else 1
        self.conv1 = _conv1x1(cin, mid, groups=self.first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv1x1(mid, cout, groups=groups)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = _channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(Backbone):
    checkpoint_aliases: ClassVar[dict[str, str | None]] = {"linear.": "classifier."}

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        groups: int,
        num_classes: int | None,
        in_channels: int,
    ) -> None:
        super().__init__(widths[-1], num_classes)
        stem = 24
        self.conv1 = _conv1x1(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        stages: list[nn.Sequential] = []
        for s, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            layers: list[nn.Module] = []
            for i in range(n):
                # The stride-2 block concatenates its input, so it only produces the rest.
                out = width - cin if i == 0 else width
                layers.append(
                    _ShuffleV1Block(
                        cin, out, 2 if i == 0 else 1, groups, group_first=not (s == 0 and i == 0)
                    )
                )
                cin = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        _init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return _pool(self.layer3(self.layer2(self.layer1(x))))


# ----------------------------------------------------------------------------- ShuffleNet V2


class _ShuffleV2Unit(nn.Module):
    """Channel split: half passes through, half goes 1x1 -> depthwise 3x3 -> 1x1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = _conv1x1(c, c)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = _conv1x1(c, c)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1] // 2
        keep, branch = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return _channel_shuffle(torch.cat([keep, out], 1), 2)


class _ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches downsample, outputs are concatenated then shuffled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = _conv1x1(cin, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv1x1(cin, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv1x1(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return _channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(Backbone):
    checkpoint_aliases: ClassVar[dict[str, str | None]] = {"linear.": "classifier."}

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        num_classes: int | None,
        in_channels: int,
    ) -> None:
        super().__init__(widths[-1], num_classes)
        stem = 24
        self.conv1 = _conv1x1(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        stages: list[nn.Sequential] = []
        # Each stage: one down unit, then ``n`` regular units (the reference's count).
        for width, n in zip(widths[:3], blocks, strict=True):
            stages.append(
                nn.Sequential(
                    _ShuffleV2Down(cin, width), *[_ShuffleV2Unit(width) for _ in range(n)]
                )
            )
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = _conv1x1(cin, widths[3])
        self.bn2 = nn.BatchNorm2d(widths[3])
        _init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return _pool(F.relu(self.bn2(self.conv2(x))))


# ----------------------------------------------------------------------------- registry

_Builder = Callable[[int | None, int], Backbone]


def _resnet(depth: int, widths: tuple[int, int, int, int]) -> _Builder:
    return partial(CifarResNet, depth, widths)


def _wrn(depth: int, widen: int) -> _Builder:
    return partial(WideResNet, depth, widen)


def _vgg(name: str) -> _Builder:
    return partial(CifarVGG, _VGG_CFGS[name])


_NARROW = (16, 16, 32, 64)
_WIDE4 = (32, 64, 128, 256)

# name -> (feature dim, builder, description)
_ZOO: dict[str, tuple[int, _Builder, str]] = {
    "resnet8x4": (256, _resnet(8, _WIDE4), "CIFAR ResNet-8, 4x wider (CRD student)"),
    "resnet32x4": (256, _resnet(32, _WIDE4), "CIFAR ResNet-32, 4x wider (CRD teacher)"),
    "resnet20": (64, _resnet(20, _NARROW), "CIFAR ResNet-20"),
    "resnet32": (64, _resnet(32, _NARROW), "CIFAR ResNet-32"),
    "resnet56": (64, _resnet(56, _NARROW), "CIFAR ResNet-56"),
    "resnet110": (64, _resnet(110, _NARROW), "CIFAR ResNet-110"),
    "wrn_16_2": (128, _wrn(16, 2), "Wide ResNet 16-2"),
    "wrn_40_1": (64, _wrn(40, 1), "Wide ResNet 40-1"),
    "wrn_40_2": (128, _wrn(40, 2), "Wide ResNet 40-2"),
    "vgg8": (512, _vgg("vgg8"), "VGG-8 with BatchNorm"),
    "vgg13": (512, _vgg("vgg13"), "VGG-13 with BatchNorm"),
    "MobileNetV2": (
        1280,
        partial(CifarMobileNetV2, 6, 0.5),
        "MobileNetV2, width 0.5 (CRD mobile_half)",
    ),
    "ShuffleV1": (
        960,
        partial(ShuffleNetV1, (240, 480, 960), (4, 8, 4), 3),
        "ShuffleNet V1, 3 groups",
    ),
    "ShuffleV2": (
        1024,
        partial(ShuffleNetV2, (116, 232, 464, 1024), (3, 7, 3)),
        "ShuffleNet V2 1x",
    ),
}

for _name, (_dim, _build, _desc) in _ZOO.items():
    register_model(ModelSpec(_name, "cifar", _dim, _build, _desc))
