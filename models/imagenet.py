"""ImageNet-style backbones: torchvision constructors with ``weights=None``.

The torchvision modules are re-attached under their original names (``conv1``, ``layer1``,
``features``...) so that torchvision / MoCo state dicts load without renaming; only the
classifier differs (ours is ``classifier``, see each class's ``checkpoint_aliases``). Nothing is
downloaded here: pretrained weights go through :mod:`models.hub`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar, cast

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from models.base import Backbone, ModelSpec, register_model


def _replace_stem(parent: nn.Module, attr: str, in_channels: int) -> None:
    """Swap ``parent.<attr>`` (a Conv2d) for one reading ``in_channels`` channels."""
    old = getattr(parent, attr)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"expected a Conv2d stem, got {type(old).__name__}")
    if old.in_channels == in_channels:
        return
    pair = tuple[int, int]
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=cast(pair, old.kernel_size),
        stride=cast(pair, old.stride),
        padding=cast(pair, old.padding),
        dilation=cast(pair, old.dilation),
        groups=old.groups,
        bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    setattr(parent, attr, new)


class TorchvisionResNet(Backbone):
    """torchvision ResNet minus ``fc``; pooled features of the last stage."""

    checkpoint_aliases: ClassVar[dict[str, str | None]] = {"fc.": "classifier."}

    def __init__(self, name: str, num_classes: int | None, in_channels: int) -> None:
        net = tvm.get_model(name, weights=None)
        if not isinstance(net, tvm.ResNet):
            raise TypeError(f"{name} is not a torchvision ResNet")
        super().__init__(net.fc.in_features, num_classes)
        _replace_stem(net, "conv1", in_channels)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class TorchvisionConvNet(Backbone):
    """torchvision models shaped ``features -> avgpool -> classifier`` (EfficientNet,
    MobileNetV3); the classifier (with MobileNetV3's hidden 1280-d layer) is dropped."""

    def __init__(
        self, name: str, feature_dim: int, num_classes: int | None, in_channels: int
    ) -> None:
        net = tvm.get_model(name, weights=None)
        super().__init__(feature_dim, num_classes)
        features = net.features
        if not isinstance(features, nn.Sequential):
            raise TypeError(f"{name} has no Sequential 'features'")
        _replace_stem(features[0], "0", in_channels)  # first Conv2dNormActivation's conv
        self.features = features

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


class TorchvisionEfficientNet(TorchvisionConvNet):
    # torchvision: classifier = Sequential(Dropout, Linear(1280, 1000)).
    checkpoint_aliases: ClassVar[dict[str, str | None]] = {"classifier.1.": "classifier."}


class TorchvisionMobileNetV3(TorchvisionConvNet):
    # torchvision: Linear(960, 1280) -> Hardswish -> Dropout -> Linear(1280, 1000). The
    # pooled 960-d conv features are this backbone's output, so both layers are dropped.
    checkpoint_aliases: ClassVar[dict[str, str | None]] = {
        "classifier.0.": None,
        "classifier.3.": None,
    }


_Builder = Callable[[int | None, int], Backbone]

# name -> (feature dim, builder, description)
_ZOO: dict[str, tuple[int, _Builder, str]] = {
    "resnet18": (512, partial(TorchvisionResNet, "resnet18"), "torchvision ResNet-18"),
    "resnet34": (512, partial(TorchvisionResNet, "resnet34"), "torchvision ResNet-34"),
    "resnet50": (2048, partial(TorchvisionResNet, "resnet50"), "torchvision ResNet-50"),
    "resnet101": (2048, partial(TorchvisionResNet, "resnet101"), "torchvision ResNet-101"),
    "efficientnet_b0": (
        1280,
        partial(TorchvisionEfficientNet, "efficientnet_b0", 1280),
        "torchvision EfficientNet-B0",
    ),
    "mobilenet_v3_large": (
        960,
        partial(TorchvisionMobileNetV3, "mobilenet_v3_large", 960),
        "torchvision MobileNetV3-Large (pooled 960-d conv features)",
    ),
}

for _name, (_dim, _build, _desc) in _ZOO.items():
    register_model(ModelSpec(_name, "imagenet", _dim, _build, _desc))
