"""Run a group of trials that see the same batch stream: one data pipeline, one teacher pass,
every member its own step.

:func:`run_group` is a plain function (no Ray): it takes trial configs and a ``report``
callback and a ``teacher`` loader (the engine is handed its teacher, it does not run the
teacher stage: :mod:`orchestrator.stages.trials` wires the two) and returns each member's
outcome. Every member checkpoints atomically after every
epoch in its trial directory and resumes from there, so a killed group continues each member
where it stopped; a member that fails stops alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from common import faults
from models.augment import AUGMENT_PRESETS
from models.teacher import FrozenTeacher
from orchestrator.data.batches import BatchStream
from orchestrator.data.datasets import DatasetBundle, load_dataset, uses_labels
from orchestrator.engine.device import cap_memory, resolve_device
from orchestrator.engine.evaluators.base import evaluate, periodic_evaluators
from orchestrator.engine.knn import load_neighbour_graph
from orchestrator.engine.member import Member, build_member, failing_as
from orchestrator.engine.precision import memory_format
from orchestrator.engine.stacked import Stack, plan_stacks
from orchestrator.engine.teacher_pass import SharedTeacher, TeacherNeeds
from orchestrator.errors import TrialFailure
from orchestrator.spec.config import CheckpointSource, TeacherReport, TrialConfig

# (trial id, metrics): metrics["kind"] is "resumed", "epoch", "eval", "final" or "failed".
GroupReporter = Callable[[str, dict[str, Any]], None]
Reporter = Callable[[dict[str, Any]], None]
# The group's teacher (its stage's report and the loaded frozen teacher), given the group's
# trials and data: the caller knows how teachers are made (orchestrator.stages.trials).
TeacherLoader = Callable[[Sequence[TrialConfig], DatasetBundle],
                         tuple[TeacherReport, FrozenTeacher]]
CHECK_EVERY_CUDA = 25  # steps between non-finite checks on CUDA (each is a host sync)


@dataclass
class MemberOutcome:
    trial_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    failure: TrialFailure | None = None


def group_key(trial: TrialConfig) -> tuple[Any, ...]:
    """Trials with equal keys see the same batches: same data, teacher, seed, batch size,
    epochs, augmentation, batch builder (and what they need of a checkpoint teacher)."""
    req = trial.requirements
    needs = teacher_needs([trial]) if isinstance(trial.teacher.source, CheckpointSource) \
        else None
    return (trial.dataset, trial.teacher.key, trial.train.seed, trial.train.batch_size,
            trial.train.epochs, trial.train.augment, req.neighbour_batches, needs,
            trial.runtime.device, trial.train.precision)


def make_groups(trials: Sequence[TrialConfig], fuse: str, max_group: int
                ) -> list[list[TrialConfig]]:
    """Trials that share a batch stream (:func:`group_key`), in grid order, in groups of at
    most ``max_group``; every trial alone with ``fuse: off``."""
    if fuse == "off" or max_group <= 1:
        return [[t] for t in trials]
    by_key: dict[tuple[Any, ...], list[TrialConfig]] = {}
    for t in trials:
        by_key.setdefault(group_key(t), []).append(t)
    groups: list[list[TrialConfig]] = []
    for members in by_key.values():
        groups.extend(list(members[i:i + max_group]) for i in range(0, len(members), max_group))
    return sorted(groups, key=lambda g: g[0].index)


def teacher_needs(trials: Sequence[TrialConfig]) -> TeacherNeeds:
    return TeacherNeeds(classifier=any(t.requirements.teacher_classifier for t in trials),
                        ssl_head=any(t.requirements.teacher_embedding for t in trials))


def fuse_level(fuse: str, device: torch.device) -> str:
    """``resources.fuse`` on a device: ``auto`` stacks on CUDA (launch-bound small students)
    and groups on CPU (compute-bound: stacking saves no arithmetic there)."""
    if fuse == "auto":
        return "stack" if device.type == "cuda" else "group"
    return fuse


def run_group(trials: Sequence[TrialConfig], report: GroupReporter, teacher: TeacherLoader,
              check_every: int | None = None, level: str | None = None
              ) -> dict[str, MemberOutcome]:
    """Train and evaluate the trials of one group with the teacher ``teacher`` loads;
    ``level`` overrides the trials' ``runtime.fuse`` (``stack`` or anything else: members
    step one after the other)."""
    if not trials:
        return {}
    keys = {group_key(t) for t in trials}
    if len(keys) != 1:
        raise ValueError("a group's trials must share one batch stream (see group_key)")
    group = _set_up(trials, teacher, level)
    members, outcomes = _build_members(trials, group, report)
    check = check_every or (CHECK_EVERY_CUDA if group.device.type == "cuda" else 1)
    epochs = trials[0].train.epochs
    start = min((m.start_epoch for m in members), default=epochs)
    for epoch in range(start, epochs):
        if _run_epoch(members, group, epoch, check, report):
            _report_failures(members, outcomes, report)
    _finish(members, outcomes, group, report)
    _report_failures(members, outcomes, report)
    return outcomes


@dataclass
class _Group:
    """What a group's members share: the device, the data on it, the teacher, the stream."""

    first: TrialConfig
    device: torch.device
    bundle: DatasetBundle
    images: Tensor  # the training split under the evaluation transform
    training: Tensor  # what augmentation starts from (a streamed folder: FolderImages)
    labels: Tensor | None
    mean: Tensor
    std: Tensor
    layout: torch.memory_format
    stacking: bool
    teacher_report: TeacherReport
    shared: SharedTeacher
    graphs: _GraphCache
    stream: BatchStream


def _set_up(trials: Sequence[TrialConfig], teacher: TeacherLoader, level: str | None
            ) -> _Group:
    first = trials[0]
    torch.set_num_threads(first.runtime.threads)
    device = resolve_device(first.runtime.device)
    cap_memory(device, first.runtime.gpu_fraction)  # a shared GPU: this group's share only
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = first.dataset
    bundle = load_dataset(data)
    use_labels = uses_labels(data)

    stacking = fuse_level(level or first.runtime.fuse, device) == "stack"
    layout = memory_format(device, stacked=stacking)
    teacher_report, frozen = teacher(trials, bundle)
    frozen = frozen.to(device).to(memory_format=layout)
    if first.train.compile:  # CUDA graphs where shapes allow (mode reduce-overhead)
        frozen.backbone.compile(mode="reduce-overhead" if device.type == "cuda" else None)
    shared = SharedTeacher(frozen)
    graphs = _GraphCache(teacher_report, device)
    images = bundle.train.images.to(device)  # under the evaluation transform
    training = images if bundle.train_source is None else bundle.train_source.to(device)
    labels = bundle.train.labels.to(device) if use_labels else None
    mean, std = bundle.mean.to(device), bundle.std.to(device)
    batches = first.requirements.neighbour_batches
    stream = BatchStream(
        training, labels, mean, std, AUGMENT_PRESETS[first.train.augment], first.train.seed,
        first.train.batch_size, batches, graphs.cpu(batches.pool) if batches else None,
        layout, max(t.requirements.num_views for t in trials))
    return _Group(first, device, bundle, images, training, labels, mean, std, layout,
                  stacking, teacher_report, shared, graphs, stream)


def _build_members(trials: Sequence[TrialConfig], group: _Group, report: GroupReporter
                   ) -> tuple[list[Member], dict[str, MemberOutcome]]:
    members: list[Member] = []
    outcomes: dict[str, MemberOutcome] = {}
    for trial in trials:
        outcomes[trial.trial_id] = MemberOutcome(trial.trial_id)
        try:
            members.append(build_member(
                trial, teacher=group.shared, images=group.training, labels=group.labels,
                num_classes=group.bundle.num_classes, mean=group.mean, std=group.std,
                device=group.device, graphs=group.graphs.device, layout=group.layout))
        except Exception as exc:  # e.g. an unreadable checkpoint: this member only
            failure = exc if isinstance(exc, TrialFailure) else TrialFailure(
                f"{type(exc).__name__}: {exc}", 1)
            outcomes[trial.trial_id].failure = failure
            report(trial.trial_id, {"kind": "failed", "reason": failure.reason,
                                    "epoch": failure.epoch})
    for m in members:
        resumed = m.resumed()  # before any step: what MLflow may lack of the earlier run
        if resumed is not None:
            report(m.trial_id, resumed)
    return members, outcomes


def _run_epoch(members: list[Member], group: _Group, epoch: int, check: int,
               report: GroupReporter) -> bool:
    """One epoch of the members that run in it: the shared batches, then each member's
    end of epoch (schedule, periodic evaluation, checkpoint, report). False when no member
    runs in it."""
    running = [m for m in members if m.runs_in(epoch)]
    if not running:
        return False
    shared = group.shared
    stacks, alone = plan_stacks(running) if group.stacking else ([], running)
    lrs = {m.trial_id: m.begin_epoch(epoch) for m in alone}
    for stack in stacks:
        stack.begin_epoch(epoch)
    train_epoch(group.stream, shared, stacks, alone, epoch, check)
    for stack in stacks:
        stack.unstack()
        lrs.update({m.trial_id: m.optimizer.param_groups[0]["lr"] for m in stack.members})
    evaluate_every, epochs = group.first.eval.every, group.first.train.epochs
    for m in running:
        if not m.active:
            continue
        with failing_as(m, epoch):
            rows = [m.record({"kind": "epoch", **m.end_epoch(epoch, lrs[m.trial_id])})]
            if evaluate_every and (epoch + 1) % evaluate_every == 0 and epoch + 1 < epochs:
                periodic = evaluate(m.trial, m.student, group.bundle, group.images,
                                    group.device, periodic_evaluators(m.trial))
                m.best.update(periodic, epoch + 1)
                rows.append(m.record({"kind": "eval", "epoch": epoch + 1, **periodic}))
            m.save_checkpoint(epoch)
            faults.reach(faults.EPOCH_SAVED, epoch + 1)
            for row in rows:
                report(m.trial_id, row)
            faults.reach(faults.EPOCH_REPORTED, epoch + 1)
    return True


def _finish(members: list[Member], outcomes: dict[str, MemberOutcome], group: _Group,
            report: GroupReporter) -> None:
    """The final evaluation, weights and report of every member still active."""
    evaluate_every, epochs = group.first.eval.every, group.first.train.epochs
    for m in members:
        if not m.active:
            continue
        with failing_as(m, epochs - 1):
            final = evaluate(m.trial, m.student, group.bundle, group.images, group.device)
            if evaluate_every:
                m.best.update(final, epochs)
                final.update(m.best.metrics())
            final.update({f"teacher_knn/{k}": v for k, v in group.teacher_report.knn.items()})
            m.save_weights()
            faults.reach(faults.WEIGHTS_SAVED, epochs)
            m.finished = True
            final["train_time_s"] = m.train_time_s
            report(m.trial_id, {"kind": "final", "epoch": epochs, **final})
            outcomes[m.trial_id].metrics = final


def train_epoch(stream: BatchStream, shared: SharedTeacher, stacks: Sequence[Stack],
                alone: Sequence[Member], epoch: int, check: int) -> None:
    """The steps of one epoch: every stack and every member alone on each batch, the
    non-finite check every ``check`` steps (a host sync each; the epoch's end checks too). A
    member that fails stops alone; the epoch ends early when none is left."""
    members = [m for stack in stacks for m in stack.members] + list(alone)
    for batch in stream.epoch(epoch):
        shared.new_step()
        for stack in stacks:
            if any(m.active for m in stack.members):
                _step_stack(stack, batch, shared, epoch, check)
        for m in alone:
            if m.active:
                with failing_as(m, epoch):
                    m.step(batch, shared)
                    if (batch.step + 1) % check == 0:
                        m.check_finite(epoch)
        if not any(m.active for m in members):
            break
    shared.new_step()


def _step_stack(stack: Stack, batch: Any, teacher: SharedTeacher, epoch: int,
                check: int) -> None:
    """One stacked step; an exception fails every member of the stack (it is the same code
    for all), a non-finite loss only the member it belongs to."""
    try:
        stack.step(batch, teacher)
    except Exception as exc:
        for m in stack.members:
            if m.active:
                m.fail(exc, epoch)
        return
    if (batch.step + 1) % check == 0:
        for m in stack.members:
            if m.active:
                with failing_as(m, epoch):
                    m.check_finite(epoch)


def _report_failures(members: list[Member], outcomes: dict[str, MemberOutcome],
                     report: GroupReporter) -> None:
    for m in members:
        out = outcomes[m.trial_id]
        if m.failure is not None and out.failure is None:
            out.failure = m.failure
            report(m.trial_id, {"kind": "failed", "reason": m.failure.reason,
                                "epoch": m.failure.epoch})


class _GraphCache:
    """Teacher neighbour graphs by size, memory-mapped from the stage's files once per group
    (every process shares the page cache's copy; on CPU the device graph is that mapping)."""

    def __init__(self, report: TeacherReport, device: torch.device) -> None:
        self.report = report
        self.device_ = device
        self._cpu: dict[int, Tensor] = {}
        self._dev: dict[int, Tensor] = {}

    def cpu(self, size: int) -> Tensor:
        if size not in self._cpu:
            self._cpu[size] = load_neighbour_graph(self.report.graphs[size])  # memory-mapped
        return self._cpu[size]

    def device(self, size: int) -> Tensor:
        if size not in self._dev:
            self._dev[size] = self.cpu(size).to(self.device_)
        return self._dev[size]
