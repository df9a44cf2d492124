"""CosPress (Mannix, Hodgkinson & Bondell, TMLR 2025): values by hand, the head, gradient
routing (the head learns from the similarity term only, the student from the regression
only), bf16, params."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from losses.base import get_objective, param_fields
from losses.cospress import (
    OFFICIAL_TEMPERATURES,
    CosPress,
    CosPressParams,
    cosine_regression_loss,
    similarity_preservation_loss,
)
from tests.losses.conftest import AssertTerms, MakeBackbone, MakeCtx, MakeStep, MakeTeacher

T = [[1.0, 0.0, 0.5], [0.2, 1.0, -0.3], [-0.7, 0.4, 1.0], [0.3, 0.3, 0.3]]  # B = 4, D_t = 3
H = [[1.0, 0.2], [0.0, 1.0], [-1.0, 0.6], [0.5, 0.5]]  # compressed, D_s = 2


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _joint(x: list[list[float]], tau: float) -> list[list[float]]:
    """P = (p + p^T) / sum(p + p^T), p the row softmax of cos / tau without the diagonal."""
    b = len(x)
    p = []
    for i in range(b):
        e = [0.0 if j == i else math.exp(_cos(x[i], x[j]) / tau) for j in range(b)]
        p.append([v / sum(e) for v in e])
    sym = [[p[i][j] + p[j][i] for j in range(b)] for i in range(b)]
    total = sum(map(sum, sym))
    return [[v / total for v in row] for row in sym]


def _sim_by_hand(t: list[list[float]], h: list[list[float]], taus: tuple[float, ...]) -> float:
    out = 0.0
    for tau in taus:
        p, q = _joint(t, tau), _joint(h, tau)
        out += sum(p[i][j] * math.log(p[i][j] / q[i][j])
                   for i in range(len(t)) for j in range(len(t)) if i != j)
    return out / len(taus)


@pytest.mark.parametrize("taus", [(0.5,), (0.1, 0.3), OFFICIAL_TEMPERATURES])
def test_similarity_preservation_by_hand(taus: tuple[float, ...]) -> None:
    got = similarity_preservation_loss(torch.tensor(T), torch.tensor(H), taus)
    assert got.item() == pytest.approx(_sim_by_hand(T, H, taus), rel=1e-4, abs=1e-6)
    assert got.item() > 0


def test_preserved_cosines_cost_nothing() -> None:
    t = torch.tensor(T)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    assert similarity_preservation_loss(t, 2.0 * t @ rotation).item() == pytest.approx(
        0.0, abs=1e-5)  # a rotation and a scale keep every cosine


def test_cosine_regression_by_hand() -> None:
    s, h = [[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [3.0, 1.0]]
    expected = sum(1 - _cos(a, b) for a, b in zip(s, h, strict=True)) / 2
    got = cosine_regression_loss(torch.tensor(s), torch.tensor(h))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_head_terms_and_values(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = CosPress(CosPressParams(), make_ctx(student, teacher))
    assert isinstance(obj.head[0], nn.LayerNorm) and isinstance(obj.head[1], nn.Linear)
    assert (obj.head[1].in_features, obj.head[1].out_features) == (8, 4)  # D_t -> D_s
    step = make_step(student, teacher, batch=6)
    out = obj.compute(step)
    assert out.weights == {"sim": 1.0, "fea": 1.0}
    x = step.views[0]
    t = teacher.features(x)
    h = obj.head(t).tolist()
    s = student.forward_features(x).tolist()
    assert out.terms["sim"].item() == pytest.approx(
        _sim_by_hand(t.tolist(), h, OFFICIAL_TEMPERATURES), rel=1e-4)
    assert out.terms["fea"].item() == pytest.approx(
        sum(1 - _cos(a, b) for a, b in zip(s, h, strict=True)) / 6, rel=1e-5)


def test_the_head_learns_from_sim_only_and_the_student_from_fea_only(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep,
    assert_grad_flow: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = CosPress(CosPressParams(), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=6)
    out = obj.compute(step)
    out.terms["fea"].backward(retain_graph=True)
    assert all(p.grad is None for p in obj.head.parameters())  # sg(h(f_t)) in the regression
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in student.parameters())
    student.zero_grad(set_to_none=True)
    out.terms["sim"].backward()
    assert all(p.grad is None for p in student.parameters())  # the student is not in sim
    assert all(p.grad is not None for p in obj.head.parameters())
    obj.zero_grad(set_to_none=True)
    assert_grad_flow(obj, make_step(student, teacher, batch=6))  # and never the teacher


def test_finite_under_bf16_autocast(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep,
    assert_finite_bf16: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = CosPress(CosPressParams(), make_ctx(student, teacher))
    assert_finite_bf16(obj, make_step(student, teacher, batch=6))


def test_errors_params_and_registry() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        similarity_preservation_loss(torch.ones(1, 3), torch.ones(1, 2))
    with pytest.raises(ValueError, match="temperatures"):
        CosPressParams(temperatures=())
    with pytest.raises(ValueError, match="temperatures"):
        CosPressParams(temperatures=(0.1, 0.0))
    with pytest.raises(ValueError, match="sim_weight"):
        CosPressParams(sim_weight=-1.0)
    assert get_objective("cospress") is CosPress
    assert CosPress.requirements(CosPressParams()).min_batch_size == 2
    assert not CosPress.requirements(CosPressParams()).labels
    defaults = param_fields("cospress")
    assert defaults["temperatures"] == tuple(round(0.01 * k, 2) for k in range(1, 11))
    assert defaults["sim_weight"] == 1.0 and defaults["fea_weight"] == 1.0
