"""KD (Hinton): value by hand, CE term, requirements, gradients, bf16, params."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses.base import get_objective
from losses.functional import distill_kl as kd_loss
from losses.kd import KD, KDParams
from tests.losses.conftest import AssertTerms, MakeBackbone, MakeCtx, MakeStep, MakeTeacher

ZS = [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]
ZT = [[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


def _softmax(row: list[float], tau: float) -> list[float]:
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def _kd_by_hand(zs: list[list[float]], zt: list[list[float]], tau: float) -> float:
    total = 0.0
    for s_row, t_row in zip(zs, zt, strict=True):
        ps, pt = _softmax(s_row, tau), _softmax(t_row, tau)
        total += sum(t * (math.log(t) - math.log(s)) for s, t in zip(ps, pt, strict=True))
    return tau**2 * total / len(zs)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_loss_by_hand(tau: float) -> None:
    got = kd_loss(torch.tensor(ZS), torch.tensor(ZT), tau)
    assert got.item() == pytest.approx(_kd_by_hand(ZS, ZT, tau), rel=1e-5)


def test_kd_loss_zero_for_identical_logits() -> None:
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="B x C"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), 4.0)


def test_compute_kd_only_by_default(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4, num_classes=3), make_teacher(8, num_classes=3)
    obj = KD(KDParams(), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=5)
    out = obj.compute(step)
    assert set(out.terms) == {"kd"} and out.weights == {"kd": 1.0}
    zs = student.forward_logits(student.forward_features(step.views[0])).tolist()
    zt = teacher.logits(teacher.features(step.views[0])).tolist()
    assert out.terms["kd"].item() == pytest.approx(_kd_by_hand(zs, zt, 4.0), rel=1e-4)


def test_compute_with_ce(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4, num_classes=3), make_teacher(8, num_classes=3)
    obj = KD(KDParams(kd=0.9, ce=0.1), make_ctx(student, teacher))
    labels = torch.tensor([0, 2, 1, 1, 0])
    step = make_step(student, teacher, batch=5, labels=labels)
    out = obj.compute(step)
    assert out.weights == {"kd": 0.9, "ce": 0.1}
    zs = student.forward_logits(student.forward_features(step.views[0])).tolist()
    ce = (
        -sum(math.log(_softmax(row, 1.0)[y]) for row, y in zip(zs, labels.tolist(), strict=True))
        / 5
    )
    assert out.terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert torch.allclose(out.total, 0.9 * out.terms["kd"] + 0.1 * out.terms["ce"])


def test_ce_without_labels_raises(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4, num_classes=3), make_teacher(8, num_classes=3)
    obj = KD(KDParams(ce=0.5), make_ctx(student, teacher))
    with pytest.raises(ValueError, match="labels"):
        obj.compute(make_step(student, teacher))


def test_requirements() -> None:
    req = KD.requirements(KDParams())
    assert req.teacher_classifier and req.student_classifier and not req.labels
    assert KD.requirements(KDParams(ce=0.1)).labels


def test_classifiers_are_required(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx
) -> None:
    with pytest.raises(ValueError, match="teacher"):
        KD(KDParams(), make_ctx(make_backbone(4, num_classes=3), make_teacher(8)))
    with pytest.raises(ValueError, match="student"):
        KD(KDParams(), make_ctx(make_backbone(4), make_teacher(8, num_classes=3)))


def test_gradients_reach_student_not_teacher(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_grad_flow: AssertTerms,
) -> None:
    student, teacher = make_backbone(4, num_classes=3), make_teacher(8, num_classes=3)
    obj = KD(KDParams(ce=0.1), make_ctx(student, teacher))
    assert_grad_flow(obj, make_step(student, teacher, batch=4, labels=torch.tensor([0, 1, 2, 0])))
    assert student.classifier is not None
    assert all(p.grad is not None for p in student.classifier.parameters())


def test_finite_under_bf16_autocast(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_finite_bf16: AssertTerms,
) -> None:
    student, teacher = make_backbone(4, num_classes=3), make_teacher(8, num_classes=3)
    obj = KD(KDParams(ce=0.1), make_ctx(student, teacher))
    out = assert_finite_bf16(obj, make_step(student, teacher, labels=torch.zeros(6).long()))
    assert out.terms["kd"].dtype == torch.float32


def test_kd_matches_torch_reference() -> None:
    zs, zt = torch.tensor(ZS), torch.tensor(ZT)
    ref = F.kl_div(F.log_softmax(zs / 4, 1), F.softmax(zt / 4, 1), reduction="sum") * 16 / 2
    assert kd_loss(zs, zt, 4.0).item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"tau": 0.0}, "tau"), ({"kd": -1.0}, "kd"), ({"ce": -0.1}, "ce")]
)
def test_params_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        KDParams(**kwargs)


def test_registered() -> None:
    assert get_objective("kd") is KD
