"""MLflow from the driver only: one writer, so many concurrent trials never lock SQLite.

Layout (docs/CONTRACTS.md): experiment ``ukd/<sweep>``, one parent run per sweep, one child
run per trial (tag ``mlflow.parentRunId``), teacher pretraining runs beside them. On resume
the same runs are reused: a trial's run is found by its ``ukd.trial_id`` tag, so a sweep never
holds two runs of one trial, and runs a dead process left RUNNING are marked KILLED.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag

from orchestrator.grid import TrialConfig, flat_params

MAX_BATCH = 900  # MLflow accepts up to 1000 metrics per log_batch
# Keys Ray Tune adds to every reported result: not metrics of the trial.
TUNE_AUTO_KEYS = frozenset({
    "done", "training_iteration", "iterations_since_restore", "time_this_iter_s",
    "time_total_s", "time_since_restore", "timestamp", "pid", "node_ip", "hostname", "date",
    "experiment_id", "trial_id", "timesteps_total", "timesteps_since_restore",
    "episodes_total", "should_checkpoint", "checkpoint_dir_name", "config", "experiment_tag",
})


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{output_dir.resolve() / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str,
                 artifact_dir: Path | None = None) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        existing = self.client.get_experiment_by_name(experiment_name)
        if existing is not None:
            self.experiment_id = existing.experiment_id
        else:
            location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
            self.experiment_id = self.client.create_experiment(experiment_name, location)
        self.parent_run_id: str | None = None
        self.trial_runs: dict[str, str] = {}  # trial_id -> run_id
        self.logged_steps: dict[str, int] = {}  # trial_id -> last epoch already in MLflow
        self.open_runs: set[str] = set()  # trial ids this process set RUNNING and not ended

    # ------------------------------------------------------------------ sweep

    def _search(self, filter_string: str) -> list[Run]:
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string,
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def open_sweep(self, sweep_id: str, name: str, tags: Mapping[str, str],
                   parent_run_id: str | None = None) -> str:
        """Create the parent run, or reopen the one of an earlier process of this sweep."""
        if parent_run_id is None:
            found = self._search(
                f"tags.`ukd.kind` = 'sweep' and tags.`ukd.sweep_id` = '{sweep_id}'")
            parent_run_id = found[0].info.run_id if found else None
        if parent_run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=name,
                                         tags={"ukd.kind": "sweep", "ukd.sweep_id": sweep_id,
                                               **tags})
            parent_run_id = run.info.run_id
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
            self.client.log_batch(parent_run_id,
                                  tags=[RunTag(k, v) for k, v in tags.items()])
        self.parent_run_id = parent_run_id
        return parent_run_id

    def log_sweep_artifact(self, path: Path) -> None:
        assert self.parent_run_id is not None
        self.client.log_artifact(self.parent_run_id, str(path))

    def close_sweep(self, status: str) -> None:
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, status=status)

    # ------------------------------------------------------------------ trials

    def existing_trials(self) -> dict[str, list[Run]]:
        assert self.parent_run_id is not None
        runs = self._search(f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
                            "and tags.`ukd.kind` = 'trial'")
        by_trial: dict[str, list[Run]] = {}
        for run in runs:
            by_trial.setdefault(run.data.tags.get("ukd.trial_id", ""), []).append(run)
        return by_trial

    def reconcile(self, trials: Iterable[TrialConfig]) -> set[str]:
        """Trials already FINISHED are returned (skip them); the others keep their newest run
        for reuse. Call it with the sweep's output locked: every run of this sweep still
        RUNNING was then left by a dead process and is marked KILLED (it is set RUNNING again
        when its trial continues), so no run stays RUNNING and no trial gets a second run."""
        finished: set[str] = set()
        assert self.parent_run_id is not None
        for run in self._search(f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
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
        history = self.client.get_metric_history(run_id, "loss/total")
        return max((m.step for m in history), default=0)

    def start_trial(self, trial: TrialConfig, teacher_knn: Mapping[str, float]) -> str:
        assert self.parent_run_id is not None
        run_id = self.trial_runs.get(trial.trial_id)
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "ukd.kind": "trial",
            "ukd.sweep_id": self._parent_tag("ukd.sweep_id"),
            "ukd.trial_id": trial.trial_id,
            "ukd.teacher": str(trial.teacher["label"]),
            "ukd.student": trial.student,
            "ukd.objective": str(trial.loss["name"]),
            "ukd.trial_dir": str(trial.runtime["trial_dir"]),
        }
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=f"{trial.index:03d} "
                                         f"{trial.label}", tags=tags)
            run_id = run.info.run_id
            self.trial_runs[trial.trial_id] = run_id
            self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in
                                                  flat_params(trial).items()])
            known: set[str] = set()
        else:
            self.client.update_run(run_id, status="RUNNING")
            run = self.client.get_run(run_id)
            missing = [Param(k, v[:6000]) for k, v in flat_params(trial).items()
                       if k not in run.data.params]  # a process killed right after creating it
            if missing:
                self.client.log_batch(run_id, params=missing)
            for key in ("ukd.failure_reason", "ukd.failure_epoch", "ukd.resumed_from_epoch"):
                if key in run.data.tags:
                    self.client.delete_tag(run_id, key)
            known = set(run.data.metrics)
        self.open_runs.add(trial.trial_id)
        fresh = {f"teacher_knn/{k}": v for k, v in teacher_knn.items()
                 if f"teacher_knn/{k}" not in known}
        if fresh:
            self.log_metrics(trial.trial_id, fresh, step=0)
        return run_id

    def set_trial_tags(self, trial_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.trial_runs[trial_id],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def kill_unfinished(self) -> None:
        """Mark KILLED every trial run this process set RUNNING and did not end."""
        for trial_id in sorted(self.open_runs):
            self.client.set_terminated(self.trial_runs[trial_id], status="KILLED")
        self.open_runs.clear()

    def _parent_tag(self, key: str) -> str:
        assert self.parent_run_id is not None
        return str(self.client.get_run(self.parent_run_id).data.tags.get(key, ""))

    def log_metrics(self, trial_id: str, metrics: Mapping[str, float], step: int) -> None:
        run_id = self.trial_runs[trial_id]
        stamp = _now_ms()
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        for start in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(run_id, metrics=batch[start:start + MAX_BATCH])

    def log_epoch(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        if epoch <= self.logged_steps.get(trial_id, 0):
            return  # already logged before a crash; the resumed trial repeats no epoch
        self.log_metrics(trial_id, _numeric(metrics, exclude=("epoch",)), step=epoch)
        self.logged_steps[trial_id] = epoch

    def finish_trial(self, trial: TrialConfig, final: Mapping[str, Any]) -> None:
        run_id = self.trial_runs[trial.trial_id]
        self.log_metrics(trial.trial_id, _numeric(final, exclude=("epoch",)),
                         step=int(final.get("epoch", 0)))
        trial_dir = Path(trial.runtime["trial_dir"])
        for name in ("config.yaml", "student.pt"):
            if (trial_dir / name).is_file():
                self.client.log_artifact(run_id, str(trial_dir / name))
        self.client.set_terminated(run_id, status="FINISHED")
        self.open_runs.discard(trial.trial_id)

    def fail_trial(self, trial_id: str, reason: str, epoch: int | None,
                   status: str = "FAILED", attempts: int | None = None,
                   artifact: Path | None = None) -> None:
        run_id = self.trial_runs.get(trial_id)
        if run_id is None:
            return
        tags = [RunTag("ukd.failure_reason", reason[:4000])]
        if epoch is not None:
            tags.append(RunTag("ukd.failure_epoch", str(epoch)))
        if attempts is not None:
            tags.append(RunTag("ukd.attempts", str(attempts)))
        self.client.log_batch(run_id, tags=tags)
        if artifact is not None:
            self.client.log_artifact(run_id, str(artifact))
        self.client.set_terminated(run_id, status=status)
        self.open_runs.discard(trial_id)

    # ------------------------------------------------------------------ teachers

    def log_teacher(self, report: Any) -> None:
        """A freshly pretrained teacher as its own run (child of the sweep)."""
        assert self.parent_run_id is not None
        run = self.client.create_run(
            self.experiment_id, run_name=f"teacher {report.label}",
            tags={"ukd.kind": "teacher", "ukd.teacher_hash": report.key,
                  "ukd.teacher": report.label, "mlflow.parentRunId": self.parent_run_id,
                  "ukd.teacher_dir": report.directory})
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, json.dumps(v) if isinstance(v, list | dict)
                                                    else str(v))
                                              for k, v in report.params.items()])
        stamp = _now_ms()
        metrics = [Metric(f"pretrain/{k}", float(v), stamp, int(row["epoch"]))
                   for row in report.history for k, v in row.items() if k != "epoch"]
        last = max((int(r["epoch"]) for r in report.history), default=0)
        metrics += [Metric(f"knn/{k}", float(v), stamp, last) for k, v in report.knn.items()]
        metrics.append(Metric("train_time_s", float(report.train_time_s), stamp, last))
        if report.test_top1 is not None:
            metrics.append(Metric("test/top1", float(report.test_top1), stamp, last))
        for start in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + MAX_BATCH])
        self.client.set_terminated(run_id, status="FINISHED")


def _numeric(metrics: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k not in exclude and k != "kind" and k not in TUNE_AUTO_KEYS
            and isinstance(v, int | float) and not isinstance(v, bool)}
