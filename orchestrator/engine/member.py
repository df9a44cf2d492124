"""A member of a group: one trial's student, objective, optimiser, schedule and checkpoint.

Its loss terms are summed on the device over an epoch (no host read-back inside the steps);
the non-finite check reads the sums back every ``check_every`` steps and at the epoch's end,
and a member whose loss goes non-finite or whose step raises fails alone, with its reason and
epoch, while the other members of its group go on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common import names
from common.atomic import torch_save, write_yaml
from common.schedules import cosine_factor, step_factor
from losses import Objective, ObjectiveContext, StepInputs, build_objective
from models.augment import AUGMENT_PRESETS, augment, normalise
from models.base import Backbone, build_model
from models.teacher import TeacherOutputs
from orchestrator.data.batches import Batch, DeviceChunk, rotated_copies
from orchestrator.data.streams import generator, seeded_init
from orchestrator.engine.devices import per_device_step
from orchestrator.engine.evaluators.base import BestTracker
from orchestrator.engine.precision import memory_format
from orchestrator.errors import TrialFailure
from orchestrator.spec.config import TrainConfig, TrialConfig

CHECKPOINT = "checkpoint.pt"
STUDENT_WEIGHTS = "student.pt"
CONFIG_FILE = "config.yaml"
RESUMED = "resumed"  # the report kind of a member that continues from its checkpoint


# torch.optim.SGD's implementation per device: one fused kernel on CUDA, foreach (a few
# multi-tensor ops) elsewhere; CPU runs foreach so that its fp32 results stay what they were
# (the fused CPU kernel works too, tests/orchestrator/test_cpu_gpu_paths.py).
SGD_KERNELS = {"cuda": "fused"}


def sgd(params: Sequence[Tensor], train: TrainConfig, kernel: str) -> torch.optim.SGD:
    """The trial's SGD (lr, momentum, weight decay of ``train``) with ``kernel`` ``fused`` or
    ``foreach``."""
    if kernel not in ("fused", "foreach"):
        raise ValueError(f"SGD kernel {kernel!r}: fused or foreach")
    return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                           weight_decay=train.weight_decay, foreach=kernel == "foreach",
                           fused=kernel == "fused")


def lr_factor(train: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier for a 0-based epoch."""
    if train.schedule == "cosine":
        return cosine_factor(epoch, train.epochs)
    if train.schedule == "step":
        return step_factor(epoch, [round(m * train.epochs) for m in train.milestones],
                           train.gamma)
    return 1.0


@dataclass
class Member:
    trial: TrialConfig
    student: Backbone
    objective: Objective[Any]
    optimizer: torch.optim.Optimizer
    rng: torch.Generator  # the model stream, on the device
    device: torch.device
    graph: Tensor | None = None  # the teacher graph an objective reads in its step (BINGO)
    start_epoch: int = 0
    # Every epoch's and periodic evaluation's metrics so far, as reported (kept in the
    # checkpoint: a resumed trial hands them on again, since a killed driver may have
    # dropped some before they reached MLflow).
    history: list[dict[str, Any]] = field(default_factory=list)
    best: BestTracker = field(default_factory=lambda: BestTracker({}))
    failure: TrialFailure | None = None
    finished: bool = False
    last_terms: Tensor | None = None  # the last step's [total, terms...] (on the device)
    _sums: Tensor | None = None
    _names: list[str] = field(default_factory=list)
    _steps: int = 0
    _epoch_started: float = 0.0
    _started: float = field(default_factory=time.perf_counter)

    @property
    def trial_id(self) -> str:
        return self.trial.trial_id

    @property
    def directory(self) -> Path:
        return Path(self.trial.runtime.trial_dir)

    @property
    def active(self) -> bool:
        return self.failure is None and not self.finished

    def runs_in(self, epoch: int) -> bool:
        return self.active and epoch >= self.start_epoch

    # ------------------------------------------------------------------ an epoch

    def begin_epoch(self, epoch: int) -> float:
        lr = self.trial.train.lr * lr_factor(self.trial.train, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.student.train()
        self.objective.train()
        self._sums, self._steps = None, 0
        self._epoch_started = time.perf_counter()
        return lr

    def step(self, batch: Batch, teacher: TeacherOutputs) -> None:
        """One optimiser step; with ``train.devices > 1`` over the batch's per-device chunks
        (orchestrator/engine/devices.py: DDP's semantics on one device)."""
        devices = self.trial.train.devices
        parts: Sequence[Batch | DeviceChunk] = (batch.per_device(devices) if devices > 1
                                                else [batch])
        inputs = [self._inputs(part, teacher) for part in parts]
        values, names = per_device_step(self.student, self.objective, self.optimizer, inputs,
                                        self.device, self.trial.train.precision)
        self.objective.after_step(inputs[-1])
        self.add_terms(values, names)

    def _inputs(self, part: Batch | DeviceChunk, teacher: TeacherOutputs) -> StepInputs:
        req = self.trial.requirements
        return StepInputs(
            views=part.views(req.num_views),
            indices=part.indices,
            labels=part.labels,
            student=self.student,
            teacher=teacher,
            fetch=part.fetcher(),
            neighbours=self.graph,
            epoch=part.epoch,
            step=part.step,
            rng=self.rng,
            rotated=part.rotated() if req.rotated_views else None,
        )

    def check_finite(self, epoch: int) -> None:
        """Raise TrialFailure naming the non-finite terms (one host read-back)."""
        if self._sums is None:
            return
        finite = torch.isfinite(self._sums).tolist()
        if not all(finite):
            bad = [n.removeprefix("loss/") for n, ok in zip(self._names, finite, strict=True)
                   if not ok and n != "loss/total"]
            raise TrialFailure(f"non-finite loss (terms: {', '.join(bad) or 'total'})",
                               epoch + 1)

    def add_terms(self, values: Tensor, names: list[str]) -> None:
        """Sum one step's ``[total, terms...]`` on the device."""
        self.last_terms = values
        if self._sums is None:
            self._sums, self._names = values, names
        else:
            self._sums += values
        self._steps += 1

    def end_epoch(self, epoch: int, lr: float) -> dict[str, float]:
        """The epoch's mean loss terms (one host read-back), after the non-finite check."""
        self.check_finite(epoch)
        metrics: dict[str, float] = {}
        if self._sums is not None:
            means = (self._sums / max(1, self._steps)).tolist()
            metrics = dict(zip(self._names, means, strict=True))
        metrics.update({"epoch": float(epoch + 1), "lr": lr,
                        "epoch_time_s": time.perf_counter() - self._epoch_started})
        return metrics

    def record(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Add a report (``kind`` epoch or eval) to the history, stamped with its wall time
        in ms (a replay logs it to MLflow with that time); returns the report."""
        row = {**metrics, names.REPORT_TIME: int(time.time() * 1000)}
        self.history.append(row)
        return row

    def save_checkpoint(self, epoch: int) -> None:
        torch_save(self.directory / CHECKPOINT, {
            "epoch": epoch + 1,
            "student": self.student.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "history": self.history,
            "best": {k: list(v) for k, v in self.best.best.items()},
        })

    def resumed(self) -> dict[str, Any] | None:
        """The report that says this member continues from its checkpoint, if it does."""
        if not self.start_epoch:
            return None
        return resumed_report(self.start_epoch, list(self.history))  # a snapshot

    def fail(self, exc: BaseException, epoch: int) -> TrialFailure:
        if isinstance(exc, TrialFailure):
            self.failure = exc
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            self.failure = TrialFailure(f"{type(exc).__name__}: {first}", epoch + 1)
        self.student.zero_grad(set_to_none=True)
        return self.failure

    def save_weights(self) -> None:
        torch_save(self.directory / STUDENT_WEIGHTS, self.student.state_dict())

    @property
    def train_time_s(self) -> float:
        return time.perf_counter() - self._started


@contextlib.contextmanager
def failing_as(member: Member, epoch: int) -> Iterator[None]:
    """Exceptions inside become the member's failure (the group goes on)."""
    try:
        yield
    except Exception as exc:
        member.fail(exc, epoch)


# Over 60 lines: one order to keep (seeded init, checkpoint restore, then the objective's
# one-off prepare, which reads what the restore put back), so it is kept in one place.
def build_member(trial: TrialConfig, *, teacher: TeacherOutputs, images: Tensor,
                 labels: Tensor | None, num_classes: int, mean: Tensor, std: Tensor,
                 device: torch.device, graphs: Callable[[int], Tensor],
                 layout: torch.memory_format | None = None) -> Member:
    """Student, objective and optimiser of a trial, restored from its checkpoint if any
    (``layout``: the student's memory format, by default :func:`memory_format` of the
    device)."""
    directory = Path(trial.runtime.trial_dir)
    directory.mkdir(parents=True, exist_ok=True)
    write_yaml(directory / CONFIG_FILE, trial.to_dict())
    req = trial.requirements
    seed = trial.train.seed
    rng = generator(seed, "model", device=device)
    with seeded_init(seed):
        student = build_model(trial.student.arch, num_classes if req.student_classifier
                              else None, int(images.shape[1]))
        ctx = ObjectiveContext(
            student_dim=student.feature_dim,
            teacher_dim=teacher.feature_dim,
            teacher_embedding_dim=teacher.embedding_dim,
            num_classes=num_classes if labels is not None else None,
            teacher_has_classifier=teacher.has_classifier,
            student_has_classifier=student.has_classifier,
            dataset_size=int(images.shape[0]),
            generator=generator(seed, "model", 1),
        )
        objective = build_objective(trial.loss.name, trial.loss.params, ctx)
    student = student.to(device).to(memory_format=layout or memory_format(device))
    if trial.train.compile:  # in place: state_dict keys (checkpoints) stay the same
        student.compile(mode="reduce-overhead" if device.type == "cuda" else None)
    objective = objective.to(device)
    params = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer = sgd(params, trial.train, SGD_KERNELS.get(device.type, "foreach"))
    member = Member(trial, student, objective, optimizer, rng, device,
                    graph=graphs(req.neighbour_graph) if req.neighbour_graph else None)
    state = _read_checkpoint(directory / CHECKPOINT, device)
    if state is not None:
        student.load_state_dict(state["student"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
    # One-off stages run after the restore, so that a resumed objective can skip what its
    # checkpoint already holds (SSKD's trained teacher SS head).
    aug = AUGMENT_PRESETS[trial.train.augment]
    prepare_calls = iter(range(1 << 30))

    def prepare_view(x: Tensor) -> Tensor:
        gen = generator(seed, "prepare", next(prepare_calls), device=device)
        return normalise(augment(x, aug, gen), mean, std)

    def prepare_rotated(x: Tensor) -> Tensor:
        gen = generator(seed, "prepare", next(prepare_calls), device=device)
        return rotated_copies(x, aug, mean, std, gen)

    objective.prepare(teacher, images, labels, prepare_view, device,
                      generator(seed, "prepare", -1),
                      rotate=prepare_rotated if req.rotated_views else None)
    if state is not None:
        rng.set_state(state["rng"].cpu())
        member.start_epoch = int(state["epoch"])
        member.history = list(state.get("history", []))
        member.best = BestTracker.restored(state.get("best"))
        if member.start_epoch >= trial.train.epochs:
            member.start_epoch = trial.train.epochs  # trained, only the evaluation is left
    return member


def resumed_report(epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    """``kind: resumed``: the checkpoint's epoch and every report before it."""
    return {"kind": RESUMED, "resumed_from_epoch": epoch, "history": history}


def checkpoint_resume(trial_dir: Path) -> dict[str, Any] | None:
    """The resumed report of a trial whose checkpoint is on disk (None without one)."""
    state = _read_checkpoint(trial_dir / CHECKPOINT, torch.device("cpu"))
    if state is None:
        return None
    return resumed_report(int(state["epoch"]), list(state.get("history", [])))


def _read_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(path, weights_only=True, map_location=device)
        return state
    except Exception as exc:  # written atomically, so damaged by something else
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TrialFailure(f"unreadable checkpoint {path} ({type(exc).__name__}: {first}); "
                           "delete it to restart the trial from scratch", 1) from None
