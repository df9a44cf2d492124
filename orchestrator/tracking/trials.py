"""A trial's run, child of the sweep's: created or reused on resume (found by its
``ukd.trial_id`` tag, so a sweep never holds two runs of one trial), its params, epochs,
evaluations and final metrics, its artifacts, and how it ended (FINISHED, FAILED, KILLED)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from common import faults
from common import names as N
from orchestrator.spec.config import TrialConfig, flat_params
from orchestrator.tracking.store import dataset_input, log_metric_batches, now_ms, numeric
from orchestrator.tracking.sweep import SweepRuns

REPORT_KEYS = ("epoch", N.REPORT_TIME)  # keys of a report that are not metrics


class TrialRuns(SweepRuns):
    def __init__(self, tracking_uri: str, experiment_name: str,
                 artifact_dir: Path | None = None) -> None:
        super().__init__(tracking_uri, experiment_name, artifact_dir)
        self.trial_runs: dict[str, str] = {}  # trial_id -> run_id
        self.logged_steps: dict[str, int] = {}  # trial_id -> last epoch already in MLflow
        self.open_runs: set[str] = set()  # trial ids this process set RUNNING and not ended

    def reconcile(self, trials: Iterable[TrialConfig]) -> set[str]:
        """Trials already FINISHED are returned (skip them); the others keep their newest run
        for reuse. Call it with the sweep's output locked: every run of this sweep still
        RUNNING was then left by a dead process and is marked KILLED (it is set RUNNING again
        when its trial continues), so no run stays RUNNING and no trial gets a second run."""
        finished: set[str] = set()
        assert self.parent_run_id is not None
        for run in self._search(f"tags.`{N.TAG_PARENT}` = '{self.parent_run_id}' "
                                "and attributes.status = 'RUNNING'"):  # trials and teachers
            self.client.set_terminated(run.info.run_id, status="KILLED")
        existing = self.existing_trials()
        for trial in trials:
            runs = sorted(existing.get(trial.trial_id, []), key=lambda r: r.info.start_time)
            if any(r.info.status == "FINISHED" for r in runs):
                finished.add(trial.trial_id)
            elif runs:
                keep = runs[-1]
                self.trial_runs[trial.trial_id] = keep.info.run_id
                self.logged_steps[trial.trial_id] = self._last_step(keep.info.run_id)
        return finished

    def _last_step(self, run_id: str) -> int:
        history = self.client.get_metric_history(run_id, N.LOSS_TOTAL)
        return max((m.step for m in history), default=0)

    def start_trial(self, trial: TrialConfig, group_id: str | None = None) -> str:
        """Create (or reopen) the trial's run; the teacher's reference metrics from the
        trial's stage report are logged once, at step 0."""
        assert self.parent_run_id is not None
        run_id = self.trial_runs.get(trial.trial_id)
        tags = {
            N.TAG_PARENT: self.parent_run_id,
            N.TAG_KIND: N.KIND_TRIAL,
            N.TAG_SWEEP_ID: self._parent_tag(N.TAG_SWEEP_ID),
            N.TAG_TRIAL_ID: trial.trial_id,
            N.TAG_TEACHER: trial.teacher.label,
            N.TAG_STUDENT: trial.student.arch,
            N.TAG_OBJECTIVE: trial.loss.name,
            N.TAG_TRIAL_DIR: trial.runtime.trial_dir,
        }
        if group_id is not None:
            tags[N.TAG_GROUP_ID] = group_id
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=f"{trial.index:03d} "
                                         f"{trial.label}", tags=tags)
            run_id = run.info.run_id
            self.trial_runs[trial.trial_id] = run_id
            self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in
                                                  flat_params(trial).items()])
            self.client.log_inputs(run_id, [dataset_input(trial.dataset)])
            known: set[str] = set()
        else:
            self.client.update_run(run_id, status="RUNNING")
            run = self.client.get_run(run_id)
            missing = [Param(k, v[:6000]) for k, v in flat_params(trial).items()
                       if k not in run.data.params]  # a process killed right after creating it
            if missing:
                self.client.log_batch(run_id, params=missing)
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            for key in (N.TAG_FAILURE_REASON, N.TAG_FAILURE_EPOCH, N.TAG_RESUMED_FROM):
                if key in run.data.tags:
                    self.client.delete_tag(run_id, key)
            known = set(run.data.metrics)
        self.open_runs.add(trial.trial_id)
        fresh = {k: v for k, v in teacher_reference(trial).items() if k not in known}
        if fresh:
            self.log_metrics(trial.trial_id, fresh, step=0)
        return run_id

    def log_teacher_metrics(self, trial_id: str, metrics: Mapping[str, float]) -> None:
        """Teacher metrics that arrived after the trial's run was made (its probe runs beside
        the trials), at step 0 like :meth:`start_trial`'s: those the run lacks. No run yet:
        nothing (its start logs them)."""
        run_id = self.trial_runs.get(trial_id)
        if run_id is None or not metrics:
            return
        known = set(self.client.get_run(run_id).data.metrics)
        fresh = {N.teacher_metric(k): v for k, v in metrics.items()
                 if N.teacher_metric(k) not in known}
        if fresh:
            self.log_metrics(trial_id, fresh, step=0)

    def set_trial_tags(self, trial_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.trial_runs[trial_id],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def kill_unfinished(self) -> None:
        """Mark KILLED every trial run this process set RUNNING and did not end."""
        for trial_id in sorted(self.open_runs):
            self.client.set_terminated(self.trial_runs[trial_id], status="KILLED")
        self.open_runs.clear()

    def log_metrics(self, trial_id: str, metrics: Mapping[str, float], step: int,
                    stamp: int | None = None) -> None:
        run_id = self.trial_runs[trial_id]
        stamp = now_ms() if stamp is None else stamp
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        log_metric_batches(self.client, run_id, batch)

    def log_epoch(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        if epoch <= self.logged_steps.get(trial_id, 0):
            return  # already logged before a crash; the resumed trial repeats no epoch
        self.log_metrics(trial_id, numeric(metrics, exclude=REPORT_KEYS), step=epoch)
        self.logged_steps[trial_id] = epoch

    def log_eval(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        """A periodic evaluation's metrics at step = epoch."""
        self.log_metrics(trial_id, numeric(metrics, exclude=REPORT_KEYS),
                         step=int(metrics["epoch"]))

    def log_missing(self, trial_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Log each row's metrics at its ``epoch`` step unless the run already has that
        metric at that step -- the reports a killed driver may have dropped, sent again by
        the resumed trial; each keeps the time it was first reported (``time_ms``)."""
        run_id = self.trial_runs[trial_id]
        rows = list(rows)
        keys = {k for row in rows for k in numeric(row, exclude=REPORT_KEYS)}
        have = {k: {m.step for m in self.client.get_metric_history(run_id, k)} for k in keys}
        for row in rows:
            step = int(row["epoch"])
            fresh = {k: v for k, v in numeric(row, exclude=REPORT_KEYS).items()
                     if step not in have[k]}
            if fresh:
                self.log_metrics(trial_id, fresh, step=step, stamp=row.get(N.REPORT_TIME))
            if row.get("kind") == "epoch":
                self.logged_steps[trial_id] = max(step, self.logged_steps.get(trial_id, 0))

    def finish_trial(self, trial: TrialConfig, final: Mapping[str, Any]) -> None:
        """Final metrics (each at most once: a resumed trial may send them again), the
        config and weights as artifacts, then FINISHED."""
        run_id = self.trial_runs[trial.trial_id]
        self.log_missing(trial.trial_id, [final])
        trial_dir = Path(trial.runtime.trial_dir)
        for name in ("config.yaml", "student.pt"):
            if (trial_dir / name).is_file():
                self.client.log_artifact(run_id, str(trial_dir / name))
        faults.reach(faults.FINAL_LOGGED)
        self.client.set_terminated(run_id, status="FINISHED")
        self.open_runs.discard(trial.trial_id)

    def fail_trial(self, trial_id: str, reason: str, epoch: int | None,
                   status: str = "FAILED", attempts: int | None = None,
                   artifact: Path | None = None) -> None:
        run_id = self.trial_runs.get(trial_id)
        if run_id is None:
            return
        tags = [RunTag(N.TAG_FAILURE_REASON, reason[:4000])]
        if epoch is not None:
            tags.append(RunTag(N.TAG_FAILURE_EPOCH, str(epoch)))
        if attempts is not None:
            tags.append(RunTag(N.TAG_ATTEMPTS, str(attempts)))
        self.client.log_batch(run_id, tags=tags)
        if artifact is not None:
            self.client.log_artifact(run_id, str(artifact))
        self.client.set_terminated(run_id, status=status)
        self.open_runs.discard(trial_id)


def teacher_reference(trial: TrialConfig) -> dict[str, float]:
    """The teacher's reference metrics a trial's run carries at step 0 (from the trial's
    stage report): its kNN accuracy, its test accuracy, its other metrics."""
    report = trial.teacher_report
    reference = {} if report is None else {N.TEACHER_KNN_PREFIX + k: v
                                           for k, v in report.knn.items()}
    if report is not None and report.test_top1 is not None:
        reference[N.teacher_metric(N.TEACHER_TEST_TOP1)] = report.test_top1
        if trial.eval.classifier:  # the teacher's own classifier: the classifier metric
            reference[N.teacher_metric(N.CLASSIFIER_PREFIX + "top1")] = report.test_top1
    if report is not None:
        reference.update({N.teacher_metric(k): v for k, v in report.metrics.items()})
    return reference
