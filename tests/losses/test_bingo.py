"""BINGO objective (shared/methods.md section 3): values by hand, CutMix, bags, queue, resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losses
from losses.base import StepInputs, make_params
from losses.bingo import (
    BINGO,
    BINGOParams,
    cutmix,
    cutmix_box,
    multi_positive_infonce,
    sample_bag_neighbours,
)
from models.teacher import FrozenTeacher
from tests.losses.fakes import TinyNet, make_context, make_step

N_IMAGES = 10


def _build(
    seed: int = 0, bn: bool = True, **params: object
) -> tuple[BINGO, TinyNet, FrozenTeacher]:
    torch.manual_seed(100)
    teacher = FrozenTeacher(
        TinyNet(6, bn=bn), nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 5))
    )
    torch.manual_seed(seed)
    student = TinyNet(4, bn=bn)
    values = {"queue_size": 8, "hidden_dim": 16, **params}
    ctx = make_context(student, teacher, dataset_size=N_IMAGES)
    obj = BINGO(BINGOParams(**values), ctx)  # type: ignore[arg-type]
    return obj, student, teacher


class FakeData:
    """Fixed images; every fetch adds a call-dependent shift (a different 'augmentation')."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(3)
        self.images = torch.randn(N_IMAGES, 3, 8, 8, generator=gen)
        self.calls = 0
        # Neighbour graph: image i's 6 neighbours are i+1..i+6 (mod N), self excluded.
        self.neighbours = torch.stack(
            [(torch.arange(1, 7) + i) % N_IMAGES for i in range(N_IMAGES)]
        )

    def fetch(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.images[idx] + 0.1 * self.calls

    def step(
        self, student: TinyNet, teacher: FrozenTeacher, indices: list[int], epoch: int = 20
    ) -> StepInputs:
        idx = torch.tensor(indices)
        views = [self.images[idx] * 0.9, self.images[idx] * 1.1]
        s = make_step(
            views, student, teacher, fetch=self.fetch, neighbours=self.neighbours, epoch=epoch
        )
        s.indices = idx
        return s


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _ce(q: list[float], k: list[float], queue: list[list[float]], tau: float) -> float:
    pos = _dot(q, k) / tau
    negs = [_dot(q, row) / tau for row in queue]
    return -pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs))


def test_multi_positive_infonce_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 4, generator=gen), dim=1)
    keys = F.normalize(torch.randn(3, 2, 4, generator=gen), dim=2)
    queue = F.normalize(torch.randn(5, 4, generator=gen), dim=1)
    w = torch.tensor([0.7, 0.3])
    expected = (
        sum(
            float(w[j]) * _ce(q[i].tolist(), keys[i, j].tolist(), queue.tolist(), 0.2)
            for i in range(3)
            for j in range(2)
        )
        / 3
    )
    assert float(multi_positive_infonce(q, keys, queue, w, 0.2)) == pytest.approx(
        expected, rel=1e-5
    )
    per_row = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    expected = (
        _ce(q[0].tolist(), keys[0, 0].tolist(), queue.tolist(), 0.2)
        + _ce(q[1].tolist(), keys[1, 1].tolist(), queue.tolist(), 0.2)
        + 0.5 * _ce(q[2].tolist(), keys[2, 0].tolist(), queue.tolist(), 0.2)
        + 0.5 * _ce(q[2].tolist(), keys[2, 1].tolist(), queue.tolist(), 0.2)
    ) / 3
    assert float(multi_positive_infonce(q, keys, queue, per_row, 0.2)) == pytest.approx(
        expected, rel=1e-5
    )


def test_cutmix_box_and_area() -> None:
    # lam = 0.75 -> side ratio sqrt(0.25) = 0.5 -> a 4 x 4 box on 8 x 8.
    assert cutmix_box(8, 8, 0.75, 4, 4) == (2, 6, 2, 6)
    assert cutmix_box(8, 8, 0.75, 0, 7) == (0, 2, 5, 8)  # clipped at the borders
    a = torch.zeros(2, 1, 8, 8)
    b = torch.ones(2, 1, 8, 8)
    mixed, lam = cutmix(a, b, (0, 2, 5, 8))
    assert lam == pytest.approx(1 - 6 / 64)
    assert float(mixed.sum()) == 2 * 6 and float(a.sum()) == 0  # anchor left untouched
    assert torch.equal(mixed[:, :, 0:2, 5:8], b[:, :, 0:2, 5:8])


def test_bag_sampling_stays_in_top_bag_size() -> None:
    graph = torch.arange(40).view(4, 10)
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack(
        [sample_bag_neighbours(graph, torch.tensor([0, 2, 3]), 5, gen) for _ in range(200)]
    )
    for col, row in enumerate([0, 2, 3]):
        assert set(picks[:, col].tolist()) == set(range(row * 10, row * 10 + 5))
    with pytest.raises(ValueError, match="K >= 5"):
        sample_bag_neighbours(graph[:, :4], torch.tensor([0]), 5)


@pytest.mark.parametrize("epoch, w_self, w_other", [(20, 0.5, 0.5), (0, 1.0, 0.0)])
def test_terms_match_hand_computation(
    epoch: int, w_self: float, w_other: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj, student, teacher = _build(bn=False, bag_size=1)  # bag of 1: neighbour of i is i + 1
    monkeypatch.setattr(obj, "draw_cutmix_box", lambda h, w, gen=None: (2, 6, 1, 5))
    data = FakeData()
    step = data.step(student, teacher, [0, 4, 7], epoch=epoch)
    out = obj.compute(step)
    tau = 0.2
    lam = 1 - 16 / 64
    idx = [0, 4, 7]
    nb = [1, 5, 8]
    with torch.no_grad():
        queue = obj.queue.data.tolist()

        def query(x: torch.Tensor) -> list[float]:
            return _unit(obj.head(student.forward_features(x[None]))[0].tolist())

        def key(x: torch.Tensor) -> list[float]:
            return _unit(teacher.embedding(teacher.features(x[None]))[0].tolist())

        anchor = neighbour = mix = 0.0
        for a, p in zip(idx, nb, strict=True):
            x_q = data.images[a] * 0.9
            x_k = data.images[a] * 1.1
            p_q = data.images[p] + 0.1  # first fetch
            p_k = data.images[p] + 0.2  # second fetch
            mixed = x_q.clone()
            mixed[:, 2:6, 1:5] = p_q[:, 2:6, 1:5]
            k_a, k_p = key(x_k), key(p_k)
            q_a, q_p, q_m = query(x_q), query(p_q), query(mixed)
            anchor += w_self * _ce(q_a, k_a, queue, tau) + w_other * _ce(q_a, k_p, queue, tau)
            neighbour += w_other * _ce(q_p, k_a, queue, tau) + w_self * _ce(q_p, k_p, queue, tau)
            mix += lam * _ce(q_m, k_a, queue, tau) + (1 - lam) * _ce(q_m, k_p, queue, tau)
    assert float(out.terms["anchor"].detach()) == pytest.approx(anchor / 3, rel=1e-4)
    assert float(out.terms["neighbour"].detach()) == pytest.approx(neighbour / 3, rel=1e-4)
    assert float(out.terms["mix"].detach()) == pytest.approx(mix / 3, rel=1e-4)
    assert out.weights == pytest.approx({"anchor": 1 / 3, "neighbour": 1 / 3, "mix": 1 / 3})


def test_after_step_enqueues_anchor_teacher_keys() -> None:
    obj, student, teacher = _build()
    data = FakeData()
    step = data.step(student, teacher, [1, 2, 3])
    obj.compute(step)
    obj.after_step(step)
    with torch.no_grad():  # the default teacher_bn: batch statistics of the key view
        k_a = F.normalize(
            teacher.embedding(teacher.batch_features(data.images[[1, 2, 3]] * 1.1)), dim=1)
    assert torch.allclose(obj.queue.data[:3], k_a, atol=1e-6) and int(obj.queue.ptr) == 3


def test_gradients_reach_student_and_head_never_teacher() -> None:
    obj, student, teacher = _build()
    data = FakeData()
    out = obj.compute(data.step(student, teacher, [0, 1, 2, 3]))
    out.total.backward()
    for p in [*student.parameters(), *obj.head.parameters()]:
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    for p in teacher.parameters():
        assert p.grad is None and not p.requires_grad
    trainable = {id(p) for p in obj.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in obj.head.parameters()}


def test_finite_under_bf16_autocast() -> None:
    obj, student, teacher = _build()
    data = FakeData()
    step = data.step(student, teacher, [0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj.compute(step)
    assert all(torch.isfinite(v) for v in out.terms.values())
    out.total.backward()
    obj.after_step(step)
    assert torch.isfinite(obj.queue.data).all()


def test_state_dict_round_trip_restores_queue() -> None:
    obj, student, teacher = _build()
    data = FakeData()
    opt = torch.optim.SGD([*student.parameters(), *obj.head.parameters()], lr=0.5)
    for s in range(2):
        step = data.step(student, teacher, [s, s + 2, s + 4])
        out = obj.compute(step)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        obj.after_step(step)
    state = obj.state_dict()
    assert int(state["queue.ptr"]) == 6

    fresh, fresh_student, _ = _build(seed=7)
    assert not torch.equal(fresh.queue.data, obj.queue.data)
    fresh_student.load_state_dict(student.state_dict())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue.data, obj.queue.data)
    torch.manual_seed(42)
    data.calls = 0
    a = obj.compute(data.step(student, teacher, [5, 6]))
    torch.manual_seed(42)
    data.calls = 0
    b = fresh.compute(data.step(fresh_student, teacher, [5, 6]))
    for name in a.terms:
        assert torch.equal(a.terms[name], b.terms[name]), name


def test_errors_requirements_registry() -> None:
    obj, student, teacher = _build()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="neighbour graph"):
        obj.compute(make_step([x, x], student, teacher))
    with pytest.raises(ValueError, match="2 views"):
        obj.compute(make_step([x], student, teacher))
    assert "bingo" in losses.OBJECTIVES
    req = BINGO.requirements(BINGOParams())
    assert req.num_views == 2 and req.neighbour_graph and not req.labels
    d = BINGOParams()
    assert (d.temperature, d.queue_size, d.bag_size, d.cutmix_alpha) == (0.2, 65536, 5, 2.0)


@pytest.mark.parametrize(
    "values",
    [
        {"temperature": 0.0},
        {"queue_size": 0},
        {"bag_size": 0},
        {"warmup_epochs": -1},
        {"cutmix_alpha": 0.0},
        {"mix_weight": -1.0},
        {"self_lam": -0.5},
        {"bogus": 1},
    ],
)
def test_params_validation(values: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_params("bingo", values)
