"""The driver's side of Ray Tune: the callback that turns Tune events into MLflow runs (the
single writer) and the live display.

A Tune trial is a group (orchestrator/engine) run by orchestrator/runtime/trainable.py; its
members report with ``MEMBER_KEY`` naming their trial, and the callback fans the results out
to one MLflow run per member.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from common import faults, names
from orchestrator.engine.member import CHECKPOINT, RESUMED
from orchestrator.progress import SweepProgress
from orchestrator.runtime.stage_tasks import ReferenceTasks, short
from orchestrator.runtime.trainable import FAILURE_FILE, GROUP_KEY, MEMBER_KEY, NODE_KEY
from orchestrator.spec.config import TrialConfig
from orchestrator.tracking import Tracker


def read_failure(trial: TrialConfig, ray_trial: Any = None) -> tuple[str, int | None]:
    path = Path(trial.runtime.trial_dir) / FAILURE_FILE
    try:
        data = json.loads(path.read_text())
        return str(data.get("reason", "unknown")), data.get("epoch")
    except (OSError, ValueError):
        pass
    # No reason written: the group's process died (killed, out of memory, crashed).
    text = ""
    try:
        text = str(ray_trial.get_error() or "") if ray_trial is not None else ""
    except Exception:  # Tune's error file is best effort
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = f": {lines[-1][:300]}" if lines else ""
    return f"the trial's process ended without a recorded reason{detail}", None


class SweepCallback(tune.Callback):
    """Driver-side bridge from Ray Tune events to MLflow and the display.

    Ray pickles the run config, callbacks included, into its experiment state: the tracker and
    the live display stay in this driver process and are left out of the pickle.
    """

    def __init__(self, tracker: Tracker, by_id: Mapping[str, TrialConfig],
                 progress: SweepProgress, outcome: Any, names: Mapping[str, str],
                 headline: str, references: ReferenceTasks | None = None) -> None:
        self.tracker = tracker
        self.by_id = dict(by_id)
        self.references = references
        self.progress = progress
        self.outcome = outcome
        self.names = names
        self.headline = headline
        self.attempts: dict[str, int] = {}
        self.done: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Between Tune's steps: log the reference stages that have ended."""
        if self.references is not None and self.references.pending:
            for key in self.references.poll():
                self.teacher_arrived(key)

    def teacher_arrived(self, key: str) -> None:
        """Teacher ``key``'s probe metrics are in (``references.reports``): its trials carry
        them from now on, and the runs already started get them at step 0."""
        assert self.references is not None
        report = self.references.reports[key]
        for trial_id, t in list(self.by_id.items()):
            if t.teacher.key != key:
                continue
            before = t.teacher_report.metrics if t.teacher_report is not None else {}
            self.by_id[trial_id] = t.with_report(report)
            self.tracker.log_teacher_metrics(trial_id, {
                k: v for k, v in report.metrics.items() if k not in before})

    def _members(self, ray_trial: Any) -> list[TrialConfig]:
        return [self.by_id[d["trial_id"]] for d in ray_trial.config[GROUP_KEY]]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        members = self._members(trial)
        group = trial.trial_id if len(members) > 1 else None
        for t in members:
            if t.trial_id in self.done:
                continue
            self.attempts[t.trial_id] = self.attempts.get(t.trial_id, 0) + 1
            self.tracker.start_trial(t, group)
            self.progress.update(t.trial_id, status="running", reason="")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        for t in self._members(trial):
            if t.trial_id not in self.done:
                reason, _ = read_failure(t, trial)
                self.progress.update(t.trial_id, status="running",
                                     reason=f"retrying after: {short(reason, 120)}")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        t = self.by_id[result[MEMBER_KEY]]
        kind = result.get("kind")
        if kind == RESUMED:
            # Continues from its checkpoint: the epoch it held, and every report before it,
            # since the dead driver may not have got them all to MLflow (logged if missing).
            self.tracker.set_trial_tags(t.trial_id, {
                names.TAG_RESUMED_FROM: str(int(result["resumed_from_epoch"]))})
            self.tracker.log_missing(t.trial_id, result["history"])
        elif kind == "node":
            self.tracker.set_trial_tags(t.trial_id, {names.TAG_NODE_ID: str(result[NODE_KEY])})
        elif kind == "eval":  # periodic evaluation: its metrics at step = epoch
            self.tracker.log_eval(t.trial_id, result)
        elif kind == "epoch":
            self.tracker.log_epoch(t.trial_id, result)
            self.progress.update(t.trial_id, epoch=int(result["epoch"]),
                                 loss=result.get("loss/total"))
        elif kind == "final" and t.trial_id not in self.done:
            faults.reach(faults.FINAL_RECEIVED)
            final = {k: v for k, v in result.items() if not k.startswith("teacher_")}
            self.tracker.finish_trial(t, final)
            faults.reach(faults.RUN_FINISHED)
            # FINISHED is final (never resumed): the weights are the artifact, the optimiser
            # checkpoint only served resuming.
            (Path(t.runtime.trial_dir) / CHECKPOINT).unlink(missing_ok=True)
            self.done.add(t.trial_id)
            self.outcome.finished.append(t.trial_id)
            self.progress.update(t.trial_id, status="finished", reason="",
                                 score=result.get(self.headline))
        elif kind == "failed":
            self.progress.update(t.trial_id, status="failed",
                                 reason=short(str(result.get("reason", "")), 120))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        for t in self._members(trial):
            if t.trial_id in self.done:
                continue
            reason, epoch = read_failure(t, trial)
            failure = Path(t.runtime.trial_dir) / FAILURE_FILE
            self.tracker.fail_trial(t.trial_id, reason, epoch,
                                    attempts=self.attempts.get(t.trial_id, 1),
                                    artifact=failure if failure.is_file() else None)
            self.outcome.failed[self.names.get(t.trial_id, t.label)] = short(reason)
            self.progress.update(t.trial_id, status="failed", reason=short(reason, 120))

