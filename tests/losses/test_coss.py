"""CoSS / CoS: values by hand, invariances, minimum, errors, head, registry."""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import pytest
import torch
from torch import nn

from common.fields import Config
from losses.base import NeighbourBatches, Objective, get_objective, make_params, param_fields
from losses.coss import OFFICIAL_SCALE, CoS, CoSParams, CoSS, CoSSParams
from losses.functional import cosine_rows_loss, space_similarity_loss
from tests.losses.conftest import AssertTerms, MakeBackbone, MakeCtx, MakeStep, MakeTeacher

S = [[1.0, 2.0, 2.0], [3.0, 0.0, 4.0]]
T = [[2.0, 1.0, 2.0], [0.0, 3.0, 4.0]]


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _columns(m: list[list[float]]) -> list[list[float]]:
    return [[row[j] for row in m] for j in range(len(m[0]))]


def test_cosine_rows_by_hand() -> None:
    expected = -(8 / 9 + 16 / 25) / 2  # row cosines 8/(3*3) and 16/(5*5)
    got = cosine_rows_loss(torch.tensor(S), torch.tensor(T))
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_space_similarity_by_hand() -> None:
    # columns: (1,3).(2,0) -> 1/sqrt(10); (2,0).(1,3) -> 1/sqrt(10); (2,4).(2,4) -> 1
    expected = -(2 / math.sqrt(10) + 1) / 3
    got = space_similarity_loss(torch.tensor(S), torch.tensor(T))
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_random_values_match_python_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    sl, tl = s.tolist(), t.tolist()
    co = -sum(_cos(a, b) for a, b in zip(sl, tl, strict=True)) / 5
    ss = -sum(_cos(a, b) for a, b in zip(_columns(sl), _columns(tl), strict=True)) / 4
    assert float(cosine_rows_loss(s, t)) == pytest.approx(co, abs=1e-6)
    assert float(space_similarity_loss(s, t)) == pytest.approx(ss, abs=1e-6)


def test_space_similarity_invariant_to_positive_column_scale() -> None:
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    base = space_similarity_loss(s, t)
    s2, t2 = s.clone(), t.clone()
    s2[:, 2] *= 7.5
    t2[:, 4] *= 0.01
    assert float(space_similarity_loss(s2, t2)) == pytest.approx(float(base), abs=1e-6)
    # ... but a row scale changes it (it is not the row cosine)
    s3 = s.clone()
    s3[0] *= 10.0
    assert float(space_similarity_loss(s3, t)) != pytest.approx(float(base), abs=1e-4)


def test_cosine_rows_invariant_to_positive_row_scale() -> None:
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    base = cosine_rows_loss(s, t)
    s2, t2 = s.clone(), t.clone()
    s2[3] *= 4.0
    t2[0] *= 0.2
    assert float(cosine_rows_loss(s2, t2)) == pytest.approx(float(base), abs=1e-6)


def test_identical_features_give_the_minimum() -> None:
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(3))
    assert float(cosine_rows_loss(x, x.clone())) == pytest.approx(-1.0, abs=1e-6)
    assert float(space_similarity_loss(x, x.clone())) == pytest.approx(-1.0, abs=1e-6)


def test_space_similarity_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        space_similarity_loss(torch.ones(1, 3), torch.ones(1, 3))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="B x D"):
        cosine_rows_loss(torch.ones(2, 3), torch.ones(2, 4))


def test_head_only_when_dims_differ(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx
) -> None:
    teacher = make_teacher(8)
    same = CoSS(CoSSParams(hidden_dim=16), make_ctx(make_backbone(8), teacher))
    assert isinstance(same.head, nn.Identity)
    assert sum(p.numel() for p in same.parameters()) == 0
    diff = CoSS(CoSSParams(hidden_dim=16), make_ctx(make_backbone(4), teacher))
    assert isinstance(diff.head, nn.Sequential)
    assert diff.head[0].in_features == 4 and diff.head[-1].out_features == 8
    assert diff.head[0].out_features == 16


def test_compute_terms_weights_and_values(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = CoSS(CoSSParams(lambda_=0.5, hidden_dim=16), make_ctx(student, teacher))
    step = make_step(student, teacher, batch=5)
    out = obj.compute(step)
    assert set(out.terms) == {"co", "ss"}
    assert out.weights == {"co": OFFICIAL_SCALE, "ss": OFFICIAL_SCALE * 0.5}
    proj = obj.head(student.forward_features(step.views[0]))
    target = teacher.features(step.views[0])
    assert torch.allclose(out.terms["co"], cosine_rows_loss(proj, target))
    assert torch.allclose(out.terms["ss"], space_similarity_loss(proj, target))
    expected_total = OFFICIAL_SCALE * (out.terms["co"] + 0.5 * out.terms["ss"])
    assert torch.allclose(out.total, expected_total)


def test_identical_student_and_teacher_reach_minus_one(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    teacher = make_teacher(6)
    student = copy.deepcopy(teacher.backbone)  # same architecture and weights
    for p in student.parameters():
        p.requires_grad_(True)
    obj = CoSS(CoSSParams(), make_ctx(student, teacher))
    out = obj.compute(make_step(student, teacher, batch=5))
    assert out.terms["co"].item() == pytest.approx(-1.0, abs=1e-6)
    assert out.terms["ss"].item() == pytest.approx(-1.0, abs=1e-6)


def test_cos_has_no_ss_term(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = CoS(CoSParams(hidden_dim=16), make_ctx(student, teacher))
    out = obj.compute(make_step(student, teacher, batch=1))  # B = 1 is fine without L_ss
    assert set(out.terms) == {"co"}
    assert set(out.weights) == {"co"}


def test_coss_with_batch_of_one_raises(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = CoSS(CoSSParams(hidden_dim=16), make_ctx(student, teacher))
    with pytest.raises(ValueError, match="at least 2"):
        obj.compute(make_step(student, teacher, batch=1))


def test_gradients_reach_student_not_teacher(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_grad_flow: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    obj = CoSS(CoSSParams(hidden_dim=16), make_ctx(student, teacher))
    assert_grad_flow(obj, make_step(student, teacher))
    assert all(p.grad is not None for p in obj.head.parameters())


def test_finite_under_bf16_autocast(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_finite_bf16: AssertTerms,
) -> None:
    student, teacher = make_backbone(4), make_teacher(8)
    cases: tuple[tuple[type[Objective[Any]], Config], ...] = (
        (CoSS, CoSSParams(hidden_dim=16)),
        (CoS, CoSParams(hidden_dim=16)),
    )
    for cls, params in cases:
        obj = cls(params, make_ctx(student, teacher))
        out = assert_finite_bf16(obj, make_step(student, teacher))
        assert all(v.dtype == torch.float32 for v in out.terms.values())


def test_requirements_and_neighbour_sampling() -> None:
    req = CoSS.requirements(CoSSParams())
    assert req.neighbour_batches == NeighbourBatches(15, 31) and req.min_batch_size == 16
    assert req.graph_size == 31  # the graph the teacher stage must build
    req = CoSS.requirements(CoSSParams(neighbours=0))
    assert req.neighbour_batches is None and req.min_batch_size == 2 and req.graph_size is None
    assert CoS.requirements(CoSParams(neighbours=0)).min_batch_size == 1
    assert CoS.requirements(CoSParams(neighbours=3, neighbour_pool=7)).graph_size == 7


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lambda_": -1.0}, "lambda"),
        ({"scale": 0.0}, "scale"),
        ({"neighbours": -1}, "neighbours"),
        ({"neighbours": 5, "neighbour_pool": 4}, "neighbour_pool"),
        ({"hidden_dim": 0}, "hidden_dim"),
    ],
)
def test_params_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CoSSParams(**kwargs)  # type: ignore[arg-type]


def test_cos_params_validation() -> None:
    with pytest.raises(ValueError, match="scale"):
        CoSParams(scale=-1.0)


def test_registry_and_yaml_keys() -> None:
    assert get_objective("coss") is CoSS and get_objective("cos") is CoS
    assert "lambda" in param_fields("coss") and "lambda" not in param_fields("cos")
    assert cast(CoSSParams, make_params("coss", {"lambda": 2.0})).lambda_ == 2.0
    with pytest.raises(ValueError, match="unknown parameter"):
        make_params("cos", {"lambda": 1.0})
