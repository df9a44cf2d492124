"""DisCo objective (shared/methods.md section 3): values by hand, key encoder, queue, resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import losses
from losses.base import make_params
from losses.disco import DisCo, DisCoParams
from losses.functional import moco_infonce, sum_mse
from models.queue import FeatureQueue
from models.teacher import FrozenTeacher
from tests.losses.fakes import TinyNet, make_context, make_step


def _build(
    seed: int = 0, ssl_dim: int | None = 7, bn: bool = True, **params: object
) -> tuple[DisCo, TinyNet, FrozenTeacher]:
    torch.manual_seed(seed)
    student = TinyNet(4, bn=bn)
    torch.manual_seed(100)  # the same teacher whatever the seed
    head = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, ssl_dim)) if ssl_dim else None
    teacher = FrozenTeacher(TinyNet(6, bn=bn), head)
    torch.manual_seed(seed)
    values = {"queue_size": 8, "hidden_dim": 16, **params}
    obj = DisCo(DisCoParams(**values), make_context(student, teacher))  # type: ignore[arg-type]
    return obj, student, teacher


def _views(seed: int = 1, batch: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 8, 8, generator=gen) for _ in range(2)]


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_moco_infonce_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 4, generator=gen), dim=1)
    k = torch.nn.functional.normalize(torch.randn(3, 4, generator=gen), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(5, 4, generator=gen), dim=1)
    tau = 0.2
    expected = 0.0
    for i in range(3):
        pos = _dot(q[i].tolist(), k[i].tolist()) / tau
        negs = [_dot(q[i].tolist(), queue[j].tolist()) / tau for j in range(5)]
        expected += -pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs))
    assert float(moco_infonce(q, k, queue, tau)) == pytest.approx(expected / 3, rel=1e-5)


def test_sum_mse_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    b = torch.tensor([[0.5, 2.0], [1.0, 1.0]])
    assert float(sum_mse(a, b)) == pytest.approx(0.25 + 0 + 1 + 4)


def test_key_queue_starts_full_of_random_unit_vectors() -> None:
    q = FeatureQueue(5, 3).fill_random_()
    assert len(q) == 5 and q.is_full and int(q.ptr) == 0
    assert torch.allclose(q.valid().norm(dim=1), torch.ones(5))
    keys = torch.nn.functional.normalize(torch.randn(2, 3), dim=1)
    q.enqueue(keys)
    assert torch.equal(q.data[:2], keys) and int(q.ptr) == 2 and len(q) == 5


def test_terms_match_hand_computation() -> None:
    obj, student, teacher = _build(bn=False)
    x1, x2 = _views()
    out = obj.compute(make_step([x1, x2], student, teacher))
    tau = 0.2
    with torch.no_grad():

        def query(x: torch.Tensor) -> list[list[float]]:
            return [
                _unit(obj.head(student.forward_features(x[i : i + 1]))[0].tolist())
                for i in range(x.shape[0])
            ]

        def target(x: torch.Tensor) -> list[list[float]]:
            return [
                _unit(teacher.embedding(teacher.features(x[i : i + 1]))[0].tolist())
                for i in range(x.shape[0])
            ]

        q1, q2, t1, t2 = query(x1), query(x2), target(x1), target(x2)
        queue = obj.queue.data.tolist()
    # Key encoder == student copy at the first step, so k = q2.
    contrast = 0.0
    for i in range(3):
        pos = _dot(q1[i], q2[i]) / tau
        negs = [_dot(q1[i], row) / tau for row in queue]
        contrast += -pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs))
    mse1 = sum((a - b) ** 2 for i in range(3) for a, b in zip(q1[i], t1[i], strict=True))
    mse2 = sum((a - b) ** 2 for i in range(3) for a, b in zip(q2[i], t2[i], strict=True))
    assert float(out.terms["contrast"].detach()) == pytest.approx(contrast / 3, rel=1e-4)
    assert float(out.terms["mse1"].detach()) == pytest.approx(mse1, rel=1e-4)
    assert float(out.terms["mse2"].detach()) == pytest.approx(mse2, rel=1e-4)
    assert out.weights == {"contrast": 1.0, "mse1": 1.0, "mse2": 1.0}


def test_head_matches_teacher_embedding_dim() -> None:
    obj, _, _ = _build(ssl_dim=7)
    assert obj.head[-1].out_features == 7 and obj.queue.data.shape == (8, 7)
    obj, _, _ = _build(ssl_dim=None)  # no SSL head: raw teacher features (6)
    assert obj.head[-1].out_features == 6 and obj.queue.data.shape == (8, 6)
    assert obj.head[0].out_features == 16


def test_momentum_update_and_enqueue() -> None:
    obj, student, teacher = _build(momentum=0.75)
    views = _views()
    step = make_step(views, student, teacher)
    out = obj.compute(step)
    assert obj.key_encoder is not None
    for p_k, p_q in zip(obj.key_encoder.backbone.parameters(), student.parameters(), strict=True):
        assert torch.equal(p_k, p_q) and not p_k.requires_grad
    with torch.no_grad():
        keys = obj.key_encoder(views[1])
    before_k = [p.detach().clone() for p in obj.key_encoder.parameters()]
    out.total.backward()
    with torch.no_grad():  # stand-in optimiser step on student and head
        for p in [*student.parameters(), *obj.head.parameters()]:
            p.add_(1.0)
    obj.after_step(step)
    now_q = [*student.parameters(), *obj.head.parameters()]
    for old, new, q in zip(before_k, obj.key_encoder.parameters(), now_q, strict=True):
        assert torch.allclose(new, 0.75 * old + 0.25 * q)
    assert int(obj.queue.ptr) == 3
    assert torch.allclose(obj.queue.data[:3], keys, atol=1e-6)


def test_gradients_reach_student_and_head_never_teacher_or_keys() -> None:
    obj, student, teacher = _build()
    out = obj.compute(make_step(_views(), student, teacher))
    out.total.backward()
    for p in [*student.parameters(), *obj.head.parameters()]:
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    assert obj.key_encoder is not None
    for p in [*teacher.parameters(), *obj.key_encoder.parameters()]:
        assert p.grad is None and not p.requires_grad
    trainable = {id(p) for p in obj.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in obj.head.parameters()}


def test_finite_under_bf16_autocast() -> None:
    obj, student, teacher = _build()
    step = make_step(_views(), student, teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj.compute(step)
    assert all(torch.isfinite(v) for v in out.terms.values())
    out.total.backward()
    obj.after_step(step)
    assert torch.isfinite(obj.queue.data).all()


def _train(obj: DisCo, student: TinyNet, teacher: FrozenTeacher, steps: int) -> None:
    opt = torch.optim.SGD([*student.parameters(), *obj.head.parameters()], lr=0.5)
    for s in range(steps):
        step = make_step(_views(seed=10 + s), student, teacher)
        out = obj.compute(step)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        obj.after_step(step)


def test_state_dict_round_trip_restores_key_encoder_and_queue() -> None:
    obj, student, teacher = _build(momentum=0.5)
    _train(obj, student, teacher, 2)
    state = obj.state_dict()
    assert any(k.startswith("key_encoder.backbone.") for k in state)
    assert "queue.data" in state and "queue.ptr" in state and int(state["queue.ptr"]) == 6 % 8

    fresh, fresh_student, _ = _build(seed=5, momentum=0.5)  # different init and queue
    fresh_student.load_state_dict(student.state_dict())
    fresh.load_state_dict(state)  # strict: the lazy key encoder's keys are accepted
    assert torch.equal(fresh.queue.data, obj.queue.data)
    views = _views(seed=99)
    a = obj.compute(make_step(views, student, teacher))
    b = fresh.compute(make_step(views, fresh_student, teacher))
    assert fresh.key_encoder is not None and obj.key_encoder is not None
    for (name, p), q in zip(
        fresh.key_encoder.state_dict().items(), obj.key_encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    # The key encoder differs from the student after momentum updates, so this is a real check.
    assert any(
        not torch.equal(p, q)
        for p, q in zip(obj.key_encoder.backbone.parameters(), student.parameters(), strict=True)
    )
    for name in a.terms:
        assert torch.equal(a.terms[name], b.terms[name]), name


def test_errors_requirements_registry() -> None:
    obj, student, teacher = _build()
    with pytest.raises(ValueError, match="2 views"):
        obj.compute(make_step(_views()[:1], student, teacher))
    assert "disco" in losses.OBJECTIVES
    req = DisCo.requirements(DisCoParams())
    assert req.num_views == 2 and not req.labels
    defaults = DisCoParams()
    assert (defaults.temperature, defaults.momentum, defaults.queue_size) == (0.2, 0.999, 65536)
    assert (defaults.contrast_weight, defaults.mse1_weight, defaults.mse2_weight) == (1, 1, 1)


@pytest.mark.parametrize(
    "values",
    [
        {"temperature": 0.0},
        {"momentum": 1.5},
        {"queue_size": 0},
        {"hidden_dim": 0},
        {"mse1_weight": -1.0},
        {"lambda": 1.0},
    ],
)
def test_params_validation(values: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_params("disco", values)
