"""Tiny fake backbones and contexts for the sskd / disco / bingo / selective tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losses.base import ObjectiveContext, StepInputs
from models.base import Backbone
from models.teacher import FrozenTeacher


class TinyNet(Backbone):
    """conv3x3 -> (BatchNorm) -> ReLU -> global average pool: ``B x dim`` features."""

    def __init__(
        self, dim: int, num_classes: int | None = None, in_channels: int = 3, bn: bool = True
    ) -> None:
        super().__init__(dim, num_classes)
        self.conv = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.bn: nn.Module = nn.BatchNorm2d(dim) if bn else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def make_context(
    student: Backbone,
    teacher: FrozenTeacher,
    num_classes: int | None = None,
    dataset_size: int = 32,
) -> ObjectiveContext:
    return ObjectiveContext(
        student_dim=student.feature_dim,
        teacher_dim=teacher.feature_dim,
        teacher_embedding_dim=teacher.embedding_dim,
        num_classes=num_classes,
        teacher_has_classifier=teacher.has_classifier,
        student_has_classifier=student.has_classifier,
        dataset_size=dataset_size,
    )


def make_step(
    views: list[Tensor],
    student: Backbone,
    teacher: FrozenTeacher,
    labels: Tensor | None = None,
    **kwargs: Any,
) -> StepInputs:
    batch = views[0].shape[0]
    return StepInputs(
        views=views,
        indices=torch.arange(batch),
        labels=labels,
        student=student,
        teacher=teacher,
        **kwargs,
    )
