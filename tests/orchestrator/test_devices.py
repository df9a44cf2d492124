"""``train.devices``: one device computes what DDP on D GPUs computes -- checked against a
real two-process DDP step (torch.distributed, gloo on CPU, a FileStore rendezvous)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from losses import NeighbourBatches, StepInputs
from losses.coss import CoSS, CoSSParams
from losses.seed import SEED, SEEDParams
from models.augment import AUGMENT_PRESETS
from models.pretrain import PretrainConfig
from models.teacher import FrozenTeacher
from orchestrator.data.batches import BatchStream, device_rows
from orchestrator.data.streams import generator
from orchestrator.engine.devices import per_device_step
from orchestrator.engine.knn import neighbour_graph
from orchestrator.engine.member import Member, build_member
from orchestrator.engine.teacher_pass import SharedTeacher
from orchestrator.errors import SpecError
from orchestrator.spec.config import (
    DatasetConfig,
    EvalConfig,
    LossConfig,
    PretrainSource,
    RuntimeConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    TrialConfig,
    flat_params,
)
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.losses.fakes import TinyNet, make_context
from tests.orchestrator.specs import minimal_spec

NEIGHBOURS, POOL, BATCH, DEVICES = 3, 5, 16, 2  # 4 anchors of 4 images, 2 per device


def _stream() -> BatchStream:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), generator=gen, dtype=torch.uint8)
    feats = torch.nn.functional.normalize(images.flatten(1).float(), dim=1)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    return BatchStream(images, None, mean, std, AUGMENT_PRESETS["crop_flip"], seed=3,
                       batch_size=BATCH,
                       neighbour_batches=NeighbourBatches(NEIGHBOURS, POOL),
                       graph=neighbour_graph(feats, POOL))


def _models() -> tuple[TinyNet, CoSS, FrozenTeacher]:
    torch.manual_seed(0)
    student = TinyNet(6, bn=True)
    teacher = FrozenTeacher(TinyNet(5, bn=True))
    objective = CoSS(CoSSParams(hidden_dim=8, neighbours=NEIGHBOURS, neighbour_pool=POOL),
                     make_context(student, teacher))
    return student, objective, teacher


def _optimizer(*modules: nn.Module) -> torch.optim.Optimizer:
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=1e-4)


def _inputs(view: Tensor, student: nn.Module, teacher: FrozenTeacher) -> StepInputs:
    return StepInputs(views=[view], indices=torch.arange(view.shape[0]), labels=None,
                      student=student, teacher=teacher)  # type: ignore[arg-type]


def test_chunks_hold_whole_anchor_groups() -> None:
    stream = _stream()
    batch = next(iter(stream.epoch(0)))
    chunks = batch.per_device(DEVICES)
    assert batch.per_device(DEVICES) is chunks  # made once a step: fused members share them
    assert [c.indices.numel() for c in chunks] == [8, 8]
    assert torch.equal(torch.cat([c.indices for c in chunks]), batch.indices)
    assert stream.graph is not None
    for chunk in chunks:
        groups = chunk.indices.view(-1, NEIGHBOURS + 1)
        for anchor, *drawn in groups.tolist():
            assert set(drawn) <= set(stream.graph[anchor, :POOL].tolist())
        assert torch.equal(chunk.view(0), batch.view(0)[chunk.rows])
    assert device_rows(12, 4, 4) == [slice(0, 4), slice(4, 8), slice(8, 12)]  # no empty chunk
    with pytest.raises(ValueError, match="whole groups"):
        device_rows(10, 2, 4)


class _Pair(nn.Module):
    """A student and its objective as one module whose forward is the loss (for DDP)."""

    def __init__(self, student: TinyNet, objective: CoSS, teacher: FrozenTeacher) -> None:
        super().__init__()
        self.student, self.objective = student, objective
        self.teacher = [teacher]  # not a submodule: frozen, outside DDP

    def forward(self, view: Tensor) -> Tensor:
        return self.objective.compute(_inputs(view, self.student, self.teacher[0])).total


def _ddp_rank(rank: int, directory: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank,
                            world_size=DEVICES)
    state = torch.load(f"{directory}/start.pt", weights_only=True)
    student, objective, teacher = _models()
    student.load_state_dict(state["student"])
    objective.load_state_dict(state["objective"])
    teacher.load_state_dict(state["teacher"])
    pair = _Pair(student, objective, teacher)
    model = DistributedDataParallel(pair)  # broadcast_buffers=True, DDP's default
    optimizer = _optimizer(pair)
    loss = model(state["views"][rank])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # all-reduce: the mean of the two ranks' gradients
    optimizer.step()
    if rank == 0:
        torch.save({"student": student.state_dict(), "objective": objective.state_dict()},
                   f"{directory}/rank0.pt")
    dist.barrier()
    dist.destroy_process_group()


def _close(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6) for k in a)


def test_devices_step_equals_a_two_process_ddp_step(tmp_path: Path) -> None:
    """One CoSS step with ``devices = 2`` (per-chunk space term and BatchNorm statistics,
    averaged gradients) leaves the parameters and BatchNorm buffers that rank 0 of a real
    two-process DDP step leaves; one full-batch step does not."""
    stream = _stream()
    batch = next(iter(stream.epoch(0)))
    chunks = batch.per_device(DEVICES)
    student, objective, teacher = _models()
    torch.save({"student": student.state_dict(), "objective": objective.state_dict(),
                "teacher": teacher.state_dict(),
                "views": [c.view(0).clone() for c in chunks]}, tmp_path / "start.pt")

    optimizer = _optimizer(student, objective)
    values, names = per_device_step(student, objective, optimizer,
                                    [_inputs(c.view(0), student, teacher) for c in chunks],
                                    torch.device("cpu"), "fp32")
    assert names == ["loss/total", "loss/co", "loss/ss"] and torch.isfinite(values).all()

    # fork: the ranks start with this process's imports (a spawned rank re-imports torch and
    # ukd, tens of seconds on a loaded 2-core runner); they share no state with it.
    mp.start_processes(_ddp_rank, args=(str(tmp_path),), nprocs=DEVICES, join=True,
                       start_method="fork")
    ddp = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert _close(student.state_dict(), ddp["student"])
    assert _close(objective.state_dict(), ddp["objective"])

    # The same step over the whole batch at once (one device) is a different step.
    whole_student, whole_objective, _ = _models()
    per_device_step(whole_student, whole_objective, _optimizer(whole_student, whole_objective),
                    [_inputs(batch.view(0), whole_student, teacher)], torch.device("cpu"),
                    "fp32")
    assert not _close(whole_student.state_dict(), ddp["student"])


def test_queue_receives_every_devices_keys_in_order() -> None:
    """SEED with two devices: both chunks read the queue as it was before the step, and the
    step enqueues chunk 0's teacher embeddings, then chunk 1's (DDP's concat_all_gather)."""
    torch.manual_seed(0)
    student = TinyNet(6, bn=True)
    teacher = FrozenTeacher(TinyNet(5, bn=True))
    ctx = make_context(student, teacher)
    objective = SEED(SEEDParams(queue_size=32, queue_init="empty"), ctx)
    views = torch.randn(2, 8, 3, 8, 8, generator=generator(0, "view", 0))
    inputs = [_inputs(v, student, teacher) for v in views]
    per_device_step(student, objective, _optimizer(student, objective), inputs,
                    torch.device("cpu"), "fp32")
    objective.after_step(inputs[-1])
    with torch.no_grad():
        expected = torch.cat([torch.nn.functional.normalize(
            teacher.embedding(teacher.features(v)), dim=1) for v in views])
    assert len(objective.queue) == 16
    assert torch.allclose(objective.queue.valid(), expected, atol=1e-6)




def _spec_error(write_spec: Any, data: Any) -> str:
    path = write_spec(data)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_devices_is_checked_before_anything_runs(write_spec: Any) -> None:
    # minimal_spec: CoSS / CoS with 15 neighbours at batch 32, i.e. 2 anchors of 16 a step
    spec = load_spec(write_spec(minimal_spec(train={"epochs": 1, "batch_size": 32,
                                                    "devices": 2})))
    assert spec.train.devices == 2
    message = _spec_error(write_spec, minimal_spec(train={"epochs": 1, "batch_size": 32,
                                                          "devices": 4}))
    assert "train.devices" in message and "2 anchors of 16 images" in message
    message = _spec_error(write_spec, minimal_spec(train={"batch_size": 32, "devices": 2},
                                                   resources={"fuse": "stack"}))
    assert "resources.fuse" in message and "allowed with devices > 1" in message
    assert "train.devices" in _spec_error(write_spec, minimal_spec(train={"devices": 0}))


def test_devices_enters_the_trial_id_only_when_set(write_spec: Any) -> None:
    plain = expand(load_spec(write_spec(minimal_spec(), "a.yaml")))
    one = expand(load_spec(write_spec(minimal_spec(train={"epochs": 1, "batch_size": 32,
                                                          "devices": 1}), "b.yaml")))
    two = expand(load_spec(write_spec(minimal_spec(train={"epochs": 1, "batch_size": 32,
                                                          "devices": 2}), "c.yaml")))
    assert [t.trial_id for t in plain] == [t.trial_id for t in one]
    assert not {t.trial_id for t in plain} & {t.trial_id for t in two}
    assert "devices" not in flat_params(plain[0]) and flat_params(two[0])["devices"] == "2"


def _trial(tmp_path: Path, devices: int, name: str) -> TrialConfig:
    return TrialConfig(
        trial_id=name, index=0, sweep="devices", dataset=DatasetConfig("digits", labels=False),
        teacher=TeacherConfig("t", PretrainSource("resnet8x4", PretrainConfig(arch="resnet8x4")),
                              "digits"),
        student=StudentConfig("resnet8x4"),
        loss=LossConfig.of("coss", {"neighbours": NEIGHBOURS, "neighbour_pool": POOL,
                                    "hidden_dim": 8}),
        train=TrainConfig(epochs=1, batch_size=BATCH, lr=0.5, devices=devices),
        eval=EvalConfig(),
        runtime=RuntimeConfig("cpu", 1, str(tmp_path / name), str(tmp_path)))


def test_member_step_is_the_per_device_step(tmp_path: Path) -> None:
    """A trial's own step (Member.step) with ``train.devices = 2`` runs the per-device step on
    the batch's chunks: the same weights as :func:`per_device_step` on those chunks, not
    those of the one-device step."""
    stream = _stream()
    teacher = SharedTeacher(_models()[2])
    mean, std = stream.mean, stream.std

    def member(devices: int, name: str) -> Member:
        return build_member(_trial(tmp_path, devices, name), teacher=teacher,
                            images=stream.images, labels=None, num_classes=10, mean=mean,
                            std=std, device=torch.device("cpu"),
                            graphs=lambda size: torch.empty(0))

    two, one, reference = member(2, "two"), member(1, "one"), member(1, "reference")
    batch = next(iter(stream.epoch(0)))
    for m in (two, one):
        m.begin_epoch(0)
        teacher.new_step()
        m.step(batch, teacher)
    reference.begin_epoch(0)
    inputs = [StepInputs(views=[c.view(0)], indices=c.indices, labels=None,
                         student=reference.student, teacher=teacher, epoch=0, step=0,
                         rng=reference.rng) for c in batch.per_device(2)]
    per_device_step(reference.student, reference.objective, reference.optimizer, inputs,
                    torch.device("cpu"), "fp32")
    assert _close(two.student.state_dict(), reference.student.state_dict())
    assert not _close(one.student.state_dict(), reference.student.state_dict())
