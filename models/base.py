"""The backbone contract every registered model follows, and the model registry.

A backbone maps images to pooled features ``(B, feature_dim)``; when it was built with a
classifier it also maps those features to logits. The feature dimension is known without a
forward pass so that heads can be built from the registry alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


class Backbone(nn.Module):
    """Pooled-feature network with an optional linear classifier on top.

    Subclasses implement :meth:`forward_features`; ``classifier`` is ``None`` when the model
    was built without classes.
    """

    feature_dim: int
    classifier: nn.Module | None
    # Key prefixes the reference implementation uses for its classifier, mapped onto ours
    # (``"fc." -> "classifier."``) or to ``None`` (dropped: e.g. a two-layer ImageNet head),
    # so that published checkpoints load (models/weights.py).
    checkpoint_aliases: ClassVar[dict[str, str | None]] = {}

    def __init__(self, feature_dim: int, num_classes: int | None) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.classifier = nn.Linear(feature_dim, num_classes) if num_classes else None
        # Set by build_model: what a checkpoint needs to rebuild this model.
        self.arch: str | None = None
        self.in_channels: int = 3

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_logits(self, features: Tensor) -> Tensor:
        if self.classifier is None:
            raise ValueError(f"{type(self).__name__} was built without a classifier")
        out: Tensor = self.classifier(features)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    @property
    def has_classifier(self) -> bool:
        return self.classifier is not None


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build a model and what it exposes without building it."""

    name: str
    family: str  # "cifar" (32x32-style stems) or "imagenet" (224x224-style stems)
    feature_dim: int
    builder: Callable[[int | None, int], Backbone]  # (num_classes, in_channels) -> Backbone
    description: str = ""


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    MODELS[spec.name] = spec
    return spec


def model_names() -> list[str]:
    return sorted(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(model_names())}") from None


def feature_dim(name: str) -> int:
    return get_model_spec(name).feature_dim


def build_model(name: str, num_classes: int | None = None, in_channels: int = 3) -> Backbone:
    if num_classes is not None and num_classes <= 0:
        raise ValueError(f"num_classes must be positive or None, got {num_classes}")
    if in_channels <= 0:
        raise ValueError(f"in_channels must be positive, got {in_channels}")
    model = get_model_spec(name).builder(num_classes, in_channels)
    model.arch = name
    model.in_channels = in_channels
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_models() -> list[dict[str, Any]]:
    """One row per registered model (for ``ukd models``); builds each model once on CPU."""
    rows: list[dict[str, Any]] = []
    for name in model_names():
        spec = MODELS[name]
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "feature_dim": spec.feature_dim,
                "params": count_parameters(build_model(name)),
                "description": spec.description,
            }
        )
    return rows


@torch.no_grad()
def probe_feature_dim(model: Backbone, image_size: int, in_channels: int = 3) -> int:
    """Feature dim measured by a forward pass; tests compare it with the claimed one."""
    was_training = model.training
    model.eval()
    out = model.forward_features(torch.zeros(2, in_channels, image_size, image_size))
    model.train(was_training)
    return int(out.shape[1])
