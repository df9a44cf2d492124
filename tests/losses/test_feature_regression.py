"""mse / cosine feature regression: values by hand, head only when dims differ, gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
from torch import nn

from common.fields import Config
from losses.base import get_objective
from losses.feature_regression import (
    MSE,
    Cosine,
    CosineParams,
    MSEParams,
    _Regression,
    mse_loss,
)
from tests.losses.conftest import AssertTerms, MakeBackbone, MakeCtx, MakeStep, MakeTeacher

S = [[1.0, 2.0, 2.0], [3.0, 0.0, 4.0]]
T = [[2.0, 1.0, 2.0], [0.0, 3.0, 4.0]]


def test_mse_raw_by_hand() -> None:
    # squared differences: row 0: 1 + 1 + 0, row 1: 9 + 9 + 0 -> 20 over 6 elements
    assert mse_loss(torch.tensor(S), torch.tensor(T)).item() == pytest.approx(20 / 6)


def test_mse_normalised_is_a_rescaled_cosine() -> None:
    # unit rows: ||a - b||^2 = 2 - 2 cos; the mean over B * D elements gives (2/D)(1 - mean cos)
    mean_cos = (8 / 9 + 16 / 25) / 2
    expected = (2 / 3) * (1 - mean_cos)
    got = mse_loss(torch.tensor(S), torch.tensor(T), normalise=True)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_mse_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="B x D"):
        mse_loss(torch.ones(2, 3), torch.ones(2, 2))


@pytest.mark.parametrize("cls", [MSE, Cosine])
def test_head_only_when_dims_differ(
    cls: type[_Regression[Any]],
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
) -> None:
    params = cast("type[MSEParams | CosineParams]", cls.Params)(hidden_dim=16)
    same = cls(params, make_ctx(make_backbone(8), make_teacher(8)))
    assert isinstance(same.head, nn.Identity)
    diff = cls(params, make_ctx(make_backbone(4), make_teacher(8)))
    assert isinstance(diff.head, nn.Sequential)
    assert diff.head[0].in_features == 4 and diff.head[-1].out_features == 8


def test_mse_compute_by_hand(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(8), make_teacher(8)  # same dims: no head
    obj = MSE(MSEParams(weight=2.0), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=3)
    out = obj.compute(step)
    assert out.weights == {"mse": 2.0}
    s = student.forward_features(step.views[0]).tolist()
    t = teacher.features(step.views[0]).tolist()
    expected = (
        sum((a - b) ** 2 for rs, rt in zip(s, t, strict=True) for a, b in zip(rs, rt, strict=True))
        / 24
    )
    assert out.terms["mse"].item() == pytest.approx(expected, rel=1e-5)


def test_cosine_compute_by_hand(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(8), make_teacher(8)
    obj = Cosine(CosineParams(), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=3)
    out = obj.compute(step)
    s = student.forward_features(step.views[0]).tolist()
    t = teacher.features(step.views[0]).tolist()

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    expected = -sum(cos(a, b) for a, b in zip(s, t, strict=True)) / 3
    assert set(out.terms) == {"cos"}
    assert out.terms["cos"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (MSE, MSEParams(hidden_dim=16)),
        (MSE, MSEParams(normalise=True, hidden_dim=16)),
        (Cosine, CosineParams(hidden_dim=16)),
    ],
)
def test_gradients_and_bf16(
    cls: type[_Regression[Any]],
    params: MSEParams | CosineParams,
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_grad_flow: AssertTerms,
    assert_finite_bf16: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = cls(params, make_ctx(student, teacher))
    assert_grad_flow(obj, make_step(student, teacher))
    assert all(p.grad is not None for p in obj.head.parameters())
    student.zero_grad()
    assert_finite_bf16(obj, make_step(student, teacher))


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (MSEParams, {"weight": 0.0}, "weight"),
        (MSEParams, {"normalise": "yes"}, "normalise"),
        (MSEParams, {"hidden_dim": 0}, "hidden_dim"),
        (CosineParams, {"weight": -1.0}, "weight"),
        (CosineParams, {"hidden_dim": -3}, "hidden_dim"),
    ],
)
def test_params_validation(
    cls: Callable[..., Config], kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_registered() -> None:
    assert get_objective("mse") is MSE and get_objective("cosine") is Cosine
