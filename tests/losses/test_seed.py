"""SEED: value by hand, random (official) and empty queue starts, head dims, enqueue after the
step, state_dict, gradients."""

from __future__ import annotations

import dataclasses
import io
import math
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losses.base import get_objective
from losses.seed import SEED, SEEDParams, seed_loss
from models.teacher import FrozenTeacher
from tests.losses.conftest import (
    AssertTerms,
    FakeBackbone,
    MakeBackbone,
    MakeCtx,
    MakeStep,
    MakeTeacher,
)


def _normalise(x: list[list[float]]) -> list[list[float]]:
    return [[v / math.sqrt(sum(c * c for c in row)) for v in row] for row in x]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def _seed_by_hand(
    s: list[list[float]],
    t: list[list[float]],
    queue: list[list[float]],
    tau_s: float,
    tau_t: float,
) -> float:
    s, t = _normalise(s), _normalise(t)
    total = 0.0
    for si, ti in zip(s, t, strict=True):
        keys = [ti, *queue]
        p_t = _softmax([_dot(ti, k) / tau_t for k in keys])
        p_s = _softmax([_dot(si, k) / tau_s for k in keys])
        total -= sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s, strict=True))
    return total / len(s)


S = [[1.0, 0.0], [1.0, 1.0]]
T = [[0.0, 2.0], [3.0, 1.0]]
Q = _normalise([[1.0, 1.0], [-1.0, 0.5], [0.2, -1.0]])


@pytest.mark.parametrize(("tau_s", "tau_t"), [(0.2, 1e-4), (0.5, 0.3), (1.0, 1.0)])
def test_seed_loss_by_hand(tau_s: float, tau_t: float) -> None:
    got = seed_loss(torch.tensor(S), torch.tensor(T), torch.tensor(Q), tau_s, tau_t)
    assert got.item() == pytest.approx(_seed_by_hand(S, T, Q, tau_s, tau_t), rel=1e-5)


def test_empty_queue_gives_zero() -> None:
    got = seed_loss(torch.tensor(S), torch.tensor(T), torch.zeros(0, 2))
    assert got.item() == pytest.approx(0.0, abs=1e-7)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="B x E"):
        seed_loss(torch.ones(2, 2), torch.ones(2, 3), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="queue"):
        seed_loss(torch.ones(2, 2), torch.ones(2, 2), torch.zeros(4, 3))


def _objective(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, queue_size: int = 16,
    queue_init: str = "empty",
) -> tuple[SEED, FakeBackbone, FrozenTeacher]:
    """An empty queue by default: the hand values below follow the queue from its first row."""
    student, teacher = make_backbone(4), make_teacher(8, embedding_dim=5)
    obj = SEED(SEEDParams(queue_size=queue_size, queue_init=queue_init),
               make_ctx(student, teacher))
    return obj, student, teacher


def test_queue_starts_as_random_unit_vectors_and_the_first_loss_is_not_zero(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    """Official start (seed/builder.py:52-53): K normalised Gaussian rows, drawn from the
    context's generator; the first step already contrasts against all K of them."""
    student, teacher = make_backbone(4), make_teacher(8, embedding_dim=5)
    assert SEEDParams().queue_init == "random"
    ctx = dataclasses.replace(make_ctx(student, teacher),
                              generator=torch.Generator().manual_seed(3))
    obj = SEED(SEEDParams(queue_size=16), ctx)
    assert len(obj.queue) == 16 and obj.queue.is_full
    assert torch.allclose(obj.queue.data.norm(dim=1), torch.ones(16), atol=1e-6)
    again = SEED(SEEDParams(queue_size=16), dataclasses.replace(
        ctx, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(obj.queue.data, again.queue.data)  # from the generator, not global
    step = make_step(student, teacher, batch=3, seed=10)
    out = obj.compute(step)
    s = obj.head(student.forward_features(step.views[0])).tolist()
    t = teacher.embedding(teacher.features(step.views[0])).tolist()
    expected = _seed_by_hand(s, t, obj.queue.valid().tolist(), 0.2, 1e-4)
    assert expected > 0.5  # the empty-queue start gave exactly 0 here
    assert out.terms["seed"].item() == pytest.approx(expected, rel=1e-4)


def test_head_lands_in_the_teacher_embedding_space(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx
) -> None:
    obj, _, _ = _objective(make_backbone, make_teacher, make_ctx)
    assert isinstance(obj.head, nn.Sequential)
    first, last = cast(nn.Linear, obj.head[0]), cast(nn.Linear, obj.head[-1])
    assert (first.in_features, first.out_features) == (4, 4)
    assert last.out_features == 5
    assert obj.queue.data.shape == (16, 5)


def test_enqueue_after_step_and_value(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _objective(make_backbone, make_teacher, make_ctx)
    first = make_step(student, teacher, batch=3, seed=10)
    out = obj.compute(first)
    assert out.terms["seed"].item() == pytest.approx(0.0, abs=1e-7)  # empty queue
    assert len(obj.queue) == 0  # nothing enqueued before the step
    obj.after_step(first)
    z_t = F.normalize(teacher.embedding(teacher.features(first.views[0])), dim=1)
    assert torch.allclose(obj.queue.valid(), z_t)

    second = make_step(student, teacher, batch=3, seed=11)
    out = obj.compute(second)
    s = obj.head(student.forward_features(second.views[0])).tolist()
    t = teacher.embedding(teacher.features(second.views[0])).tolist()
    expected = _seed_by_hand(s, t, obj.queue.valid().tolist(), 0.2, 1e-4)
    assert out.terms["seed"].item() == pytest.approx(expected, rel=1e-4)
    assert out.weights == {"seed": 1.0}


def test_no_enqueue_in_eval_mode(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _objective(make_backbone, make_teacher, make_ctx)
    obj.eval()
    step = make_step(student, teacher)
    obj.compute(step)
    obj.after_step(step)
    assert len(obj.queue) == 0


def test_queue_is_in_state_dict_and_round_trips(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _objective(make_backbone, make_teacher, make_ctx, queue_size=5)
    for seed in range(3):  # 9 rows into 5: wrapped
        step = make_step(student, teacher, batch=3, seed=seed)
        obj.compute(step)
        obj.after_step(step)
    state = obj.state_dict()
    assert {"queue.data", "queue.ptr", "queue.filled"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored, _, _ = _objective(make_backbone, make_teacher, make_ctx, queue_size=5)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.queue.valid(), obj.queue.valid())
    step = make_step(student, teacher, batch=3, seed=7)
    assert torch.allclose(restored.compute(step).total, obj.compute(step).total)


def test_gradients_reach_student_not_teacher(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_grad_flow: AssertTerms,
) -> None:
    obj, student, teacher = _objective(make_backbone, make_teacher, make_ctx)
    warm = make_step(student, teacher, seed=0)
    obj.compute(warm)
    obj.after_step(warm)
    assert_grad_flow(obj, make_step(student, teacher, seed=1))
    assert all(p.grad is not None for p in obj.head.parameters())


def test_finite_under_bf16_autocast(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_finite_bf16: AssertTerms,
) -> None:
    obj, student, teacher = _objective(make_backbone, make_teacher, make_ctx)
    warm = make_step(student, teacher, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        obj.compute(warm)
    obj.after_step(warm)
    assert obj.queue.data.dtype == torch.float32
    assert_finite_bf16(obj, make_step(student, teacher, seed=1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tau_s": 0.0}, "tau_s"),
        ({"tau_t": -1.0}, "tau_t"),
        ({"queue_size": 0}, "queue_size"),
        ({"weight": 0.0}, "weight"),
    ],
)
def test_params_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SEEDParams(**kwargs)  # type: ignore[arg-type]


def test_defaults_and_registry() -> None:
    p = SEEDParams()
    assert (p.tau_s, p.tau_t, p.queue_size) == (0.2, 1e-4, 65536)
    assert get_objective("seed") is SEED
