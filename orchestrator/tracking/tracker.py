"""MLflow from the driver only: one writer, so many concurrent trials never lock SQLite.

Layout (docs/CONTRACTS.md): experiment ``ukd/<sweep>``, one parent run per sweep, one child
run per trial (tag ``mlflow.parentRunId``), teacher pretraining runs beside them. On resume
the same runs are reused: a trial's run is found by its ``ukd.trial_id`` tag, so a sweep never
holds two runs of one trial, and runs a dead process left RUNNING are marked KILLED.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from common import names as N
from common.hashing import content_hash
from models.pretrain import RECIPES
from orchestrator.spec.config import (
    DatasetConfig,
    PretrainSource,
    ReferenceConfig,
    ReferenceReport,
    TeacherConfig,
    TeacherReport,
    TrialConfig,
    flat_params,
)

MAX_BATCH = 900  # MLflow accepts up to 1000 metrics per log_batch
# Keys Ray Tune adds to every reported result: not metrics of the trial.
TUNE_AUTO_KEYS = frozenset({
    "done", "training_iteration", "iterations_since_restore", "time_this_iter_s",
    "time_total_s", "time_since_restore", "timestamp", "pid", "node_ip", "hostname", "date",
    "experiment_id", "trial_id", "timesteps_total", "timesteps_since_restore",
    "episodes_total", "should_checkpoint", "checkpoint_dir_name", "config", "experiment_tag",
})


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{output_dir.resolve() / N.DEFAULT_DB}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def is_server(uri: str) -> bool:
    """An MLflow tracking server (artifacts go through it, or to its object store)."""
    return uri.startswith(("http://", "https://"))


def is_local_location(location: str) -> bool:
    """An artifact location that is a path of the machine writing it (file:, a bare path)."""
    from urllib.parse import urlparse

    scheme = urlparse(location).scheme
    return scheme in ("", "file") or len(scheme) == 1  # len 1: a Windows drive letter


def serves_artifacts(uri: str) -> bool | None:
    """Whether the MLflow server at ``uri`` proxies artifacts (``mlflow server`` with
    artifact serving, its default; --artifacts-destination says where they go); None when it
    cannot be told (e.g. the endpoint needs credentials)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    try:
        with urlopen(f"{uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts", timeout=30):
            return True
    except HTTPError as exc:
        return False if exc.code == 503 else None  # 503: --no-serve-artifacts
    except (URLError, OSError):
        return None


def check_artifact_store(uri: str, experiment_name: str) -> None:
    """With an MLflow server, every artifact (configs, weights, failure reports, the report)
    goes through the server or to an object store, never to a path of this machine's disk
    (the server's other users could not read it). Checked before anything is written."""
    from orchestrator.errors import UserInputError

    if not is_server(uri):
        return
    allowed = ("allowed: a server started with --artifacts-destination DIR_OR_BUCKET "
               "(proxied artifacts, `mlflow server`'s default), or an experiment created "
               f"beforehand with an object-store location (mlflow experiments create -n "
               f"{experiment_name} -l s3://BUCKET/PATH)")
    existing = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment_name)
    if existing is not None:
        if is_local_location(existing.artifact_location):
            raise UserInputError(
                f"--tracking-uri {uri}: the experiment {experiment_name} keeps its artifacts "
                f"at {existing.artifact_location}, a path on the disk of whoever logs them, "
                f"not on the server; {allowed}, or another sweep name")
        return
    if serves_artifacts(uri) is False:
        raise UserInputError(
            f"--tracking-uri {uri}: the MLflow server does not serve artifacts "
            "(--no-serve-artifacts), so its default artifact root is a path this machine would "
            f"write to; {allowed}")


def log_report(tracking_uri: str, parent_run_id: str, folder: Path,
               artifact_path: str = N.REPORT_ARTIFACTS) -> None:
    """The report folder as the parent run's ``report/`` artifacts (through the server when
    the tracking URI is one: the client uploads, never a path of this disk)."""
    MlflowClient(tracking_uri=tracking_uri).log_artifacts(parent_run_id, str(folder),
                                                          artifact_path=artifact_path)


def _now_ms() -> int:
    return int(time.time() * 1000)


def dataset_input(dataset: DatasetConfig, context: str = "train") -> DatasetInput:
    """The sweep's dataset as an MLflow dataset input (the UI's Dataset column): its name, a
    digest of the name (one dataset, one digest, whoever logs it), where it is read from and
    what the trials may use of it."""
    from orchestrator.data.datasets import DATASETS

    info = DATASETS[dataset.name]
    source = dataset.root or ("sklearn.datasets.load_digits" if dataset.name == "digits"
                              else dataset.name)
    profile = {"num_classes": info.num_classes, "channels": info.channels,
               "image_size": info.image_size, "labels_used": dataset.labels,
               "description": info.description}
    return DatasetInput(
        Dataset(name=dataset.name, digest=content_hash({"dataset": dataset.name}, 8),
                source_type="local", source=json.dumps({"uri": source}),
                profile=json.dumps(profile)),
        tags=[InputTag(N.TAG_DATA_CONTEXT, context)])


class Tracker:
    def __init__(self, tracking_uri: str, experiment_name: str,
                 artifact_dir: Path | None = None) -> None:
        self.uri = tracking_uri
        # MLflow prints a "View run at <url>" line per ended run against a server: the
        # sweep's display and summary already say where the runs are.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(tracking_uri=tracking_uri)
        existing = self.client.get_experiment_by_name(experiment_name)
        if existing is not None:
            self.experiment_id = existing.experiment_id
        else:
            location = artifact_dir.resolve().as_uri() if artifact_dir is not None else None
            self.experiment_id = self.client.create_experiment(
                experiment_name, location, tags={N.TAG_EXPERIMENT_KIND: N.EXPERIMENT_KIND})
        if existing is not None and existing.tags.get(N.TAG_EXPERIMENT_KIND) is None:
            # MLflow 3 opens an experiment without a kind in its GenAI view.
            self.client.set_experiment_tag(self.experiment_id, N.TAG_EXPERIMENT_KIND,
                                           N.EXPERIMENT_KIND)
        if is_server(tracking_uri):  # preflight checked; a server that answered "unknown"
            location = self.client.get_experiment(self.experiment_id).artifact_location
            if is_local_location(location):
                from orchestrator.errors import UserInputError

                raise UserInputError(
                    f"--tracking-uri {tracking_uri}: the experiment {experiment_name} keeps "
                    f"its artifacts at {location}, a path on this machine, not on the server; "
                    "allowed: a server started with --artifacts-destination (proxied "
                    "artifacts) or an object-store artifact location")
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
                f"tags.`{N.TAG_KIND}` = '{N.KIND_SWEEP}' and "
                f"tags.`{N.TAG_SWEEP_ID}` = '{sweep_id}'")
            parent_run_id = found[0].info.run_id if found else None
        if parent_run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=name,
                                         tags={N.TAG_KIND: N.KIND_SWEEP,
                                               N.TAG_SWEEP_ID: sweep_id, **tags})
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
            try:
                self.log_summary()
            except MlflowException:  # a summary is no reason to leave the parent RUNNING
                pass
            self.client.set_terminated(self.parent_run_id, status=status)

    def log_summary(self) -> dict[str, float]:
        """The parent run's summary metrics from its trial runs: ``trials/<status>`` counts
        (finished, failed, killed, running) and ``best/<metric>`` for each top-1 metric of the
        evaluators (the best FINISHED trial's final value)."""
        assert self.parent_run_id is not None
        runs = [r for group in self.existing_trials().values() for r in group]
        counts = {s: 0 for s in ("finished", "failed", "killed", "running")}
        best: dict[str, float] = {}
        for run in runs:
            status = run.info.status.lower()
            counts[status if status in counts else "failed"] += 1
            if run.info.status != "FINISHED":
                continue
            for key, value in run.data.metrics.items():
                if key.startswith(N.EVALUATOR_PREFIXES) and "top1" in key \
                        and not key.endswith(N.BEST_EPOCH_SUFFIX) and value == value:
                    best[key] = max(value, best.get(key, float("-inf")))
        summary = {f"{N.SUMMARY_PREFIX}{k}": float(v) for k, v in counts.items()}
        summary.update({f"{N.BEST_PREFIX}{k}": v for k, v in best.items()})
        stamp = _now_ms()
        self.client.log_batch(self.parent_run_id,
                              metrics=[Metric(k, v, stamp, 0) for k, v in summary.items()])
        return summary

    # ------------------------------------------------------------------ trials

    def existing_trials(self) -> dict[str, list[Run]]:
        assert self.parent_run_id is not None
        runs = self._search(f"tags.`{N.TAG_PARENT}` = '{self.parent_run_id}' "
                            f"and tags.`{N.TAG_KIND}` = '{N.KIND_TRIAL}'")
        by_trial: dict[str, list[Run]] = {}
        for run in runs:
            by_trial.setdefault(run.data.tags.get(N.TAG_TRIAL_ID, ""), []).append(run)
        return by_trial

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
        report = trial.teacher_report
        reference = {} if report is None else {N.TEACHER_KNN_PREFIX + k: v
                                               for k, v in report.knn.items()}
        if report is not None and report.test_top1 is not None:
            reference[N.teacher_metric(N.TEACHER_TEST_TOP1)] = report.test_top1
            if trial.eval.classifier:  # the teacher's own classifier: the classifier metric
                reference[N.teacher_metric(N.CLASSIFIER_PREFIX + "top1")] = report.test_top1
        if report is not None:
            reference.update({N.teacher_metric(k): v for k, v in report.metrics.items()})
        fresh = {k: v for k, v in reference.items() if k not in known}
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

    def log_eval(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        """A periodic evaluation's metrics at step = epoch."""
        self.log_metrics(trial_id, _numeric(metrics, exclude=("epoch",)),
                         step=int(metrics["epoch"]))

    def finish_trial(self, trial: TrialConfig, final: Mapping[str, Any]) -> None:
        run_id = self.trial_runs[trial.trial_id]
        self.log_metrics(trial.trial_id, _numeric(final, exclude=("epoch",)),
                         step=int(final.get("epoch", 0)))
        trial_dir = Path(trial.runtime.trial_dir)
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

    # ------------------------------------------------------------------ teachers

    def log_teacher(self, teacher: TeacherConfig, report: TeacherReport) -> None:
        """A freshly pretrained teacher as its own run (child of the sweep)."""
        assert self.parent_run_id is not None
        run = self.client.create_run(
            self.experiment_id, run_name=f"teacher {report.label}",
            tags={N.TAG_KIND: N.KIND_TEACHER, N.TAG_TEACHER_HASH: report.key,
                  N.TAG_TEACHER: report.label, N.TAG_PARENT: self.parent_run_id,
                  N.TAG_TEACHER_DIR: report.directory})
        run_id = run.info.run_id
        params: dict[str, Any] = {"label": teacher.label, "arch": teacher.arch,
                                  "source": teacher.source.source, "key": teacher.key}
        if isinstance(teacher.source, PretrainSource):
            pretrain = teacher.source.pretrain.to_dict()
            params.update({f"pretrain.{k}": v for k, v in pretrain.items()})
        self.client.log_batch(run_id, params=[Param(k, json.dumps(v) if isinstance(v, list | dict)
                                                    else str(v)) for k, v in params.items()])
        stamp = _now_ms()
        metrics = [Metric(f"{N.PRETRAIN_PREFIX}{k}", float(v), stamp, int(row["epoch"]))
                   for row in report.history for k, v in row.items() if k != "epoch"]
        last = max((int(r["epoch"]) for r in report.history), default=0)
        metrics += [Metric(f"{N.KNN_PREFIX}{k}", float(v), stamp, last)
                    for k, v in report.knn.items()]
        metrics.append(Metric(N.TRAIN_TIME, float(report.train_time_s), stamp, last))
        if report.test_top1 is not None:
            metrics.append(Metric(N.TEACHER_TEST_TOP1, float(report.test_top1), stamp, last))
        for start in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + MAX_BATCH])
        supervised = isinstance(teacher.source, PretrainSource) and \
            RECIPES[teacher.source.pretrain.recipe].needs_labels
        self.client.log_inputs(run_id, [dataset_input(DatasetConfig(teacher.dataset,
                                                                    labels=supervised))])
        self.client.set_terminated(run_id, status="FINISHED")

    # ------------------------------------------------------------------ references

    def logged_references(self) -> set[str]:
        """Run keys (``ukd.reference_key``) of this sweep's FINISHED reference runs."""
        assert self.parent_run_id is not None
        runs = self._search(f"tags.`{N.TAG_PARENT}` = '{self.parent_run_id}' "
                            f"and tags.`{N.TAG_KIND}` = '{N.KIND_REFERENCE}'")
        return {r.data.tags.get(N.TAG_REFERENCE_KEY, "") for r in runs
                if r.info.status == "FINISHED"}

    def log_reference(self, ref: ReferenceConfig, report: ReferenceReport | None,
                      failure: str | None = None) -> str:
        """A reference row's run (child of the sweep): tags ``ukd.kind=reference``,
        ``ukd.reference``, ``ukd.student``; params (``seed``, the recipe, the evaluation);
        the evaluators' metrics, and ``pretrain/*`` per epoch for trained references. With
        ``failure`` the run is FAILED with that reason."""
        assert self.parent_run_id is not None
        tags = {N.TAG_KIND: N.KIND_REFERENCE, N.TAG_PARENT: self.parent_run_id,
                N.TAG_REFERENCE: ref.kind, N.TAG_STUDENT: ref.student,
                N.TAG_REFERENCE_KEY: ref.run_key,
                N.TAG_SWEEP_ID: self._parent_tag(N.TAG_SWEEP_ID)}
        if report is not None:
            tags[N.TAG_REFERENCE_DIR] = report.directory
        if failure is not None:
            tags[N.TAG_FAILURE_REASON] = failure[:4000]
        run_id = str(self.client.create_run(self.experiment_id, run_name=ref.label,
                                            tags=tags).info.run_id)
        self.client.log_batch(run_id, params=[Param(k, v[:6000])
                                              for k, v in ref.params().items()])
        self.client.log_inputs(run_id, [dataset_input(ref.dataset)])
        if report is not None:
            stamp = _now_ms()
            last = max((int(r["epoch"]) for r in report.history), default=0)
            metrics = [Metric(f"{N.PRETRAIN_PREFIX}{k}", float(v), stamp, int(row["epoch"]))
                       for row in report.history for k, v in row.items() if k != "epoch"]
            metrics += [Metric(k, float(v), stamp, last) for k, v in report.metrics.items()]
            metrics.append(Metric(N.TRAIN_TIME, float(report.train_time_s), stamp, last))
            for start in range(0, len(metrics), MAX_BATCH):
                self.client.log_batch(run_id, metrics=metrics[start:start + MAX_BATCH])
        self.client.set_terminated(run_id, status="FAILED" if failure else "FINISHED")
        return run_id


def _numeric(metrics: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k not in exclude and k != "kind" and k not in TUNE_AUTO_KEYS
            and isinstance(v, int | float) and not isinstance(v, bool)}
