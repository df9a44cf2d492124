"""Every registered backbone: forward shapes, claimed feature dims, stems, registry."""

from __future__ import annotations

import pytest
import torch

from models import MODELS, build_model, describe_models, model_names
from models.base import ModelSpec, count_parameters, probe_feature_dim, register_model

CIFAR = sorted(n for n, s in MODELS.items() if s.family == "cifar")
IMAGENET = sorted(n for n, s in MODELS.items() if s.family == "imagenet")


def test_registry_holds_the_zoo() -> None:
    assert set(CIFAR) == {
        "resnet8x4", "resnet32x4", "resnet20", "resnet32", "resnet56", "resnet110",
        "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "MobileNetV2", "ShuffleV1",
        "ShuffleV2",
    }  # fmt: skip
    assert set(IMAGENET) == {
        "resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b0",
        "mobilenet_v3_large",
    }  # fmt: skip


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_models_forward(name: str) -> None:
    torch.manual_seed(0)
    spec = MODELS[name]
    model = build_model(name, num_classes=7)
    assert model.arch == name and model.in_channels == 3
    for size in (32, 16, 8):
        assert probe_feature_dim(model, size) == spec.feature_dim == model.feature_dim
    x = torch.randn(2, 3, 16, 16)
    feats = model(x)  # train mode: BatchNorm with batch statistics
    assert feats.shape == (2, spec.feature_dim)
    assert model.forward_logits(feats).shape == (2, 7)
    gray = build_model(name, num_classes=None, in_channels=1)
    assert gray.classifier is None
    assert probe_feature_dim(gray, 16, in_channels=1) == spec.feature_dim
    with pytest.raises(ValueError, match="without a classifier"):
        gray.forward_logits(torch.zeros(2, spec.feature_dim))


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_models_forward(name: str) -> None:
    spec = MODELS[name]
    model = build_model(name, num_classes=5)
    assert probe_feature_dim(model, 64) == spec.feature_dim
    model.eval()
    with torch.no_grad():
        assert model.forward_logits(model(torch.randn(2, 3, 64, 64))).shape == (2, 5)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenet_v3_large"])
def test_imagenet_stem_honours_in_channels(name: str) -> None:
    model = build_model(name, in_channels=1)
    assert probe_feature_dim(model, 64, in_channels=1) == MODELS[name].feature_dim


# Parameter counts with 100 classes as published for the CRD / SSKD zoo (millions).
PUBLISHED_PARAMS_M = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "resnet20": 0.28, "resnet56": 0.86,
    "resnet110": 1.74, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26, "vgg8": 3.96,
    "vgg13": 9.46, "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_cifar_parameter_counts_match_reference(name: str) -> None:
    got = count_parameters(build_model(name, num_classes=100)) / 1e6
    assert got == pytest.approx(PUBLISHED_PARAMS_M[name], abs=0.01)


def test_reference_parameter_names_are_kept() -> None:
    """Module names follow RepDistiller so its checkpoints load (classifier aside)."""
    expected = {
        "resnet8x4": "layer1.0.downsample.0.weight",
        "wrn_40_2": "block2.layer.0.convShortcut.weight",
        "vgg13": "block4.4.running_var",
        "MobileNetV2": "blocks.6.0.conv.7.running_mean",
        "ShuffleV1": "layer3.3.conv3.weight",
        "ShuffleV2": "layer1.0.conv5.weight",
        "resnet50": "layer4.2.bn3.weight",
        "efficientnet_b0": "features.8.0.weight",
    }
    for name, key in expected.items():
        assert key in build_model(name).state_dict(), name


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*resnet20"):
        build_model("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_model(ModelSpec("resnet20", "cifar", 64, MODELS["resnet20"].builder))
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet20", num_classes=0)


def test_describe_models() -> None:
    rows = describe_models()
    assert [r["name"] for r in rows] == model_names()
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet8x4"]["feature_dim"] == 256
    assert by_name["resnet50"]["family"] == "imagenet"
    assert all(r["params"] > 0 and r["description"] for r in rows)
