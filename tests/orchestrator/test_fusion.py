"""Fused groups: trials that share a batch stream train together -- the same results as alone
(CPU: bit for bit; stacked: within float tolerance), failures and resume per member."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from common import faults
from models.augment import AUGMENT_PRESETS
from orchestrator.data.batches import BatchStream
from orchestrator.data.datasets import DatasetBundle, Split
from orchestrator.data.datasets import load_dataset as real_load_dataset
from orchestrator.engine import group as group_module
from orchestrator.engine import member as member_module
from orchestrator.engine.group import MemberOutcome, group_key, make_groups
from orchestrator.engine.knn import load_neighbour_graph
from orchestrator.engine.member import build_member
from orchestrator.engine.precision import memory_format
from orchestrator.engine.stacked import Stack, plan_stacks
from orchestrator.engine.teacher_pass import SharedTeacher
from orchestrator.runtime import trainable as trainable_module
from orchestrator.spec.config import TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages import teachers as teachers_module
from orchestrator.stages.teachers import ensure_teacher, load_frozen_teacher
from orchestrator.stages.trials import run_group, run_trial
from tests.orchestrator.specs import minimal_spec

TRAIN_IMAGES = 256


def _small(bundle: DatasetBundle) -> DatasetBundle:
    train = Split(bundle.train.images[:TRAIN_IMAGES].clone(),
                  bundle.train.labels[:TRAIN_IMAGES].clone())
    return dataclasses.replace(bundle, train=train)


@pytest.fixture(scope="module")
def small_data() -> Iterator[DatasetBundle]:
    small = _small(real_load_dataset("digits"))

    def load(name: str, root: str | None = None, download: bool = False) -> DatasetBundle:
        return small

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(group_module, "load_dataset", load)
        mp.setattr(teachers_module, "load_dataset", load)
        yield small


def _trials(tmp: Path, epochs: int = 2, students: tuple[str, ...] = ("wrn_16_2", "resnet20"),
            **grid: Any) -> list[TrialConfig]:
    data = minimal_spec(output_dir=str(tmp / "out"), cache_dir=str(tmp.parent / "cache"),
                        train={"epochs": epochs, "batch_size": 64, "augment": "ssl_light"},
                        knn={"k": [10]})
    data["grid"] = {"teacher": "t", "student": list(students),
                    "loss": [{"name": "coss", "lambda": [0.5, 1.0], "neighbours": 3,
                              "epoch_anchors": 0.25},
                             {"name": "cos", "neighbours": 3, "epoch_anchors": 0.25}],
                    "lr": [0.05, 0.1], **grid}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    trials = expand(load_spec(path))
    first = trials[0]
    report = ensure_teacher(first.teacher, first.dataset, first.eval.knn,
                            first.runtime.cache_dir, graph_sizes=(31,))
    return [t.with_report(report) for t in trials]


def _moved(trials: list[TrialConfig], directory: Path) -> list[TrialConfig]:
    """The same trials with their files elsewhere (a fresh start)."""
    return [dataclasses.replace(t, runtime=dataclasses.replace(
        t.runtime, trial_dir=str(directory / t.trial_id))) for t in trials]


def _run(trials: list[TrialConfig], level: str = "group"
         ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    reports: dict[str, list[dict[str, Any]]] = {}
    outcomes = run_group(trials, lambda tid, m: reports.setdefault(tid, []).append(m),
                         level=level)
    return outcomes, reports


def _scores(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_time_s")}


def _epochs(reports: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k.startswith("loss/")} for r in reports
            if r["kind"] == "epoch"]


def test_a_trial_gives_the_same_metrics_fused_as_alone(small_data: DatasetBundle,
                                                        tmp_path: Path) -> None:
    trials = _trials(tmp_path)
    assert len({group_key(t) for t in trials}) == 1 and len(trials) == 12
    fused = trials[:6]  # two architectures, coss / cos, two lrs
    outcomes, reports = _run(_moved(fused, tmp_path / "fused"))
    for trial in fused:
        alone: list[dict[str, Any]] = []
        final = run_trial(_moved([trial], tmp_path / "alone")[0], alone.append)
        assert _epochs(reports[trial.trial_id]) == _epochs(alone)  # bit for bit on CPU
        assert _scores(outcomes[trial.trial_id].metrics) == _scores(final)


def test_stacked_members_match_the_member_path(small_data: DatasetBundle,
                                               tmp_path: Path) -> None:
    """20 steps of three stacked CoSS / CoS members (different lambda and lr) against the
    same members stepping one by one: loss terms within 1e-4 relative."""
    # resnet8x4: a step of wrn_16_2 at lr 0.1 amplifies float rounding about 5x per step
    # (1e-6 at the first step, 1.5e-4 at the fifth), resnet8x4 stays within 1e-4 for 20.
    trials = [t for t in _trials(tmp_path, epochs=5, students=("resnet8x4",), batch_size=[32])
              if t.student.arch == "resnet8x4"
              and t.loss.name == "coss"][:3]
    bundle = small_data
    device = torch.device("cpu")
    first = trials[0]
    assert first.teacher_report is not None
    teacher = SharedTeacher(load_frozen_teacher(first.teacher, first.runtime.cache_dir,
                                                bundle))
    graph = load_neighbour_graph(first.teacher_report.graphs[31])
    images = bundle.train.images
    mean, std = bundle.mean, bundle.std

    def members(directory: Path) -> list[Any]:
        return [build_member(t, teacher=teacher, images=images, labels=None,
                             num_classes=bundle.num_classes, mean=mean, std=std,
                             device=device, graphs=lambda size: graph,
                             layout=memory_format(device, stacked=True))
                for t in _moved(trials, directory)]

    stream = BatchStream(images, None, mean, std, AUGMENT_PRESETS["ssl_light"],
                         first.train.seed, first.train.batch_size,
                         first.requirements.neighbour_batches, graph)
    alone, together = members(tmp_path / "a"), members(tmp_path / "b")
    stacks, left = plan_stacks(together)
    assert left == [] and len(stacks) == 1 and stacks[0].k == 3
    stack: Stack = stacks[0]
    steps = 0
    for epoch in range(first.train.epochs):
        for m in alone:
            m.begin_epoch(epoch)
        stack.begin_epoch(epoch)
        for batch in stream.epoch(epoch):
            teacher.new_step()
            stacked = stack.step(batch, teacher)
            for m in alone:
                m.step(batch, teacher)
            expected = torch.stack([m.last_terms for m in alone if m.last_terms is not None])
            # float32 rounding of the vmapped convolutions against the plain ones compounds
            # over the steps: up to 1.1e-4 relative seen on this AMD EPYC (2 threads).
            torch.testing.assert_close(stacked, expected, rtol=2e-4, atol=1e-6)
            steps += 1
            if steps == 20:
                return
    raise AssertionError(f"only {steps} steps")


def test_a_failing_member_fails_alone(small_data: DatasetBundle, tmp_path: Path) -> None:
    trials = _trials(tmp_path, lr=[0.05, 1.0e6])[:4]  # wrn_16_2: coss 0.5 x lr 0.05 / 1e6
    bad = [t for t in trials if t.train.lr == 1.0e6]
    good = [t for t in trials if t.train.lr == 0.05]
    outcomes, reports = _run(_moved(trials, tmp_path / "fused"))
    for t in bad:
        failure = outcomes[t.trial_id].failure
        assert failure is not None and "non-finite loss" in failure.reason
        assert failure.epoch == 1
        assert reports[t.trial_id][-1]["kind"] == "failed"
    for t in good:
        assert outcomes[t.trial_id].failure is None
        alone = run_trial(_moved([t], tmp_path / "alone")[0])
        assert _scores(outcomes[t.trial_id].metrics) == _scores(alone)


def test_a_killed_group_resumes_each_member_from_its_checkpoint(
        small_data: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials = _trials(tmp_path)[:3]
    straight, _ = _run(_moved(trials, tmp_path / "straight"))
    killed = _moved(trials, tmp_path / "killed")
    real_step = member_module.Member.step
    calls = {"n": 0}

    def dies_mid_epoch_two(self: Any, batch: Any, teacher: Any) -> None:
        if batch.epoch == 1 and batch.step == 1:
            calls["n"] += 1
            raise KeyboardInterrupt  # as if the process were killed (not a member failure)
        real_step(self, batch, teacher)

    monkeypatch.setattr(member_module.Member, "step", dies_mid_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _run(killed)
    monkeypatch.setattr(member_module.Member, "step", real_step)
    for t in killed:  # each member kept its epoch-1 checkpoint
        state = torch.load(Path(t.runtime.trial_dir) / "checkpoint.pt", weights_only=True)
        assert state["epoch"] == 1
    resumed, reports = _run(killed)
    for t in killed:
        assert [r["epoch"] for r in reports[t.trial_id] if r["kind"] == "epoch"] == [2.0]
        assert _scores(resumed[t.trial_id].metrics) == _scores(straight[t.trial_id].metrics)


def test_a_retried_group_reports_finished_members_without_rerunning_them(
        small_data: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials = _moved(_trials(tmp_path)[:2], tmp_path / "retry")
    done, other = trials
    Path(done.runtime.trial_dir).mkdir(parents=True)
    (Path(done.runtime.trial_dir) / trainable_module.FINAL_FILE).write_text(
        json.dumps({"kind": "final", "epoch": 2, "knn/top1_k10": 12.5}))
    seen: list[dict[str, Any]] = []
    ran: list[list[str]] = []
    monkeypatch.setattr(trainable_module.tune, "report", seen.append)
    def run_group(todo: list[TrialConfig], report: Any) -> dict[str, Any]:
        ran.append([t.trial_id for t in todo])
        return {}

    monkeypatch.setattr(trainable_module, "run_group", run_group)
    trainable_module.group_trainable({trainable_module.GROUP_KEY: [t.to_dict() for t in trials]})
    assert ran == [[other.trial_id]]
    assert seen == [{trainable_module.MEMBER_KEY: done.trial_id, "kind": "final", "epoch": 2,
                     "knn/top1_k10": 12.5}]


def _reporting_group(trained: threading.Event, fail: bool = False) -> Any:
    """A stand-in for run_group: an epoch row and a final row per member, then ``trained``
    set (or, with ``fail``, an error after the epoch rows)."""

    def run_group(todo: list[TrialConfig], report: Any) -> dict[str, MemberOutcome]:
        for t in todo:
            report(t.trial_id, {"kind": "epoch", "epoch": 1, "loss": 0.5})
        if fail:
            raise ValueError("cannot decode /data/train/a/x.jpg")
        for t in todo:
            report(t.trial_id, {"kind": "final", "epoch": 1, "knn/top1_k10": 50.0})
        trained.set()
        return {t.trial_id: MemberOutcome(t.trial_id) for t in todo}

    return run_group


def test_the_group_trains_on_while_the_driver_takes_its_reports(
        small_data: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tune.report blocks until the driver has logged the result; the group's training does
    not wait for it: a driver that takes nothing until the group has trained still gets
    every report, in order."""
    trials = _moved(_trials(tmp_path)[:2], tmp_path / "async")
    trained = threading.Event()
    sent: list[dict[str, Any]] = []

    def busy_driver(metrics: dict[str, Any]) -> None:
        assert trained.wait(timeout=120), "the group waited for tune.report"
        sent.append(metrics)

    monkeypatch.setattr(trainable_module.tune, "report", busy_driver)
    monkeypatch.setattr(trainable_module, "run_group", _reporting_group(trained))
    trainable_module.group_trainable({trainable_module.GROUP_KEY: [t.to_dict() for t in trials]})
    key = trainable_module.MEMBER_KEY
    assert [(m[key], m["kind"]) for m in sent] == (
        [(t.trial_id, "epoch") for t in trials] + [(t.trial_id, "final") for t in trials])
    for t in trials:  # final.json written before the final row was handed on
        assert json.loads((Path(t.runtime.trial_dir) / trainable_module.FINAL_FILE)
                          .read_text())["knn/top1_k10"] == 50.0


def test_under_a_fault_point_a_report_returns_once_tune_has_it(
        small_data: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash tests' "reported" (faults.EPOCH_REPORTED) means tune.report took it."""
    trials = _moved(_trials(tmp_path)[:1], tmp_path / "armed")
    monkeypatch.setenv(faults.FAULT_ENV, faults.RUN_FINISHED)  # a driver point: never here
    sent: list[dict[str, Any]] = []
    seen_at_return: list[int] = []

    def run_group(todo: list[TrialConfig], report: Any) -> dict[str, MemberOutcome]:
        for epoch in (1, 2):
            report(todo[0].trial_id, {"kind": "epoch", "epoch": epoch})
            seen_at_return.append(len(sent))
        return {todo[0].trial_id: MemberOutcome(todo[0].trial_id)}

    monkeypatch.setattr(trainable_module.tune, "report", sent.append)
    monkeypatch.setattr(trainable_module, "run_group", run_group)
    trainable_module.group_trainable({trainable_module.GROUP_KEY: [t.to_dict() for t in trials]})
    assert seen_at_return == [1, 2]


def test_a_group_that_breaks_sends_its_reports_then_fails_every_member(
        small_data: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials = _moved(_trials(tmp_path)[:2], tmp_path / "broken")
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(trainable_module.tune, "report", sent.append)
    monkeypatch.setattr(trainable_module, "run_group",
                        _reporting_group(threading.Event(), fail=True))
    with pytest.raises(RuntimeError, match=re.escape(
            "group failed: ValueError: cannot decode /data/train/a/x.jpg")):
        trainable_module.group_trainable(
            {trainable_module.GROUP_KEY: [t.to_dict() for t in trials]})
    assert [m["kind"] for m in sent] == ["epoch", "epoch"]
    for t in trials:
        failure = json.loads((Path(t.runtime.trial_dir) / trainable_module.FAILURE_FILE)
                             .read_text())
        assert failure["reason"] == "ValueError: cannot decode /data/train/a/x.jpg"


def test_groups_follow_the_batch_stream_and_the_cap(small_data: DatasetBundle,
                                                     tmp_path: Path) -> None:
    trials = _trials(tmp_path, seed=[0, 1])
    groups = make_groups(trials, "auto", 8)
    assert sorted(len(g) for g in groups) == [4, 4, 8, 8]  # 12 trials per seed, cap 8
    assert all(len({group_key(t) for t in g}) == 1 for g in groups)
    assert sorted(t.trial_id for g in groups for t in g) == sorted(t.trial_id for t in trials)
    assert make_groups(trials, "off", 8) == [[t] for t in trials]
