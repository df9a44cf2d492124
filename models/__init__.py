"""Backbones by name, heads, frozen teachers, checkpoints and teacher pretraining recipes."""

from models import cifar, imagenet  # noqa: F401  (fill the registry)
from models.base import (
    MODELS,
    Backbone,
    ModelSpec,
    build_model,
    describe_models,
    feature_dim,
    get_model_spec,
    model_names,
)
from models.teacher import FrozenTeacher

__all__ = [
    "MODELS",
    "Backbone",
    "FrozenTeacher",
    "ModelSpec",
    "build_model",
    "describe_models",
    "feature_dim",
    "get_model_spec",
    "model_names",
]
