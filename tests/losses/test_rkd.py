"""RKD: distance and angle terms by hand, invariances, batch-size errors, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from losses.base import get_objective
from losses.rkd import RKD, RKDParams, rkd_angle_loss, rkd_distance_loss
from tests.losses.conftest import AssertTerms, MakeBackbone, MakeCtx, MakeStep, MakeTeacher

TEACHER = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]  # collinear
STUDENT = [[0.0, 0.0], [1.0, 0.0], [-1.0, 0.1]]  # angle at 0 is ~180 degrees: linear branch


def _smooth_l1(a: float, b: float) -> float:
    diff = abs(a - b)
    return 0.5 * diff * diff if diff < 1.0 else diff - 0.5


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def _psi_d(x: list[list[float]]) -> list[list[float]]:
    n = len(x)
    pairs = [_dist(x[i], x[j]) for i in range(n) for j in range(n) if i != j]
    mu = sum(pairs) / len(pairs)
    return [[_dist(x[i], x[j]) / mu if i != j else 0.0 for j in range(n)] for i in range(n)]


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(c * c for c in v))
    return [0.0 for _ in v] if norm == 0 else [c / norm for c in v]


def _psi_a(x: list[list[float]]) -> list[float]:
    n = len(x)
    out = []
    for i in range(n):
        for j in range(n):
            for k in range(n):
                e_ij = _unit([a - b for a, b in zip(x[j], x[i], strict=True)])
                e_ik = _unit([a - b for a, b in zip(x[k], x[i], strict=True)])
                out.append(sum(a * b for a, b in zip(e_ij, e_ik, strict=True)))
    return out


def _distance_by_hand(s: list[list[float]], t: list[list[float]]) -> float:
    ps, pt = _psi_d(s), _psi_d(t)
    n = len(s)
    return sum(_smooth_l1(ps[i][j], pt[i][j]) for i in range(n) for j in range(n)) / n**2


def _angle_by_hand(s: list[list[float]], t: list[list[float]]) -> float:
    ps, pt = _psi_a(s), _psi_a(t)
    return sum(_smooth_l1(a, b) for a, b in zip(ps, pt, strict=True)) / len(ps)


def test_distance_by_hand() -> None:
    got = rkd_distance_loss(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert got.item() == pytest.approx(_distance_by_hand(STUDENT, TEACHER), rel=1e-5)


def test_angle_by_hand_including_linear_branch() -> None:
    ps, pt = _psi_a(STUDENT), _psi_a(TEACHER)
    assert max(abs(a - b) for a, b in zip(ps, pt, strict=True)) > 1.0  # both Huber branches
    got = rkd_angle_loss(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert got.item() == pytest.approx(_angle_by_hand(STUDENT, TEACHER), rel=1e-5)


def test_random_values_with_different_dims() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=gen), torch.randn(5, 7, generator=gen)
    sl, tl = s.tolist(), t.tolist()
    assert rkd_distance_loss(s, t).item() == pytest.approx(_distance_by_hand(sl, tl), rel=1e-4)
    assert rkd_angle_loss(s, t).item() == pytest.approx(_angle_by_hand(sl, tl), rel=1e-4)


def test_invariant_to_scale_and_translation_of_the_student() -> None:
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 4, generator=gen), torch.randn(6, 5, generator=gen)
    moved = 3.0 * s + torch.tensor([1.0, -2.0, 0.5, 4.0])
    assert rkd_distance_loss(moved, t).item() == pytest.approx(
        rkd_distance_loss(s, t).item(), abs=1e-5
    )
    assert rkd_angle_loss(moved, t).item() == pytest.approx(rkd_angle_loss(s, t).item(), abs=1e-5)


def test_identical_features_give_zero() -> None:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    assert rkd_distance_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_batch_size_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        rkd_distance_loss(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="at least 3"):
        rkd_angle_loss(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="B x D_s"):
        rkd_distance_loss(torch.ones(3, 2), torch.ones(4, 2))


def test_compute_terms_and_weights(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = RKD(RKDParams(), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=5)
    out = obj.compute(step)
    assert out.weights == {"distance": 25.0, "angle": 50.0}
    s = student.forward_features(step.views[0]).tolist()
    t = teacher.features(step.views[0]).tolist()
    assert out.terms["distance"].item() == pytest.approx(_distance_by_hand(s, t), rel=1e-4)
    assert out.terms["angle"].item() == pytest.approx(_angle_by_hand(s, t), rel=1e-4)
    only_distance = RKD(RKDParams(angle=0.0), make_ctx(student, teacher))
    assert set(only_distance.compute(make_step(student, teacher, batch=2)).terms) == {"distance"}


def test_requirements() -> None:
    assert RKD.requirements(RKDParams()).min_batch_size == 3
    assert RKD.requirements(RKDParams(angle=0.0)).min_batch_size == 2


def test_gradients_reach_student_not_teacher(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_grad_flow: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = RKD(RKDParams(), make_ctx(student, teacher))
    assert_grad_flow(obj, make_step(student, teacher))


def test_finite_under_bf16_autocast(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_finite_bf16: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = RKD(RKDParams(), make_ctx(student, teacher))
    assert_finite_bf16(obj, make_step(student, teacher))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"distance": -1.0}, "distance"),
        ({"angle": -1.0}, "angle"),
        ({"distance": 0.0, "angle": 0.0}, "both"),
    ],
)
def test_params_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RKDParams(**kwargs)


def test_registered() -> None:
    assert get_objective("rkd") is RKD
