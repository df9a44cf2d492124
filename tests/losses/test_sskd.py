"""SSKD objective (shared/methods.md section 2): values by hand, heads, prepare, params."""

from __future__ import annotations

import copy
import math
from typing import cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losses
from losses.base import make_params, param_fields
from losses.sskd import SSKD, SSKDParams, rotate_batch, similarity_matrix, split_copies
from models.teacher import FrozenTeacher
from tests.losses.fakes import TinyNet, make_context, make_step

NUM_CLASSES = 5


def _softmax(v: list[float], t: float) -> list[float]:
    m = max(x / t for x in v)
    e = [math.exp(x / t - m) for x in v]
    s = sum(e)
    return [x / s for x in e]


def _kl(p_t: list[float], p_s: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s, strict=True) if a > 0)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _rank(row: list[float], target: int) -> int:
    return sum(1 for v in row if v > row[target])


def _keep(ranks: list[int], ratio: float) -> list[int]:
    wrong = [i for i, r in enumerate(ranks) if r > 0]
    by_rank = sorted(wrong, key=lambda i: (ranks[i], i))
    kept = [i for i, r in enumerate(ranks) if r == 0] + by_rank[: int(len(wrong) * ratio)]
    return sorted(kept)


def _rot(img: torch.Tensor, k: int) -> torch.Tensor:
    return torch.from_numpy(np.rot90(img.numpy(), k, axes=(1, 2)).copy())


def _build(bn: bool = False, **params: object) -> tuple[SSKD, TinyNet, FrozenTeacher]:
    torch.manual_seed(0)
    student = TinyNet(4, NUM_CLASSES, bn=bn)
    teacher = FrozenTeacher(TinyNet(6, NUM_CLASSES, bn=bn))
    obj = SSKD(SSKDParams(**params), make_context(student, teacher, NUM_CLASSES))  # type: ignore[arg-type]
    return obj, student, teacher


def _identity_augment(u: torch.Tensor) -> torch.Tensor:
    return (u.float() / 255.0 - 0.5) / 0.25


def _mark_ready(obj: SSKD, teacher: FrozenTeacher) -> None:
    """A zero-epoch stage: keeps the random teacher head but allows compute()."""
    assert obj.params.teacher_head_epochs == 0
    obj.prepare(
        teacher,
        torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
        None,
        _identity_augment,
        torch.device("cpu"),
    )


def test_rotate_batch_is_image_major_rot90() -> None:
    x = torch.randn(2, 3, 5, 5)
    x4 = rotate_batch(x)
    assert x4.shape == (8, 3, 5, 5)
    for i in range(2):
        for k in range(4):
            assert torch.equal(x4[4 * i + k], _rot(x[i], k))
    normal, transformed = split_copies(x4)
    assert torch.equal(normal, x)
    assert torch.equal(transformed[3 * 1 + 2], _rot(x[1], 3))
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.randn(2, 3, 4, 5))


@pytest.mark.parametrize("tf_ratio, ss_ratio", [(1.0, 0.75), (0.5, 0.5)])
def test_terms_match_hand_computation(tf_ratio: float, ss_ratio: float) -> None:
    obj, student, teacher = _build(teacher_head_epochs=0, tf_ratio=tf_ratio, ss_ratio=ss_ratio)
    _mark_ready(obj, teacher)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=gen)
    y = torch.tensor([0, 3, 1])
    out = obj.compute(make_step([x], student, teacher, labels=y))

    # Independent per-image forwards (no BN, so batch composition does not matter).
    s_log, s_rep, t_log, t_rep = {}, {}, {}, {}
    with torch.no_grad():
        for i in range(3):
            for k in range(4):
                xi = _rot(x[i], k)[None]
                sf = student.forward_features(xi)
                s_log[i, k] = student.forward_logits(sf)[0].tolist()
                s_rep[i, k] = obj.student_head(sf)[0].tolist()
                tf = teacher.features(xi)
                t_log[i, k] = teacher.logits(tf)[0].tolist()
                t_rep[i, k] = obj.teacher_head(tf)[0].tolist()

    ce = sum(-math.log(_softmax(s_log[i, 0], 1.0)[int(y[i])]) for i in range(3)) / 3
    kd = 16 * sum(_kl(_softmax(t_log[i, 0], 4), _softmax(s_log[i, 0], 4)) for i in range(3)) / 3

    rows = [(i, k) for i in range(3) for k in (1, 2, 3)]
    tf_ranks = [_rank(t_log[r], int(y[r[0]])) for r in rows]
    tf_kept = _keep(tf_ranks, tf_ratio)
    assert (len(tf_kept) < 9) == (tf_ratio < 1.0)
    tf_kd = (
        16
        * sum(_kl(_softmax(t_log[rows[n]], 4), _softmax(s_log[rows[n]], 4)) for n in tf_kept)
        / len(tf_kept)
    )

    a_t = [[_cos(t_rep[r], t_rep[j, 0]) for j in range(3)] for r in rows]
    a_s = [[_cos(s_rep[r], s_rep[j, 0]) for j in range(3)] for r in rows]
    ss_ranks = [_rank(a_t[n], rows[n][0]) for n in range(9)]
    ss_kept = _keep(ss_ranks, ss_ratio)
    assert len(ss_kept) < 9  # the example really drops rows
    ss = (
        0.25
        * sum(_kl(_softmax(a_t[n], 0.5), _softmax(a_s[n], 0.5)) for n in ss_kept)
        / len(ss_kept)
    )

    expected = {"ce": ce, "kd": kd, "tf_kd": tf_kd, "ss": ss}
    for name, value in expected.items():
        assert float(out.terms[name].detach()) == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert out.weights == {"ce": 0.1, "kd": 0.9, "tf_kd": 2.7, "ss": 10.0}
    total = 0.1 * ce + 0.9 * kd + 2.7 * tf_kd + 10 * ss
    assert float(out.total.detach()) == pytest.approx(total, rel=1e-4)


def test_gradients_reach_student_and_its_head_never_the_teacher() -> None:
    obj, student, teacher = _build(bn=True, teacher_head_epochs=0)
    _mark_ready(obj, teacher)
    x = torch.randn(4, 3, 8, 8)
    out = obj.compute(make_step([x], student, teacher, labels=torch.tensor([0, 1, 2, 3])))
    out.total.backward()
    for p in [*student.parameters(), *obj.student_head.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(
        float(p.grad.abs().sum()) > 0 for p in obj.student_head.parameters() if p.grad is not None
    )
    for p in [*teacher.parameters(), *obj.teacher_head.parameters()]:
        assert p.grad is None and not p.requires_grad
    trainable = {id(p) for p in obj.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in obj.student_head.parameters()}


def test_finite_under_bf16_autocast() -> None:
    obj, student, teacher = _build(bn=True, teacher_head_epochs=0)
    _mark_ready(obj, teacher)
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj.compute(make_step([x], student, teacher, labels=torch.tensor([0, 1, 2, 3])))
    assert all(torch.isfinite(v) for v in out.terms.values())
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim = similarity_matrix(torch.randn(6, 4), torch.randn(2, 4))
    assert sim.dtype == torch.float32 and sim.shape == (6, 2)


def test_prepare_trains_only_the_teacher_head() -> None:
    obj, _, teacher = _build(
        bn=True,
        teacher_head_epochs=3,
        teacher_head_batch_size=4,
        teacher_head_milestones=(2,),
        teacher_head_lr=0.5,
    )
    # Non-trivial BN running statistics in the teacher.
    bn = teacher.backbone.bn
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
    teacher_before = copy.deepcopy(teacher.state_dict())
    head_before = copy.deepcopy(obj.teacher_head.state_dict())
    student_head_before = copy.deepcopy(obj.student_head.state_dict())
    images = torch.randint(0, 256, (18, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():  # prepare must work whatever the caller's grad mode
        obj.prepare(teacher, images, None, _identity_augment, torch.device("cpu"))

    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in obj.teacher_head.state_dict().items())
    for k, v in obj.student_head.state_dict().items():
        assert torch.equal(v, student_head_before[k]), k
    assert not any(p.requires_grad for p in obj.teacher_head.parameters())
    assert bool(obj.teacher_head_ready)
    assert [e["epoch"] for e in obj.prepare_log] == [1.0, 2.0, 3.0]
    assert all(math.isfinite(e["loss"]) for e in obj.prepare_log)

    trained = copy.deepcopy(obj.teacher_head.state_dict())
    obj.prepare(teacher, images, None, _identity_augment, torch.device("cpu"))  # no-op now
    for k, v in obj.teacher_head.state_dict().items():
        assert torch.equal(v, trained[k])


def test_prepare_loss_decreases() -> None:
    obj, _, teacher = _build(
        teacher_head_epochs=15,
        teacher_head_batch_size=8,
        teacher_head_lr=0.5,
        teacher_head_milestones=(),
    )
    # Smooth random images (2x2 upsampled): pure noise gives near-identical pooled features.
    small = torch.rand(16, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    images = (F.interpolate(small, size=8, mode="bilinear") * 255).to(torch.uint8)
    obj.prepare(teacher, images, None, _identity_augment, torch.device("cpu"))
    losses_by_epoch = [e["loss"] for e in obj.prepare_log]
    assert losses_by_epoch[0] == pytest.approx(math.log(8), abs=0.1)  # ~uniform at the start
    assert sum(losses_by_epoch[-3:]) / 3 < losses_by_epoch[0] - 0.2


def test_state_dict_round_trip_keeps_trained_head() -> None:
    obj, student, teacher = _build(teacher_head_epochs=1, teacher_head_batch_size=4)
    obj.prepare(
        teacher,
        torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8),
        None,
        _identity_augment,
        torch.device("cpu"),
    )
    fresh, _, _ = _build(teacher_head_epochs=1, teacher_head_batch_size=4)
    assert not bool(fresh.teacher_head_ready)
    fresh.load_state_dict(obj.state_dict())
    assert bool(fresh.teacher_head_ready)
    x = torch.randn(2, 3, 8, 8)
    step = make_step([x], student, teacher, labels=torch.tensor([1, 2]))
    a, b = obj.compute(step), fresh.compute(step)
    for name in a.terms:
        assert torch.allclose(a.terms[name], b.terms[name]), name


def test_compute_uses_the_engine_rotated_batch() -> None:
    """With ``step.rotated`` (the engine's flip-once, crop-each-copy batch) the copies come
    from it, not from rotating ``views[0]``; ties use ``step.rng``."""
    obj, student, teacher = _build(teacher_head_epochs=0)
    _mark_ready(obj, teacher)
    assert SSKD.requirements(obj.params).rotated_views
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(3, 3, 8, 8, generator=gen), torch.randn(3, 3, 8, 8, generator=gen)
    labels = torch.tensor([0, 3, 1])
    given = obj.compute(make_step([x], student, teacher, labels=labels,
                                  rotated=rotate_batch(y), rng=torch.Generator().manual_seed(0)))
    direct = obj.compute(make_step([y], student, teacher, labels=labels,
                                   rng=torch.Generator().manual_seed(0)))
    for name in given.terms:
        assert float(given.terms[name].detach()) == pytest.approx(
            float(direct.terms[name].detach()), rel=1e-6), name
    with pytest.raises(ValueError, match="4 copies"):
        obj.compute(make_step([x], student, teacher, labels=labels,
                              rotated=rotate_batch(y)[:-1]))


def test_prepare_uses_the_rotated_pipeline() -> None:
    obj, _, teacher = _build(teacher_head_epochs=2, teacher_head_batch_size=4,
                             teacher_head_milestones=())
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    rotated_calls: list[int] = []

    def rotate(u: torch.Tensor) -> torch.Tensor:
        rotated_calls.append(u.shape[0])
        return rotate_batch(_identity_augment(u))

    def augment(u: torch.Tensor) -> torch.Tensor:
        raise AssertionError("prepare must build its copies with rotate=")

    obj.prepare(teacher, images, None, augment, torch.device("cpu"), rotate=rotate)
    assert rotated_calls == [4, 4, 4, 4] and bool(obj.teacher_head_ready)


def test_compute_errors() -> None:
    obj, student, teacher = _build(teacher_head_epochs=0)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="prepare"):
        obj.compute(make_step([x], student, teacher, labels=torch.tensor([0, 1])))
    _mark_ready(obj, teacher)
    with pytest.raises(ValueError, match="labels"):
        obj.compute(make_step([x], student, teacher, labels=None))
    with pytest.raises(ValueError, match="at least 2"):
        obj.compute(make_step([x[:1]], student, teacher, labels=torch.tensor([0])))


def test_requirements_registry_and_defaults() -> None:
    assert "sskd" in losses.OBJECTIVES
    req = SSKD.requirements(SSKDParams())
    assert req.labels and req.teacher_classifier and req.student_classifier
    assert req.min_batch_size == 2
    defaults = param_fields("sskd")
    assert defaults["ce_weight"] == 0.1 and defaults["kd_weight"] == 0.9
    assert defaults["tf_kd_weight"] == 2.7 and defaults["ss_weight"] == 10.0
    assert defaults["kd_temperature"] == 4.0 and defaults["tf_temperature"] == 4.0
    assert defaults["ss_temperature"] == 0.5
    assert defaults["tf_ratio"] == 1.0 and defaults["ss_ratio"] == 0.75
    assert defaults["teacher_head_epochs"] == 60 and defaults["teacher_head_lr"] == 0.05
    assert defaults["teacher_head_milestones"] == (30, 45)


@pytest.mark.parametrize(
    "values",
    [
        {"ce_weight": -1.0},
        {"ss_temperature": 0.0},
        {"tf_ratio": 1.5},
        {"ss_ratio": -0.1},
        {"teacher_head_epochs": -1},
        {"teacher_head_lr": 0.0},
        {"teacher_head_milestones": [45, 30]},
        {"teacher_head_milestones": 30},
        {"teacher_head_batch_size": 1},
        {"teacher_head_gamma": 0.0},
        {"no_such_param": 1},
    ],
)
def test_params_validation(values: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_params("sskd", values)


def test_yaml_list_milestones_become_a_tuple() -> None:
    params = make_params("sskd", {"teacher_head_milestones": [2, 4], "teacher_head_epochs": 5})
    assert cast(SSKDParams, params).teacher_head_milestones == (2, 4)
