"""The sweep driver: stages, Ray Tune trials, MLflow from the driver, resume.

Resume is keyed on content: a trial's id hashes its config, its run in MLflow carries that id,
and its checkpoint lives in ``<output>/trials/<id>/``. Running the same spec again skips
FINISHED trials, continues the others from their last epoch and reuses their MLflow runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from losses import get_objective, make_params
from orchestrator.datasets import DATASETS, check_available
from orchestrator.errors import TrialFailure, UserInputError
from orchestrator.fsutil import write_json, write_yaml
from orchestrator.grid import TrialConfig, varying_axes
from orchestrator.progress import SweepProgress
from orchestrator.spec import SweepSpec
from orchestrator.teachers import TeacherReport, check_teacher_sources, ensure_teacher
from orchestrator.tracking import Tracker, default_tracking_uri, is_local_store
from orchestrator.trial import _pool_of, run_trial

FAILURE_FILE = "failure.json"
PROGRESS_METRIC = "knn/top1_k10"


@dataclass
class SweepOutcome:
    total: int
    skipped: int
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # trial label -> reason
    wall_s: float = 0.0
    tracking_uri: str = ""
    parent_run_id: str = ""
    output_dir: str = ""
    disk_bytes: int = 0
    teachers: list[TeacherReport] = field(default_factory=list)


def preflight(spec: SweepSpec, trials: list[TrialConfig]) -> None:
    """Checks that need the filesystem, done before Ray starts or anything is written."""
    check_available(spec.dataset.name, spec.dataset.root, spec.dataset.download)
    check_teacher_sources(spec.teachers, spec.source_path, DATASETS[spec.dataset.name].channels)
    probe = spec.output_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserInputError(f"output directory {spec.output_dir} is not writable "
                             f"({probe} does not allow writing)")
    manifest = spec.output_dir / "sweep.json"
    if manifest.is_file():
        previous = json.loads(manifest.read_text())
        old = set(previous.get("trial_ids", []))
        removed = old - {t.trial_id for t in trials}
        if removed:
            raise UserInputError(
                f"{spec.output_dir} holds a sweep whose grid had {len(removed)} trial(s) that "
                f"{spec.source_path} no longer has: changing an existing sweep may only add "
                "trials. Use another --output for a different grid.")


def neighbour_pools(trials: list[TrialConfig]) -> dict[str, set[int]]:
    pools: dict[str, set[int]] = {}
    for t in trials:
        values = {k: v for k, v in t.loss.items() if k != "name"}
        req = get_objective(t.loss["name"]).requirements(make_params(t.loss["name"], values))
        entry = pools.setdefault(t.teacher["key"], set())
        if req.neighbour_batches or req.neighbour_graph:
            entry.add(_pool_of(values))
    return pools


def _trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: runs one trial, records why it failed if it does."""
    from ray import tune

    trial = TrialConfig.from_dict(config["trial"])
    failure_path = Path(trial.runtime["trial_dir"]) / FAILURE_FILE
    failure_path.unlink(missing_ok=True)
    last_epoch = 0

    def report(metrics: dict[str, Any]) -> None:
        nonlocal last_epoch
        last_epoch = int(metrics.get("epoch", last_epoch))
        tune.report(metrics)

    try:
        run_trial(trial, report)
    except TrialFailure as exc:
        write_json(failure_path, {"reason": exc.reason, "epoch": exc.epoch})
        raise
    except Exception as exc:
        write_json(failure_path, {"reason": f"{type(exc).__name__}: {exc}",
                                  "epoch": last_epoch + 1})
        raise


def _read_failure(trial: TrialConfig) -> tuple[str, int | None]:
    path = Path(trial.runtime["trial_dir"]) / FAILURE_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        return str(data.get("reason", "unknown")), data.get("epoch")
    return "the trial's process ended without a recorded reason", None


class SweepCallback(tune.Callback):
    """Driver-side bridge from Ray Tune events to MLflow (the single writer) and the display.

    Ray pickles the run config, callbacks included, into its experiment state: the tracker and
    the live display stay in this driver process and are left out of the pickle.
    """

    def __init__(self, tracker: Tracker, by_id: Mapping[str, TrialConfig],
                 teacher_knn: Mapping[str, Mapping[str, float]], progress: SweepProgress,
                 outcome: SweepOutcome) -> None:
        self.tracker = tracker
        self.by_id = by_id
        self.teacher_knn = teacher_knn
        self.progress = progress
        self.outcome = outcome

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def _trial(self, ray_trial: Any) -> TrialConfig:
        return self.by_id[ray_trial.config["trial"]["trial_id"]]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        self.tracker.start_trial(t, self.teacher_knn.get(t.teacher["key"], {}))
        self.progress.update(t.trial_id, status="running", reason="")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        t = self._trial(trial)
        self.progress.update(t.trial_id, status="running", reason="retrying")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        t = self._trial(trial)
        if result.get("kind") == "epoch":
            self.tracker.log_epoch(t.trial_id, result)
            self.progress.update(t.trial_id, epoch=int(result["epoch"]),
                                 loss=result.get("loss/total"))
        elif result.get("kind") == "final":
            final = {k: v for k, v in result.items()
                     if k.startswith(("knn/", "teacher_knn/", "train_")) or k == "epoch"}
            self.tracker.finish_trial(t, final)
            self.outcome.finished.append(t.trial_id)
            self.progress.update(t.trial_id, status="finished",
                                 score=result.get(PROGRESS_METRIC))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        reason, epoch = _read_failure(t)
        self.tracker.fail_trial(t.trial_id, reason, epoch)
        self.outcome.failed[t.label] = reason
        self.progress.update(t.trial_id, status="failed", reason=reason)


def _init_ray(address: str | None) -> bool:
    """Start local Ray (dashboard off, 127.0.0.1) or attach to a cluster; True if started."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")
    # Tune's result analysis looks for the per-trial JSON/CSV loggers disabled above and
    # warns once per trial; MLflow holds the results.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        try:
            ray.init(address=target, logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as exc:
            raise UserInputError(
                f"cannot attach to the Ray cluster at {target}: {exc}. If the cluster uses "
                "token authentication, set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN or "
                "~/.ray/auth_token) before running ukd") from None
    else:
        # address="local": always a fresh local instance, never another sweep's Ray (plain
        # ray.init() would attach to the newest Ray found on this machine).
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=False)
    return True


def disk_usage(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_sweep(spec: SweepSpec, trials: list[TrialConfig], *, tracking_uri: str | None = None,
              address: str | None = None, progress: SweepProgress | None = None
              ) -> SweepOutcome:
    started = time.perf_counter()
    preflight(spec, trials)
    out = spec.output_dir
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(out)
    manifest_path = out / "sweep.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    sweep_id = previous.get("sweep_id") or uuid.uuid4().hex[:12]
    tracker = Tracker(uri, f"ukd/{spec.name}", out / "artifacts" if is_local_store(uri) else None)
    parent = tracker.open_sweep(
        sweep_id, spec.name,
        {"ukd.axes": json.dumps(varying_axes(trials)), "ukd.output_dir": str(out),
         "ukd.spec_path": str(spec.source_path)},
        previous.get("parent_run_id") if previous.get("tracking_uri") == uri else None)
    write_json(manifest_path, {
        "sweep_id": sweep_id, "parent_run_id": parent, "experiment_id": tracker.experiment_id,
        "tracking_uri": uri, "name": spec.name, "spec_path": str(spec.source_path),
        "trial_ids": [t.trial_id for t in trials],
    })
    shutil.copyfile(spec.source_path, out / "spec.yaml")
    write_yaml(out / "trials.yaml", [t.to_dict() for t in trials])
    tracker.log_sweep_artifact(out / "spec.yaml")
    tracker.log_sweep_artifact(out / "trials.yaml")

    finished = tracker.reconcile(trials)
    to_run = [t for t in trials if t.trial_id not in finished]
    outcome = SweepOutcome(total=len(trials), skipped=len(finished), tracking_uri=uri,
                           parent_run_id=parent, output_dir=str(out))
    view = progress or SweepProgress(len(trials), PROGRESS_METRIC)
    view.total, view.skipped = len(trials), len(finished)
    for t in to_run:
        view.add(t.trial_id, f"{t.index:03d} {t.label}", int(t.train["epochs"]))
    if not to_run:
        tracker.close_sweep("FINISHED")
        outcome.wall_s = time.perf_counter() - started
        outcome.disk_bytes = disk_usage(out)
        return outcome

    import ray

    started_ray = False
    status = "FAILED"
    try:
        started_ray = _init_ray(address)
        tracker.client.set_tag(parent, "ukd.ray_address", ray.get_runtime_context().gcs_address)
        teacher_knn = _run_stages(spec, to_run, tracker, outcome, view)
        by_id = {t.trial_id: t for t in to_run}
        trainable = tune.with_resources(_trainable, {"cpu": spec.resources.cpu,
                                                     "gpu": spec.resources.gpu})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.to_dict() for t in to_run])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.resources.max_concurrent or None),
            run_config=tune.RunConfig(
                name=f"{spec.name}-{sweep_id}",
                storage_path=str(out / "ray"),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.resources.retries),
                callbacks=[SweepCallback(tracker, by_id, teacher_knn, view, outcome)],
            ),
        )
        with view:
            tuner.fit()
        status = "FAILED" if outcome.failed else "FINISHED"
    finally:
        tracker.close_sweep(status)
        if started_ray:
            ray.shutdown()
    outcome.wall_s = time.perf_counter() - started
    outcome.disk_bytes = disk_usage(out)
    return outcome


def _run_stages(spec: SweepSpec, trials: list[TrialConfig], tracker: Tracker,
                outcome: SweepOutcome, view: SweepProgress) -> dict[str, dict[str, float]]:
    """One Ray task per distinct teacher: pretrain (cached), kNN reference, neighbour graphs."""
    import ray

    teachers = {t.teacher["key"]: t for t in trials}
    pools = neighbour_pools(trials)
    stage = ray.remote(num_cpus=spec.resources.stage_cpu,
                       num_gpus=spec.resources.gpu)(ensure_teacher)
    view.console.print(f"[bold]stage[/bold]: {len(teachers)} teacher(s) "
                       f"({', '.join(t.teacher['label'] for t in teachers.values())})")
    futures = {key: stage.remote(t.teacher, t.dataset, t.knn, t.runtime["cache_dir"],
                                 t.runtime["device"], tuple(sorted(pools[key])), None,
                                 max(1, math.ceil(spec.resources.stage_cpu)))
               for key, t in teachers.items()}
    knn: dict[str, dict[str, float]] = {}
    for key, future in futures.items():
        report: TeacherReport = ray.get(future)
        outcome.teachers.append(report)
        if report.trained_now:
            tracker.log_teacher(report)
        knn[key] = report.knn
        state = "trained" if report.trained_now else "cached"
        view.console.print(f"  teacher {report.label}: {state}, "
                           f"kNN top-1@10 {report.knn.get('top1_k10', float('nan')):.2f}% "
                           f"({report.train_time_s:.0f}s training)")
    return knn
