"""The sweep driver: stages, Ray Tune trials, MLflow from the driver, resume.

Resume is keyed on content: a trial's id hashes its config, its run in MLflow carries that id,
and its checkpoint lives in ``<output>/trials/<id>/``. Running the same spec again skips
FINISHED trials, continues the others from their last epoch and reuses their MLflow runs.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from ray import tune
from rich.markup import escape

from common import faults
from common import names as N
from common.atomic import remove_stale_temps, write_json, write_yaml
from common.locks import LockBusy, exclusive_lock
from orchestrator.engine.group import make_groups
from orchestrator.engine.member import CHECKPOINT, STUDENT_WEIGHTS
from orchestrator.errors import UserInputError
from orchestrator.progress import SweepProgress
from orchestrator.runtime.callback import SweepCallback
from orchestrator.runtime.preflight import preflight
from orchestrator.runtime.ray_runtime import (
    check_address,
    check_dashboard,
    cluster_session,
    dashboard_url,
    ray_session,
    run_on_each_node,
)
from orchestrator.runtime.stage_tasks import (
    ReferenceTasks,
    cached_or_task,
    failure_text,
    short,
    stage_task,
    stage_threads,
    wait_for,
)
from orchestrator.runtime.storage import check_shared_storage
from orchestrator.runtime.trainable import GROUP_KEY, group_trainable
from orchestrator.spec.config import TeacherReport, TrialConfig, flat_params
from orchestrator.spec.grid import varying_axes
from orchestrator.spec.load import SweepSpec
from orchestrator.stages.teachers import cached_stage, ensure_teacher
from orchestrator.tracking import Tracker, default_tracking_uri, is_local_store, mlflow_log_to

LOCK_FILE = "sweep.lock"


@dataclass
class SweepOutcome:
    total: int
    skipped: int
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # "<id> [<index> <label>]" -> reason
    wall_s: float = 0.0
    tracking_uri: str = ""
    parent_run_id: str = ""
    experiment_id: str = ""
    output_dir: str = ""
    disk_bytes: int = 0
    teachers: list[TeacherReport] = field(default_factory=list)
    interrupted: int = 0  # trials left unfinished by SIGINT / SIGTERM (KILLED, resumable)
    # Seconds per phase of the sweep, in order (setup, ray_start, stages, references, trials,
    # shutdown): where a sweep's time goes that is not training (benchmarks/sweep_overhead.py).
    phase_s: dict[str, float] = field(default_factory=dict)

    def mark(self, phase: str, since: float) -> float:
        """Record ``phase`` as the time from ``since`` to now; returns now."""
        now = time.perf_counter()
        self.phase_s[phase] = self.phase_s.get(phase, 0.0) + now - since
        return now


def graph_sizes(trials: list[TrialConfig]) -> dict[str, set[int]]:
    """Per teacher key, the neighbour-graph sizes its trials' objectives ask for."""
    sizes: dict[str, set[int]] = {}
    for t in trials:
        entry = sizes.setdefault(t.teacher.key, set())
        if t.requirements.graph_size is not None:
            entry.add(t.requirements.graph_size)
    return sizes


def describe(t: TrialConfig, axes: list[str]) -> str:
    """Unique, readable trial name: id, index, label and the axes the label leaves out."""
    flat = flat_params(t)
    extra = [f"{a}={flat[a]}" for a in axes if a in flat and a not in (
        "teacher", "student", "loss.name", "seed") and not a.startswith("loss.")]
    return f"{t.trial_id} [{t.index:03d} {t.label}{' ' + ' '.join(extra) if extra else ''}]"


def write_trials_manifest(path: Path, trials: list[TrialConfig]) -> None:
    """``trials.yaml``: every trial of the sweep as its flat params (what the report reads to
    count cells whose trials never started)."""
    write_yaml(path, [flat_params(t) for t in trials])


def record_sweep(spec: SweepSpec, trials: list[TrialConfig], uri: str) -> tuple[Tracker, str]:
    """Open (or reopen) the sweep's parent run and write what describes the sweep: the
    manifest ``sweep.json``, ``spec.yaml`` and ``trials.yaml``, the last two also as the
    parent run's artifacts."""
    out = spec.output_dir
    manifest_path = out / N.SWEEP_JSON
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    sweep_id = previous.get("sweep_id") or uuid.uuid4().hex[:12]
    tracker = Tracker(uri, f"{N.EXPERIMENT_PREFIX}{spec.name}",
                      out / "artifacts" if is_local_store(uri) else None)
    parent = tracker.open_sweep(
        sweep_id, spec.name,
        {N.TAG_AXES: json.dumps(varying_axes(trials)), N.TAG_OUTPUT_DIR: str(out),
         N.TAG_SPEC_PATH: str(spec.source_path)},
        previous.get("parent_run_id") if previous.get("tracking_uri") == uri else None)
    write_json(manifest_path, {
        "sweep_id": sweep_id, "parent_run_id": parent, "experiment_id": tracker.experiment_id,
        "tracking_uri": uri, "name": spec.name, "spec_path": str(spec.source_path),
        "trial_ids": [t.trial_id for t in trials],
    })
    shutil.copyfile(spec.source_path, out / N.SPEC_ARTIFACT)
    write_trials_manifest(out / N.TRIALS_ARTIFACT, trials)
    tracker.log_sweep_artifact(out / N.SPEC_ARTIFACT)
    tracker.log_sweep_artifact(out / N.TRIALS_ARTIFACT)
    return tracker, sweep_id


def disk_usage(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_sweep(spec: SweepSpec, trials: list[TrialConfig], *, tracking_uri: str | None = None,
              address: str | None = None, progress: SweepProgress | None = None,
              dashboard: bool = False) -> SweepOutcome:
    started = time.perf_counter()
    faults.arm_driver()  # only with UKD_FAULT_AT set (crash tests): before Ray starts
    check_address(address)
    preflight(spec, trials, tracking_uri)
    if dashboard:
        check_dashboard(address)
    out = spec.output_dir
    progress = progress or SweepProgress(len(trials), spec.eval.headline)
    # SIGTERM or a closed terminal (SIGHUP) stops the sweep like Ctrl+C, wherever it is.
    # With a cluster, Ray is connected first: before anything is written, every node must
    # see the output, cache and dataset directories as this driver does.
    with _sigterm_as_sigint(), cluster_session(address) as attached:
        if attached:
            nodes = check_shared_storage(spec, run_on_each_node)
            progress.console.print(f"shared storage: output, cache and dataset directories "
                                   f"checked from {nodes} node(s)", highlight=False)
        out.mkdir(parents=True, exist_ok=True)
        try:
            with exclusive_lock(out / LOCK_FILE):
                return _run_locked(spec, trials, started, tracking_uri, address, progress,
                                   dashboard)
        except LockBusy as exc:
            raise UserInputError(
                f"another ukd sweep (pid {exc.holder or '?'}) is running on {out}; wait for "
                "it to end, or use another --output") from None


# Over 60 lines: the sweep's sequence under one lock and one try/finally, read top to bottom.
def _run_locked(spec: SweepSpec, trials: list[TrialConfig], started: float,
                tracking_uri: str | None, address: str | None,
                progress: SweepProgress | None, dashboard: bool) -> SweepOutcome:
    """The sweep proper, with the output directory locked: no other ukd process writes it,
    so every run of this sweep still RUNNING in MLflow was left by a dead process."""
    with mlflow_log_to(spec.output_dir / N.SWEEP_LOG):
        return _run_logged(spec, trials, started, tracking_uri, address, progress, dashboard)


def _run_logged(spec: SweepSpec, trials: list[TrialConfig], started: float,
                tracking_uri: str | None, address: str | None,
                progress: SweepProgress | None, dashboard: bool) -> SweepOutcome:
    out = spec.output_dir
    uri = tracking_uri or default_tracking_uri(out)
    view = progress or SweepProgress(len(trials), spec.eval.headline)
    outcome = SweepOutcome(total=len(trials), skipped=0, tracking_uri=uri, output_dir=str(out))
    status = "KILLED"  # unless the sweep gets to its end
    with ThreadPoolExecutor(1, "ukd-tracking") as pool, ExitStack() as ray_scope:
        # MLflow's set-up (a new SQLite store creates its tables: one to two seconds) runs in
        # a thread while Ray starts -- when some trial has work left: a finished sweep starts
        # no Ray.
        opening = pool.submit(_open_tracking, spec, trials, uri)
        overlap = outcome.mark("setup", started)
        ray_up, connected = _work_left(trials), False
        try:
            if ray_up:
                connected = ray_scope.enter_context(ray_session(address, dashboard))
            tracker, sweep_id, finished = opening.result()
            mark = outcome.mark("ray_start", overlap)  # MLflow's set-up in its shadow
            outcome.skipped = len(finished)
            outcome.parent_run_id = tracker.parent_run_id or ""
            outcome.experiment_id = tracker.experiment_id
            view.total, view.skipped = len(trials), len(finished)
            to_run = [t for t in trials if t.trial_id not in finished]
            if not to_run:
                status = "FINISHED"
            else:
                if not ray_up:  # every trial had its weights, and one a run not FINISHED
                    ray_up = True
                    connected = ray_scope.enter_context(ray_session(address, dashboard))
                    mark = outcome.mark("ray_start", mark)
                status, mark = _run_trials(spec, trials, to_run, tracker, sweep_id, outcome,
                                           view, dashboard and connected, mark)
        finally:
            if opening.exception() is None:
                # Runs this process opened and did not end (an interrupted fit) are not left
                # RUNNING.
                opened = opening.result()[0]
                opened.kill_unfinished()
                opened.close_sweep(status)
    if ray_up:
        outcome.mark("shutdown", mark)
    outcome.wall_s = time.perf_counter() - started
    outcome.disk_bytes = disk_usage(out)
    return outcome


def _work_left(trials: list[TrialConfig]) -> bool:
    """Whether some trial has not saved its weights yet (so Ray will be needed)."""
    return any(not (Path(t.runtime.trial_dir) / STUDENT_WEIGHTS).is_file() for t in trials)


def _open_tracking(spec: SweepSpec, trials: list[TrialConfig], uri: str
                   ) -> tuple[Tracker, str, set[str]]:
    """The sweep's MLflow side before any trial: its parent run and manifest
    (:func:`record_sweep`), and the trials already FINISHED there (their stale checkpoints
    and half-written files cleared)."""
    tracker, sweep_id = record_sweep(spec, trials, uri)
    finished = tracker.reconcile(trials)
    for t in trials:
        trial_dir = Path(t.runtime.trial_dir)
        remove_stale_temps(trial_dir)  # half-written files of a killed process
        if t.trial_id in finished and (trial_dir / STUDENT_WEIGHTS).is_file():
            (trial_dir / CHECKPOINT).unlink(missing_ok=True)  # killed before its clean-up
    return tracker, sweep_id, set(finished)


def _run_trials(spec: SweepSpec, trials: list[TrialConfig], to_run: list[TrialConfig],
                tracker: Tracker, sweep_id: str, outcome: SweepOutcome, view: SweepProgress,
                show_dashboard: bool, mark: float) -> tuple[str, float]:
    """With Ray up: the stages, the references and the trials; the sweep's final status
    and the time they ended."""
    import ray

    parent = tracker.parent_run_id
    assert parent is not None
    axes = varying_axes(trials)
    names = {t.trial_id: describe(t, axes) for t in trials}
    for t in to_run:
        view.add(t.trial_id, f"{t.index:03d} {t.label}", t.train.epochs)
    tracker.client.set_tag(parent, N.TAG_RAY_ADDRESS, ray.get_runtime_context().gcs_address)
    if show_dashboard:
        view.console.print(f"Ray dashboard: {dashboard_url()}", highlight=False)
    reports, teacher_failed = _run_stages(spec, to_run, tracker, outcome, view)
    mark = outcome.mark("stages", mark)
    references = ReferenceTasks(spec, trials, reports, tracker, view)
    references.poll()  # the cached ones: read in this process, already there
    mark = outcome.mark("references", mark)  # submitted: they run beside the trials
    for t in [t for t in to_run if t.teacher.key in teacher_failed]:
        reason = teacher_failed[t.teacher.key]
        tracker.start_trial(t)
        tracker.fail_trial(t.trial_id, reason, 0)
        outcome.failed[names[t.trial_id]] = short(reason)
        view.update(t.trial_id, status="failed", reason=short(reason, 120))
    runnable = [t.with_report(references.reports[t.teacher.key]) for t in to_run
                if t.teacher.key not in teacher_failed]
    callback = SweepCallback(tracker, {t.trial_id: t for t in runnable}, view, outcome, names,
                             spec.eval.headline, references)
    if runnable:
        _fit(spec, sweep_id, spec.output_dir, runnable, callback, view)
    outcome.interrupted = sum(1 for t in to_run if t.trial_id not in outcome.finished
                              and names[t.trial_id] not in outcome.failed)
    if not outcome.interrupted:  # else Ray's shutdown ends them; nothing of theirs is logged
        for key in references.wait():
            callback.teacher_arrived(key)
    mark = outcome.mark("trials", mark)
    status = "KILLED" if outcome.interrupted else "FAILED" if outcome.failed else "FINISHED"
    return status, mark


def _fit(spec: SweepSpec, sweep_id: str, out: Path, runnable: list[TrialConfig],
         callback: SweepCallback, view: SweepProgress) -> None:
    groups = make_groups(runnable, spec.resources.fuse, spec.resources.max_group)
    trainable = tune.with_resources(group_trainable,
                                    spec.resources.ray_resources(spec.resources.cpu))
    tuner = tune.Tuner(
        trainable,
        param_space={GROUP_KEY: tune.grid_search([[t.to_dict() for t in g] for g in groups])},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.max_concurrent or None),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{sweep_id}",
            storage_path=str(out / "ray"),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.resources.retries),
            callbacks=[callback],
        ),
    )
    with view, _sigterm_as_sigint():
        tuner.fit()  # SIGINT / SIGTERM: Tune stops the trials and returns


# Stop the sweep like Ctrl+C: `kill`, a scheduler's preemption (SIGTERM), and a closed
# terminal or a killed tmux / ssh session (SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the sweep like Ctrl+C (Tune ends the trials, their runs are
    marked KILLED, Ray shuts down) instead of ending the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _stop_like_ctrl_c) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """What Ctrl+C does now: the SIGINT handler in place (Tune's during the trials: it stops
    them), called here rather than by sending SIGINT -- a second signal that could stay
    pending (and one that a sweep started in the background, SIGINT ignored, never gets);
    without a Python handler, KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def _run_stages(spec: SweepSpec, trials: list[TrialConfig], tracker: Tracker,
                outcome: SweepOutcome, view: SweepProgress
                ) -> tuple[dict[str, TeacherReport], dict[str, str]]:
    """One Ray task per distinct teacher: pretrain (cached), kNN reference, neighbour graphs.

    Returns each teacher's report, and the reason for each teacher whose stage failed.
    """

    teachers = {t.teacher.key: t for t in trials}
    sizes = graph_sizes(trials)
    stage = stage_task(spec, ensure_teacher)
    view.console.print(f"[bold]stage[/bold]: {len(teachers)} teacher(s) "
                       f"({', '.join(t.teacher.label for t in teachers.values())})")
    futures = {key: cached_or_task(
        cached_stage(t.teacher, t.eval.knn, t.runtime.cache_dir, tuple(sorted(sizes[key]))),
        stage, t.teacher, t.dataset, t.eval.knn, t.runtime.cache_dir, t.runtime.device,
        tuple(sorted(sizes[key])), stage_threads(spec)) for key, t in teachers.items()}
    reports: dict[str, TeacherReport] = {}
    failed: dict[str, str] = {}
    for key, future in futures.items():
        try:
            report: TeacherReport = wait_for(future)
        except Exception as exc:  # its trials fail with this reason, the others go on
            failed[key] = f"teacher stage failed: {failure_text(exc)}"[:2000]
            view.console.print(f"  teacher {teachers[key].teacher.label}: "
                               f"[red]failed[/red] ({escape(short(failed[key]))})",
                               highlight=False, soft_wrap=True)
            continue
        outcome.teachers.append(report)
        if report.trained_now:
            tracker.log_teacher(teachers[key].teacher, report)
        reports[key] = report
        view.console.print(teacher_line(report, spec.eval.headline), highlight=False)
    return reports, failed


def teacher_line(report: TeacherReport, headline: str) -> str:
    """The stage's line for one teacher, with its value of the display's metric."""
    state = "trained" if report.trained_now else "cached"
    value = report.knn.get(headline.removeprefix(N.KNN_PREFIX), float("nan"))
    return (f"  teacher {report.label}: {state}, {headline} {value:.2f}% "
            f"({report.train_time_s:.0f}s training)")
