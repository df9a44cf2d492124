"""Teacher BatchNorm in DisCo and BINGO (issue 12, item 3): the official teacher forward runs
in train mode (batch statistics), here without ever updating the teacher; DisCo's momentum
keys get shuffle-BN emulated on one device."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losses.bingo import BINGO, BINGOParams
from losses.disco import DisCo, DisCoParams
from losses.functional import shuffled_split_forward
from models.teacher import FrozenTeacher
from orchestrator.engine.teacher_pass import SharedTeacher
from tests.losses.fakes import TinyNet, make_context, make_step

N_IMAGES = 10


def _teacher() -> FrozenTeacher:
    """A BN teacher whose running statistics are far from any batch's (so the modes differ)."""
    torch.manual_seed(100)
    backbone = TinyNet(6, bn=True)
    bn = backbone.bn
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.running_mean is not None and bn.running_var is not None
    assert bn.num_batches_tracked is not None
    with torch.no_grad():
        bn.running_mean.fill_(0.7)
        bn.running_var.fill_(3.0)
        bn.num_batches_tracked.fill_(17)
    head = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 5))
    return FrozenTeacher(backbone, head)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_identical(before: dict[str, torch.Tensor], module: nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # bit-identical: weights, running stats, counter


def test_batch_features_use_the_batch_statistics_and_change_nothing() -> None:
    teacher = _teacher()
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before = _snapshot(teacher)
    batch = teacher.batch_features(x)
    backbone = teacher.backbone
    assert isinstance(backbone, TinyNet)
    conv, bn = backbone.conv, backbone.bn
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        h = conv(x)
        mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
        normed = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
        by_hand = F.relu(normed * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    assert torch.allclose(batch, by_hand.mean(dim=(2, 3)), atol=1e-5)
    assert not torch.allclose(batch, teacher.features(x), atol=1e-3)  # eval mode differs
    _assert_identical(before, teacher)
    assert not teacher.training and not bn.training and bn.track_running_stats  # restored


def test_shared_teacher_caches_the_batch_forward() -> None:
    shared = SharedTeacher(_teacher())
    x = torch.randn(4, 3, 8, 8)
    a, b = shared.batch_features(x), shared.batch_features(x)
    assert a is b and shared.forwards == 1
    shared.features(x)  # another kind of forward, counted on its own
    assert shared.forwards == 2


def test_shuffled_split_forward() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    x = torch.randn(8, 3)
    with torch.no_grad():
        assert torch.equal(shuffled_split_forward(net, x, 1), net(x))
        gen = torch.Generator().manual_seed(4)
        out = shuffled_split_forward(net, x, 2, gen)
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(4))
        chunks = [net(c) for c in x[perm].tensor_split(2)]
        expected = torch.empty_like(out)
        expected[perm] = torch.cat(chunks)
        assert torch.allclose(out, expected, atol=1e-6)
        assert not torch.allclose(out, net(x), atol=1e-3)  # per-chunk statistics
        plain = nn.Linear(3, 4)  # no BatchNorm: splitting changes nothing, rows stay in order
        assert torch.allclose(shuffled_split_forward(plain, x, 4, gen), plain(x), atol=1e-6)
        # chunks keep at least 2 rows: 3 rows allow one chunk only
        assert torch.equal(shuffled_split_forward(net, x[:3], 8, gen), net(x[:3]))


def _train_step(obj: Any, student: nn.Module, step: Any) -> None:
    params = [p for p in [*student.parameters(), *obj.parameters()] if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    out = obj.compute(step)
    optimiser.zero_grad()
    out.total.backward()
    optimiser.step()
    obj.after_step(step)


def _value(t: torch.Tensor) -> float:
    return float(t.detach())


def _sq(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum().detach())


def _views(batch: int = 6) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 8, 8, generator=gen) for _ in range(2)]


def test_disco_default_teacher_uses_batch_statistics_and_is_never_updated() -> None:
    assert DisCoParams().teacher_bn == "batch" and DisCoParams().key_bn_splits == 8
    teacher = _teacher()
    torch.manual_seed(0)
    student = TinyNet(4, bn=True)
    obj = DisCo(DisCoParams(queue_size=16, hidden_dim=16), make_context(student, teacher))
    x1, x2 = _views()
    before = _snapshot(teacher)
    step = make_step([x1, x2], student, teacher, rng=torch.Generator().manual_seed(7))
    out = obj.compute(step)
    q1 = obj.embed(student, x1)
    t1 = F.normalize(teacher.embedding(teacher.batch_features(x1)), dim=1)
    assert _value(out.terms["mse1"]) == pytest.approx(_sq(q1, t1), rel=1e-5)
    eval_t1 = F.normalize(teacher.embedding(teacher.features(x1)), dim=1)
    assert _value(out.terms["mse1"]) != pytest.approx(_sq(q1, eval_t1), rel=1e-3)
    obj.after_step(step)
    _train_step(obj, student, make_step([x1, x2], student, teacher,
                                        rng=torch.Generator().manual_seed(8)))
    _assert_identical(before, teacher)
    assert all(p.grad is None for p in teacher.parameters())


def test_disco_eval_teacher_bn_uses_running_statistics() -> None:
    teacher = _teacher()
    torch.manual_seed(0)
    student = TinyNet(4, bn=True)
    obj = DisCo(DisCoParams(queue_size=16, hidden_dim=16, teacher_bn="eval"),
                make_context(student, teacher))
    x1, x2 = _views()
    out = obj.compute(make_step([x1, x2], student, teacher))
    q2 = obj.embed(student, x2)
    t2 = F.normalize(teacher.embedding(teacher.features(x2)), dim=1)
    assert _value(out.terms["mse2"]) == pytest.approx(_sq(q2, t2), rel=1e-5)


def test_disco_keys_get_shuffle_bn() -> None:
    """The enqueued keys are the momentum encoder's on the shuffled key view in
    ``key_bn_splits`` chunks (the permutation from step.rng), not one full-batch forward."""
    teacher = _teacher()
    torch.manual_seed(0)
    student = TinyNet(4, bn=True)
    obj = DisCo(DisCoParams(queue_size=16, hidden_dim=16, key_bn_splits=3),
                make_context(student, teacher))
    x1, x2 = _views()
    step = make_step([x1, x2], student, teacher, rng=torch.Generator().manual_seed(7))
    obj.compute(step)
    assert len(obj._pending_keys) == 1  # one compute call: one batch of keys
    keys = obj._pending_keys[0]
    assert keys is not None and obj.key_encoder is not None
    with torch.no_grad():
        expected = shuffled_split_forward(obj.key_encoder, x2, 3,
                                          torch.Generator().manual_seed(7))
        whole = obj.key_encoder(x2)
    assert torch.allclose(keys, expected, atol=1e-6)
    assert not torch.allclose(keys, whole, atol=1e-3)


def _bingo_step(student: TinyNet, teacher: FrozenTeacher, rng_seed: int) -> Any:
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(N_IMAGES, 3, 8, 8, generator=gen)
    neighbours = torch.stack([(torch.arange(1, 7) + i) % N_IMAGES for i in range(N_IMAGES)])
    calls = [0]

    def fetch(idx: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return images[idx] + 0.1 * calls[0]

    idx = torch.tensor([0, 2, 4, 6])
    step = make_step([images[idx] * 0.9, images[idx] * 1.1], student, teacher, fetch=fetch,
                     neighbours=neighbours, epoch=20, rng=torch.Generator().manual_seed(rng_seed))
    step.indices = idx
    return step, images[idx] * 1.1


@pytest.mark.parametrize("mode", ["batch", "eval"])
def test_bingo_teacher_keys_follow_teacher_bn(mode: str) -> None:
    assert BINGOParams().teacher_bn == "batch"
    teacher = _teacher()
    torch.manual_seed(0)
    student = TinyNet(4, bn=True)
    obj = BINGO(BINGOParams(queue_size=16, hidden_dim=16, teacher_bn=mode),
                make_context(student, teacher, dataset_size=N_IMAGES))
    before = _snapshot(teacher)
    step, x_k = _bingo_step(student, teacher, 5)
    obj.compute(step)
    assert len(obj._pending_keys) == 1  # one compute call: one batch of keys
    keys = obj._pending_keys[0]
    forward = teacher.batch_features if mode == "batch" else teacher.features
    other = teacher.features if mode == "batch" else teacher.batch_features
    assert keys is not None
    assert torch.allclose(keys, F.normalize(teacher.embedding(forward(x_k)), dim=1), atol=1e-6)
    assert not torch.allclose(keys, F.normalize(teacher.embedding(other(x_k)), dim=1), atol=1e-3)
    obj.after_step(step)
    _train_step(obj, student, _bingo_step(student, teacher, 6)[0])
    _assert_identical(before, teacher)
