"""PKT: value by hand (cosine kernel, eps), invariances, gradients, bf16, params."""

from __future__ import annotations

import math

import pytest
import torch

from losses.base import get_objective
from losses.pkt import PKT, PKT_EPS, PKTParams, pkt_loss
from tests.losses.conftest import AssertTerms, MakeBackbone, MakeCtx, MakeStep, MakeTeacher


def _probabilities(x: list[list[float]]) -> list[list[float]]:
    unit = []
    for row in x:
        norm = math.sqrt(sum(v * v for v in row))
        unit.append([v / (norm + PKT_EPS) for v in row])
    kernel = [
        [(sum(a * b for a, b in zip(u, w, strict=True)) + 1.0) / 2.0 for w in unit] for u in unit
    ]
    return [[k / sum(row) for k in row] for row in kernel]


def _pkt_by_hand(s: list[list[float]], t: list[list[float]]) -> float:
    ps, pt = _probabilities(s), _probabilities(t)
    n = len(s)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += pt[i][j] * math.log((pt[i][j] + PKT_EPS) / (ps[i][j] + PKT_EPS))
    return total / n**2


def test_pkt_by_hand_small() -> None:
    s = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    t = [[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    got = pkt_loss(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(_pkt_by_hand(s, t), rel=1e-5)
    assert got.item() > 0


def test_pkt_by_hand_random_different_dims() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 3, generator=gen), torch.randn(6, 9, generator=gen)
    assert pkt_loss(s, t).item() == pytest.approx(_pkt_by_hand(s.tolist(), t.tolist()), rel=1e-4)


def test_identical_features_give_zero_and_rows_can_be_rescaled() -> None:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert pkt_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    scaled = x.clone()
    scaled[2] *= 5.0
    assert pkt_loss(scaled, x).item() == pytest.approx(0.0, abs=1e-6)


def test_batch_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="B x D_s"):
        pkt_loss(torch.ones(3, 2), torch.ones(2, 2))


def test_compute(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = PKT(PKTParams(), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=5)
    out = obj.compute(step)
    assert out.weights == {"pkt": 30000.0}
    s = student.forward_features(step.views[0]).tolist()
    t = teacher.features(step.views[0]).tolist()
    assert out.terms["pkt"].item() == pytest.approx(_pkt_by_hand(s, t), rel=1e-4)
    assert PKT.requirements(PKTParams()).min_batch_size == 2


def test_gradients_reach_student_not_teacher(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_grad_flow: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    assert_grad_flow(PKT(PKTParams(), make_ctx(student, teacher)), make_step(student, teacher))


def test_finite_under_bf16_autocast(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_finite_bf16: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = PKT(PKTParams(), make_ctx(student, teacher))
    assert_finite_bf16(obj, make_step(student, teacher))


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="weight"):
        PKTParams(weight=0.0)


def test_registered() -> None:
    assert get_objective("pkt") is PKT
