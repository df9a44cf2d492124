"""CompRess 2q / 1q: value by hand, random (official) and empty memory starts, momentum
encoder (update, checkpoint restore), queues, gradients, bf16, params."""

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
from losses.compress import CompRess, CompRessParams, compress_loss
from models.base import Backbone
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


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def _compress_by_hand(
    s: list[list[float]],
    t: list[list[float]],
    q_s: list[list[float]],
    q_t: list[list[float]],
    tau: float,
) -> float:
    s, t = _normalise(s), _normalise(t)
    total = 0.0
    for si, ti in zip(s, t, strict=True):
        p_t = _softmax([sum(a * b for a, b in zip(ti, k, strict=True)) / tau for k in q_t])
        p_s = _softmax([sum(a * b for a, b in zip(si, k, strict=True)) / tau for k in q_s])
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
    return total / len(s)


S = [[1.0, 0.5], [-0.3, 1.0]]  # D_s = 2
T = [[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]]  # D_t = 3
Q_S = _normalise([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
Q_T = _normalise([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, -1.0, 0.5]])


@pytest.mark.parametrize("tau", [0.04, 0.5])
def test_compress_loss_by_hand(tau: float) -> None:
    got = compress_loss(torch.tensor(S), torch.tensor(T), torch.tensor(Q_S), torch.tensor(Q_T), tau)
    assert got.item() == pytest.approx(_compress_by_hand(S, T, Q_S, Q_T, tau), rel=1e-4)


def test_one_queue_form_by_hand() -> None:
    s = [[0.5, 0.5, -1.0], [1.0, 0.0, 0.2]]  # student projected to D_t
    got = compress_loss(torch.tensor(s), torch.tensor(T), torch.tensor(Q_T), torch.tensor(Q_T))
    assert got.item() == pytest.approx(_compress_by_hand(s, T, Q_T, Q_T, 0.04), rel=1e-4)
    same = compress_loss(torch.tensor(T), torch.tensor(T), torch.tensor(Q_T), torch.tensor(Q_T))
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_memory_errors() -> None:
    with pytest.raises(ValueError, match="same, non-zero"):
        compress_loss(torch.ones(2, 2), torch.ones(2, 3), torch.ones(2, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="same, non-zero"):
        compress_loss(torch.ones(2, 2), torch.ones(2, 3), torch.ones(0, 2), torch.ones(0, 3))
    with pytest.raises(ValueError, match="memory dims"):
        compress_loss(torch.ones(2, 2), torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3))


def _key_encoder(obj: CompRess) -> Backbone | None:
    """``obj.key_encoder`` read through a call, so that mypy does not carry an ``is None``
    narrowing past a later ``compute`` that creates the encoder."""
    return obj.key_encoder


def _make(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    variant: str = "2q",
    queue_size: int = 32,
    momentum: float = 0.9,
    queue_init: str = "empty",
) -> tuple[CompRess, FakeBackbone, FrozenTeacher]:
    """Empty memories by default: the hand values below follow them from their first row."""
    student, teacher = make_backbone(4, batchnorm=True), make_teacher(6)
    params = CompRessParams(variant=variant, queue_size=queue_size, momentum=momentum,
                            queue_init=queue_init)
    return CompRess(params, make_ctx(student, teacher)), student, teacher


@pytest.mark.parametrize("variant", ["2q", "1q"])
def test_memories_start_uniform_and_the_first_loss_is_not_zero(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx,
    make_step: MakeStep, variant: str
) -> None:
    """Official start (nn/compress_loss.py:34-43, 111-120): every row uniform in (-a, a),
    a = 1 / sqrt(D / 3), not normalised; the first step compares against all of them."""
    assert CompRessParams().queue_init == "random"
    student, teacher = make_backbone(4, batchnorm=True), make_teacher(6)
    ctx = dataclasses.replace(make_ctx(student, teacher),
                              generator=torch.Generator().manual_seed(5))
    obj = CompRess(CompRessParams(variant=variant, queue_size=512), ctx)
    memories = [(obj.teacher_queue, 6)]
    if obj.student_queue is not None:
        memories.append((obj.student_queue, 4))
    for memory, dim in memories:
        a = 1.0 / math.sqrt(dim / 3.0)
        assert memory.is_full and memory.data.shape == (512, dim)
        assert float(memory.data.abs().max()) < a and float(memory.data.abs().max()) > 0.9 * a
        norms = memory.data.norm(dim=1)
        assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)  # not normalised
        assert float(norms.pow(2).mean()) == pytest.approx(1.0, abs=0.1)  # E ||row||^2 = 1
    step = make_step(student, teacher, batch=5)
    out = obj.compute(step)
    s = obj.head(student.forward_features(step.views[0])).tolist()
    t = teacher.features(step.views[0]).tolist()
    q_t = obj.teacher_queue.valid().tolist()
    q_s = obj.student_queue.valid().tolist() if obj.student_queue is not None else q_t
    expected = _compress_by_hand(s, t, q_s, q_t, 0.04)
    assert expected > 0.1  # the empty-memory start gave exactly 0 here
    assert out.terms["compress"].item() == pytest.approx(expected, rel=1e-4)


def test_two_queue_structure(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx
) -> None:
    obj, _, _ = _make(make_backbone, make_teacher, make_ctx)
    assert isinstance(obj.head, nn.Identity)
    assert obj.teacher_queue.data.shape == (32, 6)
    assert obj.student_queue is not None and obj.student_queue.data.shape == (32, 4)
    assert obj.key_encoder is None  # made from the student on the first compute


def test_first_step_is_zero_then_queues_fill(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx)
    step = make_step(student, teacher, batch=5)
    out = obj.compute(step)
    assert out.terms["compress"].item() == 0.0
    out.total.backward()  # attached to the graph, zero gradient
    assert obj.key_encoder is not None
    assert all(not p.requires_grad and p.grad is None for p in obj.key_encoder.parameters())
    obj.after_step(step)
    assert obj.student_queue is not None
    assert len(obj.teacher_queue) == len(obj.student_queue) == 5
    images = step.views[0]
    assert torch.allclose(obj.teacher_queue.valid(), F.normalize(teacher.features(images), dim=1))
    # the key encoder was a copy of the (unchanged) student, in train mode like the student
    assert torch.allclose(
        obj.student_queue.valid(), F.normalize(student.forward_features(images), dim=1), atol=1e-6
    )


def test_value_against_memories(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx)
    for seed in (0, 1):
        warm = make_step(student, teacher, batch=5, seed=seed)
        obj.compute(warm)
        obj.after_step(warm)
    assert obj.student_queue is not None
    step = make_step(student, teacher, batch=5, seed=2)
    out = obj.compute(step)
    s = student.forward_features(step.views[0]).tolist()
    t = teacher.features(step.views[0]).tolist()
    expected = _compress_by_hand(
        s, t, obj.student_queue.valid().tolist(), obj.teacher_queue.valid().tolist(), 0.04
    )
    assert out.terms["compress"].item() == pytest.approx(expected, rel=1e-4)


def test_momentum_update(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx, momentum=0.9)
    optimiser = torch.optim.SGD(student.parameters(), lr=0.5)
    for seed in range(3):
        step = make_step(student, teacher, batch=5, seed=seed)
        out = obj.compute(step)
        assert obj.key_encoder is not None
        before = [p.detach().clone() for p in obj.key_encoder.parameters()]
        optimiser.zero_grad()
        out.total.backward()
        optimiser.step()
        obj.after_step(step)
        for old, new, s in zip(
            before, obj.key_encoder.parameters(), student.parameters(), strict=True
        ):
            assert torch.allclose(new, 0.9 * old + 0.1 * s.detach(), atol=1e-6)
    key_body = cast(FakeBackbone, obj.key_encoder).body
    assert not torch.allclose(key_body.weight, student.body.weight)


def test_gradients_reach_student_not_teacher_or_key(
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_grad_flow: AssertTerms,
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx)
    warm = make_step(student, teacher, seed=0)
    obj.compute(warm)
    obj.after_step(warm)
    assert_grad_flow(obj, make_step(student, teacher, seed=1))
    assert obj.key_encoder is not None
    assert all(p.grad is None for p in obj.key_encoder.parameters())


def test_checkpoint_restore_into_a_fresh_objective(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx)
    optimiser = torch.optim.SGD(student.parameters(), lr=0.5)
    for seed in range(3):
        step = make_step(student, teacher, batch=5, seed=seed)
        out = obj.compute(step)
        optimiser.zero_grad()
        out.total.backward()
        optimiser.step()
        obj.after_step(step)
    state = obj.state_dict()
    assert "key_encoder.body.weight" in state and "key_encoder.norm.running_mean" in state
    assert {"teacher_queue.data", "student_queue.data", "student_queue.filled"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    fresh, _, _ = _make(make_backbone, make_teacher, make_ctx)
    fresh.load_state_dict(loaded)  # strict: no missing / unexpected keys
    assert _key_encoder(fresh) is None
    again = fresh.state_dict()  # the saved encoder is still there before the first step
    assert set(again) == set(state)
    assert all(torch.equal(again[k], state[k]) for k in state)

    step = make_step(student, teacher, batch=5, seed=9)
    assert torch.allclose(fresh.compute(step).total, obj.compute(step).total)
    assert fresh.key_encoder is not None and obj.key_encoder is not None
    for a, b in zip(
        fresh.key_encoder.state_dict().values(), obj.key_encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_restore_after_attach_student(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx)
    step = make_step(student, teacher)
    obj.compute(step)
    obj.after_step(step)
    fresh, _, _ = _make(make_backbone, make_teacher, make_ctx)
    fresh.attach_student(student)
    assert fresh.key_encoder is not None
    fresh.load_state_dict(obj.state_dict())
    assert obj.key_encoder is not None
    fresh_key, obj_key = cast(FakeBackbone, fresh.key_encoder), cast(FakeBackbone, obj.key_encoder)
    assert torch.equal(fresh_key.body.weight, obj_key.body.weight)


def test_one_queue_variant(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx, variant="1q")
    assert isinstance(obj.head, nn.Linear)
    assert (obj.head.in_features, obj.head.out_features) == (4, 6)
    assert obj.student_queue is None
    warm = make_step(student, teacher, batch=5, seed=0)
    obj.compute(warm)
    obj.after_step(warm)
    assert obj.key_encoder is None and len(obj.teacher_queue) == 5
    assert not any(k.startswith("key_encoder") for k in obj.state_dict())
    step = make_step(student, teacher, batch=5, seed=1)
    out = obj.compute(step)
    s = obj.head(student.forward_features(step.views[0])).tolist()
    t = teacher.features(step.views[0]).tolist()
    q_t = obj.teacher_queue.valid().tolist()
    assert out.terms["compress"].item() == pytest.approx(
        _compress_by_hand(s, t, q_t, q_t, 0.04), rel=1e-4
    )


def test_queue_smaller_than_batch(
    make_backbone: MakeBackbone, make_teacher: MakeTeacher, make_ctx: MakeCtx, make_step: MakeStep
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx, queue_size=3)
    step = make_step(student, teacher, batch=5)
    obj.compute(step)
    obj.after_step(step)
    assert obj.teacher_queue.is_full and obj.student_queue is not None
    assert len(obj.student_queue) == 3
    assert torch.isfinite(obj.compute(make_step(student, teacher, seed=3)).total)


@pytest.mark.parametrize("variant", ["2q", "1q"])
def test_finite_under_bf16_autocast(
    variant: str,
    make_backbone: MakeBackbone,
    make_teacher: MakeTeacher,
    make_ctx: MakeCtx,
    make_step: MakeStep,
    assert_finite_bf16: AssertTerms,
) -> None:
    obj, student, teacher = _make(make_backbone, make_teacher, make_ctx, variant=variant)
    warm = make_step(student, teacher, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        obj.compute(warm)
    obj.after_step(warm)
    assert_finite_bf16(obj, make_step(student, teacher, seed=1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"variant": "3q"}, "variant"),
        ({"tau": 0.0}, "tau"),
        ({"queue_size": 0}, "queue_size"),
        ({"momentum": 1.5}, "momentum"),
        ({"weight": 0.0}, "weight"),
    ],
)
def test_params_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CompRessParams(**kwargs)  # type: ignore[arg-type]


def test_defaults_and_registry() -> None:
    p = CompRessParams()
    assert (p.variant, p.tau, p.queue_size, p.momentum) == ("2q", 0.04, 128000, 0.999)
    assert get_objective("compress") is CompRess
