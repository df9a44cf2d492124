"""Shared fixtures for the loss tests: tiny fake backbones, frozen teachers, contexts, steps.

Images are ``B x 3 x 2 x 2``; a fake backbone is ``flatten -> Linear(12, dim)`` with an
optional BatchNorm1d (buffers, train / eval behaviour) and an optional classifier.
Fixtures return factories so that a test states the dims it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import pytest
import torch
from torch import Tensor, nn

from losses.base import LossTerms, Objective, ObjectiveContext, StepInputs
from models.base import Backbone
from models.heads import mlp_head
from models.teacher import FrozenTeacher

IMAGE_SHAPE = (3, 2, 2)
IN_DIM = 12


class FakeBackbone(Backbone):
    def __init__(self, dim: int, num_classes: int | None = None, batchnorm: bool = False) -> None:
        super().__init__(dim, num_classes)
        self.body = nn.Linear(IN_DIM, dim)
        self.norm: nn.Module = nn.BatchNorm1d(dim) if batchnorm else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        out: Tensor = self.norm(self.body(x.flatten(1)))
        return out


class MakeBackbone(Protocol):
    def __call__(
        self, dim: int, num_classes: int | None = None, batchnorm: bool = False, seed: int = 0
    ) -> FakeBackbone: ...


class MakeTeacher(Protocol):
    def __call__(
        self,
        dim: int,
        embedding_dim: int | None = None,
        num_classes: int | None = None,
        seed: int = 1,
    ) -> FrozenTeacher: ...


class MakeCtx(Protocol):
    def __call__(
        self, student: Backbone, teacher: FrozenTeacher, dataset_size: int = 64
    ) -> ObjectiveContext: ...


class MakeStep(Protocol):
    def __call__(
        self,
        student: Backbone,
        teacher: FrozenTeacher,
        batch: int = 6,
        views: int = 1,
        labels: Tensor | None = None,
        epoch: int = 0,
        seed: int = 2,
    ) -> StepInputs: ...


AssertTerms = Callable[[Objective[Any], StepInputs], LossTerms]


@pytest.fixture
def make_backbone() -> MakeBackbone:
    def make(
        dim: int, num_classes: int | None = None, batchnorm: bool = False, seed: int = 0
    ) -> FakeBackbone:
        torch.manual_seed(seed)
        return FakeBackbone(dim, num_classes, batchnorm)

    return make


@pytest.fixture
def make_teacher() -> MakeTeacher:
    """``make_teacher(dim, embedding_dim=None, num_classes=None)``: a FrozenTeacher whose SSL
    head is ``mlp_head(dim, dim, embedding_dim)`` when ``embedding_dim`` is given."""

    def make(
        dim: int, embedding_dim: int | None = None, num_classes: int | None = None, seed: int = 1
    ) -> FrozenTeacher:
        torch.manual_seed(seed)
        backbone = FakeBackbone(dim, num_classes)
        head = mlp_head(dim, dim, embedding_dim) if embedding_dim else None
        return FrozenTeacher(backbone, head)

    return make


@pytest.fixture
def make_ctx() -> MakeCtx:
    def make(student: Backbone, teacher: FrozenTeacher, dataset_size: int = 64) -> ObjectiveContext:
        return ObjectiveContext(
            student_dim=student.feature_dim,
            teacher_dim=teacher.feature_dim,
            teacher_embedding_dim=teacher.embedding_dim,
            num_classes=student.num_classes,
            teacher_has_classifier=teacher.has_classifier,
            student_has_classifier=student.has_classifier,
            dataset_size=dataset_size,
        )

    return make


@pytest.fixture
def make_step() -> MakeStep:
    """``make_step(student, teacher, batch=6, views=1, labels=None, epoch=0, seed=2)``."""

    def make(
        student: Backbone,
        teacher: FrozenTeacher,
        batch: int = 6,
        views: int = 1,
        labels: Tensor | None = None,
        epoch: int = 0,
        seed: int = 2,
    ) -> StepInputs:
        gen = torch.Generator().manual_seed(seed)
        images = [torch.randn(batch, *IMAGE_SHAPE, generator=gen) for _ in range(views)]
        return StepInputs(
            views=images,
            indices=torch.arange(batch),
            labels=labels,
            student=student,
            teacher=teacher,
            epoch=epoch,
        )

    return make


def _assert_grad_flow(objective: Objective[Any], step: StepInputs) -> LossTerms:
    """Backward through the total: the student's feature path gets non-zero gradients, the
    teacher none at all."""
    out = objective.compute(step)
    assert torch.isfinite(out.total)
    out.total.backward()
    for p in cast(FrozenTeacher, step.teacher).parameters():
        assert not p.requires_grad
        assert p.grad is None
    grads = [p.grad for name, p in step.student.named_parameters() if "classifier" not in name]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    return out


@pytest.fixture
def assert_grad_flow() -> AssertTerms:
    return _assert_grad_flow


def _assert_finite_bf16(objective: Objective[Any], step: StepInputs) -> LossTerms:
    """compute() under CPU bfloat16 autocast gives finite terms and a finite backward."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective.compute(step)
    for name, value in out.terms.items():
        assert torch.isfinite(value).all(), name
    out.total.backward()
    for p in step.student.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()
    return out


@pytest.fixture
def assert_finite_bf16() -> AssertTerms:
    return _assert_finite_bf16
