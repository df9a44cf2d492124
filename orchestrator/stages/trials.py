"""The trial stage: a group of trials run by the engine with its teacher from the teacher
stage (the stage's report when the driver ran it, else the cached, locked stage run here).

:func:`run_group` is what a Tune trial runs (:mod:`orchestrator.runtime.callback`);
:func:`run_trial` is a group of one, for tests and scripts. No Ray here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.teacher import FrozenTeacher
from orchestrator.data.datasets import DatasetBundle
from orchestrator.engine import group as engine
from orchestrator.engine.group import GroupReporter, MemberOutcome, Reporter, teacher_needs
from orchestrator.spec.config import TeacherReport, TrialConfig
from orchestrator.stages.teachers import load_frozen_teacher, run_stage


def group_teacher(trials: Sequence[TrialConfig], bundle: DatasetBundle
                  ) -> tuple[TeacherReport, FrozenTeacher]:
    """The group's teacher, loaded once: from the stage's report when the driver ran it,
    else by running the (cached, locked) stage here."""
    first = trials[0]
    needs = teacher_needs(trials)
    sizes = tuple(sorted({s for t in trials if (s := t.requirements.graph_size)}))
    report = first.teacher_report
    if report is not None and all(s in report.graphs for s in sizes):
        return report, load_frozen_teacher(first.teacher, first.runtime.cache_dir, bundle,
                                           needs)
    return run_stage(first.teacher, first.dataset, first.eval.knn, first.runtime.cache_dir,
                     first.runtime.device, sizes, needs=needs)


def run_group(trials: Sequence[TrialConfig], report: GroupReporter,
              check_every: int | None = None, level: str | None = None
              ) -> dict[str, MemberOutcome]:
    """:func:`orchestrator.engine.group.run_group` with the teacher of :func:`group_teacher`."""
    return engine.run_group(trials, report, group_teacher, check_every, level)


def run_trial(config: TrialConfig | Mapping[str, Any], report: Reporter | None = None
              ) -> dict[str, float]:
    """One trial on its own (a group of one); raises TrialFailure when it fails."""
    trial = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    emit = report or (lambda _metrics: None)
    outcome = run_group([trial], lambda _id, metrics: emit(metrics))[trial.trial_id]
    if outcome.failure is not None:
        raise outcome.failure
    return outcome.metrics
