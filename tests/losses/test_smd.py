"""SMD: the methods.md recipe by hand (loops), rows without negatives, weights without
gradient, views / warm-up, gradients, bf16, params."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losses.base import get_objective
from losses.smd import SMD, SMDParams, smd_loss
from tests.losses.conftest import AssertTerms, MakeBackbone, MakeCtx, MakeStep, MakeTeacher

TAU = 0.04
# unit vectors by angle; s_0 = -t_0, so row 0 has D[0, 0] = 2 and no negatives
T_DEG = [0.0, 60.0, 150.0, 250.0]
S_DEG = [180.0, 70.0, 140.0, 300.0]


def _unit_vectors(degrees: list[float], scale: float = 1.0) -> list[list[float]]:
    return [[scale * math.cos(math.radians(d)), scale * math.sin(math.radians(d))] for d in degrees]


def _normalise(x: list[list[float]]) -> list[list[float]]:
    out = []
    for row in x:
        norm = math.sqrt(sum(v * v for v in row))
        out.append([v / norm for v in row])
    return out


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def _smd_by_hand(
    student: list[list[float]], teacher: list[list[float]], tau: float
) -> dict[str, Any]:
    s, t = _normalise(student), _normalise(teacher)
    b = len(s)
    d_t = [[_dist(t[i], t[j]) for j in range(b)] for i in range(b)]
    d = [[_dist(t[i], s[j]) for j in range(b)] for i in range(b)]
    losses, rows = [], []
    for i in range(b):
        negatives = [j for j in range(b) if j != i and d_t[i][j] > d[i][i]]
        positives = [j for j in range(b) if j not in negatives]
        p = max(positives, key=lambda j: d[i][j])
        w_p = max(d[i][p] - d_t[i][p], 0.0)
        if negatives:
            n = min(negatives, key=lambda j: d[i][j])
            w_n = max(d_t[i][n] - d[i][n], 0.0)
            neg = w_n * d[i][n]
        else:
            n, w_n, neg = None, 0.0, 0.0
        x = (w_p * d[i][p] - neg) / tau
        losses.append(math.log1p(math.exp(x)))
        rows.append({"n": n, "p": p, "w_n": w_n, "w_p": w_p, "negatives": negatives})
    return {"loss": sum(losses) / b, "rows": rows}


def test_smd_by_hand_with_a_row_without_negatives() -> None:
    s, t = _unit_vectors(S_DEG), _unit_vectors(T_DEG)
    ref = _smd_by_hand(s, t, TAU)
    assert ref["rows"][0]["negatives"] == []
    assert any(r["negatives"] for r in ref["rows"])  # and rows with negatives
    assert any(r["w_n"] > 0 for r in ref["rows"]) and any(r["w_p"] > 0 for r in ref["rows"])
    got = smd_loss(torch.tensor(s), torch.tensor(t), TAU)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(ref["loss"], rel=1e-4)


def test_inputs_are_normalised() -> None:
    s, t = _unit_vectors(S_DEG, 3.0), _unit_vectors(T_DEG, 0.5)
    got = smd_loss(torch.tensor(s), torch.tensor(t), TAU)
    assert got.item() == pytest.approx(_smd_by_hand(s, t, TAU)["loss"], rel=1e-4)


def test_random_higher_dim_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    ref = _smd_by_hand(s.tolist(), t.tolist(), 0.5)
    assert smd_loss(s, t, 0.5).item() == pytest.approx(ref["loss"], rel=1e-4)


def test_weights_carry_no_gradient() -> None:
    gen = torch.Generator().manual_seed(1)
    s0, t = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    ref = _smd_by_hand(s0.tolist(), t.tolist(), TAU)
    assert any(r["w_n"] > 0 for r in ref["rows"]) and any(r["w_p"] > 0 for r in ref["rows"])

    s = s0.clone().requires_grad_(True)
    smd_loss(s, t, TAU).backward()

    # the same loss with the weights and the chosen indices as constants
    s2 = s0.clone().requires_grad_(True)
    sn, tn = F.normalize(s2, dim=1), F.normalize(t, dim=1)
    terms = []
    for i, row in enumerate(ref["rows"]):
        d_p = (tn[i] - sn[row["p"]]).norm()
        x = row["w_p"] * d_p
        if row["n"] is not None:
            x = x - row["w_n"] * (tn[i] - sn[row["n"]]).norm()
        terms.append(F.softplus(x / TAU))
    torch.stack(terms).mean().backward()
    assert s.grad is not None and s2.grad is not None
    assert s.grad.abs().sum() > 0
    assert torch.allclose(s.grad, s2.grad, atol=1e-5)


def test_batch_of_one_raises() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        smd_loss(torch.ones(1, 3), torch.ones(1, 3))


def test_linear_head_always(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx
) -> None:
    for dim in (4, 8):
        obj = SMD(SMDParams(), make_ctx(make_backbone(dim), make_teacher(8)))
        assert isinstance(obj.head, nn.Linear)
        assert (obj.head.in_features, obj.head.out_features) == (dim, 8)


def test_compute_matches_hand_value(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    # ukd's earlier single-view form, no warm-up
    obj = SMD(SMDParams(views=1, cos_warmup_epochs=0), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=6)
    out = obj.compute(step)
    assert set(out.terms) == {"smd"} and out.weights == {"smd": 1.0}
    s = obj.head(student.forward_features(step.views[0])).tolist()
    t = teacher.features(step.views[0]).tolist()
    assert out.terms["smd"].item() == pytest.approx(_smd_by_hand(s, t, TAU)["loss"], rel=1e-4)


def test_two_views_are_averaged_and_warmup(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = SMD(SMDParams(views=2, cos_warmup_epochs=2), make_ctx(student, teacher))
    assert SMD.requirements(obj.params).num_views == 2
    step = make_step(student, teacher, batch=5, views=2, epoch=1)
    out = obj.compute(step)
    per_view = [
        _smd_by_hand(
            obj.head(student.forward_features(v)).tolist(), teacher.features(v).tolist(), TAU
        )["loss"]
        for v in step.views
    ]
    assert out.terms["smd"].item() == pytest.approx(sum(per_view) / 2, rel=1e-4)
    assert out.weights == {"smd": 1.0, "cos": 1.0}
    late = obj.compute(make_step(student, teacher, batch=5, views=2, epoch=2))
    assert late.weights == {"smd": 1.0, "cos": 0.0}
    with pytest.raises(ValueError, match="views"):
        obj.compute(make_step(student, teacher, batch=5, views=1))


def _mean_cos(a: list[list[float]], b: list[list[float]]) -> float:
    total = 0.0
    for x, y in zip(a, b, strict=True):
        dot = sum(p * q for p, q in zip(x, y, strict=True))
        total += dot / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
    return total / len(a)


def test_defaults_are_the_official_recipe(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    """main_distill.py:414-421: two views averaged, and ``-cos`` added for epochs 0 and 1."""
    p = SMDParams()
    assert (p.views, p.cos_warmup_epochs, p.tau) == (2, 2, None)
    assert SMD.requirements(p).num_views == 2
    student, teacher = make_backbone(4), make_teacher(8)
    obj = SMD(p, make_ctx(student, teacher))
    step = make_step(student, teacher, batch=5, views=2, epoch=0)
    out = obj.compute(step)
    assert out.weights == {"smd": 1.0, "cos": 1.0}
    s = [obj.head(student.forward_features(v)).tolist() for v in step.views]
    t = [teacher.features(v).tolist() for v in step.views]
    smd = sum(_smd_by_hand(s[k], t[k], TAU)["loss"] for k in range(2)) / 2
    cos = -(_mean_cos(s[0], t[0]) + _mean_cos(s[1], t[1])) / 2
    assert out.terms["smd"].item() == pytest.approx(smd, rel=1e-4)
    assert out.terms["cos"].item() == pytest.approx(cos, rel=1e-4)
    assert out.total.item() == pytest.approx(smd + cos, rel=1e-4)
    # the second view is part of the loss: another second view, another total
    other = make_step(student, teacher, batch=5, views=2, epoch=0, seed=9)
    other.views[0] = step.views[0]
    assert obj.compute(other).total.item() != pytest.approx(out.total.item(), rel=1e-4)
    assert obj.compute(make_step(student, teacher, batch=5, views=2, epoch=1)).weights["cos"] == 1
    assert obj.compute(make_step(student, teacher, batch=5, views=2, epoch=2)).weights == {
        "smd": 1.0, "cos": 0.0}


@pytest.mark.parametrize(("arch", "tau"), [("mobilenet_v3_large", 0.004),
                                           ("efficientnet_b0", 0.004), ("MobileNetV2", 0.004),
                                           ("resnet18", 0.04), (None, 0.04)])
def test_default_tau_follows_the_student(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx,
    make_step: MakeStep, arch: str | None, tau: float
) -> None:
    """main_distill.py:108-109: tau = 0.004 for MobileNet / EfficientNet students."""
    student, teacher = make_backbone(4), make_teacher(8)
    student.arch = arch
    obj = SMD(SMDParams(views=1, cos_warmup_epochs=0), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=6)
    s = obj.head(student.forward_features(step.views[0])).tolist()
    t = teacher.features(step.views[0]).tolist()
    assert obj.compute(step).terms["smd"].item() == pytest.approx(
        _smd_by_hand(s, t, tau)["loss"], rel=1e-4)
    fixed = SMD(SMDParams(tau=0.04, views=1, cos_warmup_epochs=0), make_ctx(student, teacher))
    fixed.load_state_dict(obj.state_dict())
    assert fixed.compute(step).terms["smd"].item() == pytest.approx(
        _smd_by_hand(s, t, 0.04)["loss"], rel=1e-4)


def test_gradients_reach_student_not_teacher(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_grad_flow: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = SMD(SMDParams(), make_ctx(student, teacher))
    # a batch large enough that some weights are non-zero
    assert_grad_flow(obj, make_step(student, teacher, batch=12, views=2))
    assert SMD.requirements(SMDParams()).min_batch_size == 2


def test_finite_under_bf16_autocast(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_finite_bf16: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = SMD(SMDParams(), make_ctx(student, teacher))
    assert_finite_bf16(obj, make_step(student, teacher, batch=12, views=2))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tau": 0.0}, "tau"),
        ({"weight": 0.0}, "weight"),
        ({"views": 0}, "views"),
        ({"cos_warmup_epochs": -1}, "cos_warmup_epochs"),
    ],
)
def test_params_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SMDParams(**kwargs)  # type: ignore[arg-type]


def test_registered() -> None:
    assert get_objective("smd") is SMD
