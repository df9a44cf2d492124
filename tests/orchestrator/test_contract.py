"""The typed trial contract: teacher cache keys from the resolved config, each step once
(a trial loads its teacher once), the display's metric from the spec."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

import models.pretrain as pretrain_module
from orchestrator.progress import SweepProgress
from orchestrator.runtime.callback import SweepCallback
from orchestrator.runtime.driver import SweepOutcome, teacher_line
from orchestrator.runtime.stage_tasks import ReferenceTasks
from orchestrator.runtime.trainable import MEMBER_KEY
from orchestrator.spec.config import TeacherReport
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages import teachers as teachers_module
from orchestrator.stages import trials as group_module
from orchestrator.stages.teachers import ensure_teacher, run_stage
from orchestrator.stages.trials import run_trial
from orchestrator.tracking import Tracker
from tests.orchestrator.specs import minimal_spec


def _spec(tmp: Path, pretrain: dict[str, Any], **overrides: Any) -> Any:
    data = minimal_spec(output_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"), **overrides)
    data["teachers"]["t"]["pretrain"] = pretrain
    path = tmp / f"spec{len(list(tmp.glob('spec*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


def test_two_spellings_share_one_teacher_and_a_new_recipe_version_trains_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _spec(tmp_path, {"epochs": 1, "batch_size": 256})
    spelled = _spec(tmp_path, {"epochs": 1, "batch_size": 256, "recipe": "simclr",
                               "augment": "ssl", "seed": 0})
    a, b = plain.teachers["t"], spelled.teachers["t"]
    key = a.key
    assert key == b.key
    first = ensure_teacher(a, plain.dataset, plain.eval.knn, plain.cache_dir)
    again = ensure_teacher(b, spelled.dataset, spelled.eval.knn, spelled.cache_dir)
    assert first.trained_now and not again.trained_now and first.directory == again.directory

    monkeypatch.setattr(pretrain_module, "RECIPE_VERSION", pretrain_module.RECIPE_VERSION + 1)
    bumped = _spec(tmp_path, {"epochs": 1, "batch_size": 256}).teachers["t"]
    assert bumped.key != key
    retrained = ensure_teacher(bumped, plain.dataset, plain.eval.knn, plain.cache_dir)
    assert retrained.trained_now and retrained.directory != first.directory


@pytest.mark.parametrize("from_driver", [True, False])
def test_a_trial_loads_its_teacher_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        from_driver: bool) -> None:
    spec = _spec(tmp_path, {"epochs": 1, "batch_size": 256},
                 train={"epochs": 1, "batch_size": 128})
    trial = next(t for t in expand(spec) if t.loss.name == "coss")
    if from_driver:  # the driver ran the stage and hands its report to the trial
        report = ensure_teacher(trial.teacher, trial.dataset, trial.eval.knn,
                                trial.runtime.cache_dir, graph_sizes=(31,))
        trial = trial.with_report(report)
    else:
        run_stage(trial.teacher, trial.dataset, trial.eval.knn, trial.runtime.cache_dir)
    loads: list[str] = []
    real = teachers_module.load_teacher

    def counting(path: Any, *args: Any) -> Any:
        loads.append(str(path))
        return real(path, *args)

    monkeypatch.setattr(teachers_module, "load_teacher", counting)
    final = run_trial(trial)
    assert len(loads) == 1, loads
    assert "knn/top1_k10" in final
    assert group_module.load_frozen_teacher is teachers_module.load_frozen_teacher


def test_the_display_and_the_teacher_line_use_the_first_configured_k(tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"epochs": 1}, knn={"k": [20]})
    assert spec.eval.headline == "knn/top1_k20"
    trial = expand(spec)[0]
    progress = SweepProgress(1, spec.eval.headline)
    progress.add(trial.trial_id, trial.label, trial.train.epochs)

    class Quiet:  # the tracker's side is tested with real MLflow elsewhere
        def finish_trial(self, *args: Any) -> None: ...

    callback = SweepCallback(cast(Tracker, Quiet()), {trial.trial_id: trial}, progress,
                             SweepOutcome(1, 0), {}, spec.eval.headline)
    callback.on_trial_result(0, [], None, {MEMBER_KEY: trial.trial_id, "kind": "final",
                                           "epoch": 1, "knn/top1_k20": 77.5})
    assert progress.trials[trial.trial_id].score == 77.5
    assert "knn/top1_k20 77.50" in progress._line(progress.trials[trial.trial_id])
    report = TeacherReport("k", "t", str(tmp_path), {"top1_k20": 81.25, "top5_k20": 99.0})
    assert "knn/top1_k20 81.25%" in teacher_line(report, spec.eval.headline)


def test_teacher_metrics_that_arrive_after_a_run_began_are_logged_once_at_step_0(
        tmp_path: Path) -> None:
    """The teacher's probe runs beside the trials (orchestrator/runtime/stage_tasks.py): a
    trial's run made before it ended gets its metrics at step 0 when they arrive, once; the
    trial's config carries them from then on (a later start logs them itself)."""
    spec = _spec(tmp_path, {"epochs": 1})
    report = TeacherReport("k", "t", str(tmp_path), {"top1_k10": 80.0})
    trial = expand(spec)[0].with_report(report)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "ukd-late-teacher",
                      tmp_path / "artifacts")
    tracker.open_sweep("sweep", spec.name, {}, None)
    tracker.start_trial(trial)
    probe = {"linear/top1": 70.0, "linear/top5": 99.0}

    class References:  # what the callback reads of ReferenceTasks
        def __init__(self) -> None:
            self.reports = {trial.teacher.key: dataclasses.replace(report, metrics=probe)}

    callback = SweepCallback(tracker, {trial.trial_id: trial},
                             SweepProgress(1, spec.eval.headline), SweepOutcome(1, 0), {},
                             spec.eval.headline, cast(ReferenceTasks, References()))
    callback.teacher_arrived(trial.teacher.key)
    tracker.log_teacher_metrics(trial.trial_id, probe)  # again: the run has them already
    run_id = tracker.trial_runs[trial.trial_id]
    for key, value in probe.items():
        history = tracker.client.get_metric_history(run_id, f"teacher_{key}")
        assert [(m.step, m.value) for m in history] == [(0, value)]
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(
        run_id, "teacher_knn/top1_k10")] == [(0, 80.0)]  # from the start, not again
    updated = callback.by_id[trial.trial_id].teacher_report
    assert updated is not None and updated.metrics == probe
