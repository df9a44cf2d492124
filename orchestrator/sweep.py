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
import signal
import ssl
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from rich.markup import escape

from losses import get_objective, make_params
from orchestrator.datasets import DATASETS, check_available
from orchestrator.errors import TrialFailure, UserInputError
from orchestrator.fsutil import LockBusy, exclusive_lock, remove_stale_temps, write_json, write_yaml
from orchestrator.grid import TrialConfig, flat_params, varying_axes
from orchestrator.progress import SweepProgress
from orchestrator.spec import SweepSpec
from orchestrator.teachers import TeacherReport, check_teacher_sources, ensure_teacher
from orchestrator.tracking import Tracker, default_tracking_uri, is_local_store
from orchestrator.trial import CHECKPOINT, STUDENT_WEIGHTS, _pool_of, run_trial

FAILURE_FILE = "failure.json"
LOCK_FILE = "sweep.lock"
PROGRESS_METRIC = "knn/top1_k10"


@dataclass
class SweepOutcome:
    total: int
    skipped: int
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # "<id> [<index> <label>]" -> reason
    wall_s: float = 0.0
    tracking_uri: str = ""
    parent_run_id: str = ""
    output_dir: str = ""
    disk_bytes: int = 0
    teachers: list[TeacherReport] = field(default_factory=list)
    interrupted: int = 0  # trials left unfinished by SIGINT / SIGTERM (KILLED, resumable)


_VERIFIED_DATA: set[tuple[str, str | None]] = set()  # datasets read once in this process


def preflight(spec: SweepSpec, trials: list[TrialConfig],
              tracking_uri: str | None = None) -> None:
    """Checks that need the filesystem, done before Ray starts or anything is written.

    Every failure is a UserInputError naming the spec file (or option), the YAML path and what
    is allowed.
    """
    src = spec.source_path
    data = (spec.dataset.name, spec.dataset.root)
    try:
        check_available(spec.dataset.name, spec.dataset.root, spec.dataset.download)
        if DATASETS[spec.dataset.name].needs_root and not spec.dataset.download \
                and data not in _VERIFIED_DATA:
            # The files are there and sound (not kept: the trials load their own copy).
            DATASETS[spec.dataset.name].loader(spec.dataset.root, False)
            _VERIFIED_DATA.add(data)
    except UserInputError as exc:
        raise UserInputError(f"{src} at `dataset.root`: {exc}") from None
    check_teacher_sources(spec.teachers, src, DATASETS[spec.dataset.name].channels)
    _check_writable(spec.output_dir, _output_origin(spec), "output directory")
    _check_writable(spec.cache_dir, f"{src} at `cache_dir`", "cache directory")
    if tracking_uri:
        _check_tracking_uri(tracking_uri)
    manifest = spec.output_dir / "sweep.json"
    if not manifest.exists():
        return
    try:
        previous = json.loads(manifest.read_text())
        old = set(previous.get("trial_ids", []))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise UserInputError(f"{manifest} is not a readable ukd sweep manifest ({exc}); "
                             "use another --output") from None
    if previous.get("name", spec.name) != spec.name:
        raise UserInputError(
            f"{src} at `name`: {spec.output_dir} holds the sweep {previous.get('name')!r}, not "
            f"{spec.name!r}; keep the name to continue that sweep, or use another --output")
    removed = sorted(old - {t.trial_id for t in trials})
    if removed:
        shown = ", ".join(removed[:5]) + (", ..." if len(removed) > 5 else "")
        raise UserInputError(
            f"{src} at `grid`: {spec.output_dir} holds a sweep with {len(removed)} trial(s) "
            f"this grid no longer has ({shown}); an existing sweep's grid may only grow "
            "(add values or entries, keep the others unchanged); use another --output for a "
            "different grid")


def _output_origin(spec: SweepSpec) -> str:
    """Where the output directory came from: the spec's key, its default, or --output."""
    given = spec.raw.get("output_dir") if isinstance(spec.raw, Mapping) else None
    from_spec = Path(str(given if given is not None else f"runs/{spec.name}"))
    if from_spec.expanduser().resolve() != spec.output_dir:
        return "--output"
    return f"{spec.source_path} at `output_dir`" + (" (default runs/<name>)" if given is None
                                                    else "")


TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "", "postgresql", "mysql", "mssql",
                    "databricks")


def _check_tracking_uri(uri: str) -> None:
    """An MLflow server must answer (MLflow itself would retry for minutes); a SQLite file
    must be creatable. Nothing is written."""
    from urllib.error import HTTPError, URLError
    from urllib.parse import urlparse
    from urllib.request import urlopen

    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in TRACKING_SCHEMES:
        raise UserInputError(f"--tracking-uri {uri}: unsupported scheme {scheme!r}; allowed: "
                             "http(s)://host:port of an MLflow server, sqlite:///ABS/PATH.db, "
                             "file:, postgresql:, mysql:, mssql:, databricks")
    if scheme in ("http", "https"):
        try:
            with urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                pass
        except HTTPError:
            pass  # something answers; MLflow reports a wrong endpoint itself
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):
                return  # it answers; TLS settings are MLflow's (MLFLOW_TRACKING_INSECURE_TLS)
            raise UserInputError(
                f"--tracking-uri {uri}: no MLflow server answers there ({reason}); start one "
                "(mlflow server --host 127.0.0.1 --port 5000) or leave --tracking-uri out to "
                "log to SQLite in the output directory") from None
    elif scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise UserInputError(f"--tracking-uri {uri}: allowed: sqlite:///PATH.db (three "
                                 "slashes, then the path; sqlite:////abs/path.db)")
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        _check_writable(db.parent, f"--tracking-uri {uri}", "database directory")


def _check_writable(target: Path, where: str, what: str) -> None:
    """``target`` can be created (or exists) and written, checked without leaving anything."""
    probe = target
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = f"{probe} is not a directory"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".ukd-probe-", dir=probe))
        except OSError as exc:
            problem = f"cannot create anything in {probe} ({exc.strerror or exc})"
    if problem:
        raise UserInputError(f"{where}: the {what} {target} is not writable: {problem}; "
                             "allowed: a directory this user can create and write")


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
    except Exception as exc:
        if isinstance(exc, TrialFailure):
            reason, epoch = exc.reason, exc.epoch
        else:
            reason, epoch = f"{type(exc).__name__}: {exc}", last_epoch + 1
        write_json(failure_path, {"reason": reason, "epoch": epoch,
                                  "traceback": traceback.format_exc()})
        # A plain RuntimeError: Ray copies and pickles the error, which TrialFailure's
        # constructor does not allow; the reason is in failure.json.
        raise RuntimeError(f"trial {trial.trial_id} failed at epoch {epoch}: {reason}") from None


def _read_failure(trial: TrialConfig, ray_trial: Any = None) -> tuple[str, int | None]:
    path = Path(trial.runtime["trial_dir"]) / FAILURE_FILE
    try:
        data = json.loads(path.read_text())
        return str(data.get("reason", "unknown")), data.get("epoch")
    except (OSError, ValueError):
        pass
    # No reason written: the trial's process died (killed, out of memory, crashed).
    text = ""
    try:
        text = str(ray_trial.get_error() or "") if ray_trial is not None else ""
    except Exception:  # Tune's error file is best effort
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = f": {lines[-1][:300]}" if lines else ""
    return f"the trial's process ended without a recorded reason{detail}", None


def short(reason: str, limit: int = 300) -> str:
    """A failure reason on one line, for the terminal (MLflow and failure.json keep it all)."""
    text = " ".join(reason.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(t: TrialConfig, axes: list[str]) -> str:
    """Unique, readable trial name: id, index, label and the axes the label leaves out."""
    flat = flat_params(t)
    extra = [f"{a}={flat[a]}" for a in axes if a in flat and a not in (
        "teacher", "student", "loss.name", "seed") and not a.startswith("loss.")]
    return f"{t.trial_id} [{t.index:03d} {t.label}{' ' + ' '.join(extra) if extra else ''}]"


class SweepCallback(tune.Callback):
    """Driver-side bridge from Ray Tune events to MLflow (the single writer) and the display.

    Ray pickles the run config, callbacks included, into its experiment state: the tracker and
    the live display stay in this driver process and are left out of the pickle.
    """

    def __init__(self, tracker: Tracker, by_id: Mapping[str, TrialConfig],
                 teacher_knn: Mapping[str, Mapping[str, float]], progress: SweepProgress,
                 outcome: SweepOutcome, names: Mapping[str, str] | None = None) -> None:
        self.tracker = tracker
        self.by_id = by_id
        self.teacher_knn = teacher_knn
        self.progress = progress
        self.outcome = outcome
        self.names = names or {}
        self.attempts: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def _trial(self, ray_trial: Any) -> TrialConfig:
        return self.by_id[ray_trial.config["trial"]["trial_id"]]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        self.attempts[t.trial_id] = self.attempts.get(t.trial_id, 0) + 1
        self.tracker.start_trial(t, self.teacher_knn.get(t.teacher["key"], {}))
        self.progress.update(t.trial_id, status="running", reason="")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        t = self._trial(trial)
        reason, _ = _read_failure(t, trial)
        self.progress.update(t.trial_id, status="running",
                             reason=f"retrying after: {short(reason, 120)}")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        t = self._trial(trial)
        kind = result.get("kind")
        if "resumed_from_epoch" in result:
            # Continued from its checkpoint (first report after the resume): the epoch it
            # held, and that epoch's metrics in case the dead process never got them to MLflow
            # (log_epoch skips epochs already there).
            epoch = int(result["resumed_from_epoch"])
            self.tracker.set_trial_tags(t.trial_id, {"ukd.resumed_from_epoch": str(epoch)})
            replay = result.get("resumed_metrics") or {}
            if epoch > 0 and any(k.startswith("loss/") for k in replay):
                self.tracker.log_epoch(t.trial_id, {**replay, "epoch": epoch})
            result = {k: v for k, v in result.items()
                      if k not in ("resumed_from_epoch", "resumed_metrics")}
        if kind == "epoch":
            self.tracker.log_epoch(t.trial_id, result)
            self.progress.update(t.trial_id, epoch=int(result["epoch"]),
                                 loss=result.get("loss/total"))
        elif kind == "final":
            final = {k: v for k, v in result.items()
                     if k.startswith(("knn/", "teacher_knn/", "train_")) or k == "epoch"}
            self.tracker.finish_trial(t, final)
            # FINISHED is final (never resumed): the weights are the artifact, the optimiser
            # checkpoint only served resuming.
            (Path(t.runtime["trial_dir"]) / CHECKPOINT).unlink(missing_ok=True)
            self.outcome.finished.append(t.trial_id)
            self.progress.update(t.trial_id, status="finished", reason="",
                                 score=result.get(PROGRESS_METRIC))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        reason, epoch = _read_failure(t, trial)
        failure = Path(t.runtime["trial_dir"]) / FAILURE_FILE
        self.tracker.fail_trial(t.trial_id, reason, epoch,
                                attempts=self.attempts.get(t.trial_id, 1),
                                artifact=failure if failure.is_file() else None)
        self.outcome.failed[self.names.get(t.trial_id, t.label)] = short(reason)
        self.progress.update(t.trial_id, status="failed", reason=short(reason, 120))


LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray node on 127.0.0.1 only
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def check_dashboard(address: str | None) -> None:
    """``--dashboard`` can be served: a local Ray, and Ray's dashboard packages installed."""
    if address or os.environ.get("RAY_ADDRESS"):
        raise UserInputError("--dashboard starts the dashboard of the local Ray only; a "
                             "cluster (--address / RAY_ADDRESS) serves its own")
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        raise UserInputError(f"--dashboard: the Ray dashboard needs ray[default] ({missing}); "
                             "allowed: pip install 'ray[default]', or run without --dashboard")


def _init_ray(address: str | None, dashboard: bool = False) -> bool:
    """Start a local Ray of this process or attach to a cluster; True if started here.

    The local Ray's servers (GCS, raylet, the dashboard when asked for) listen on 127.0.0.1
    only, unless the user sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1. Its processes share the
    driver's fate: when the driver dies, even by SIGKILL, its GCS and raylet die with it and
    the workers and agents exit on their own shortly after (tests/orchestrator/test_resume.py).
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")
    # Tune's result analysis looks for the per-trial JSON/CSV loggers disabled above and
    # warns once per trial; MLflow holds the results.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # On SIGINT/SIGTERM Tune suggests Tuner.restore(...); continuing is `ukd sweep` again.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
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
        from ray._private import ray_constants

        # Ray binds its gRPC servers to every interface unless the node's address is
        # 127.0.0.1, which it picks only while this setting (read at import) is off; the
        # started processes are given the address, so the setting is restored afterwards.
        before = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = os.environ.get(LOCAL_ONLY_ENV, "0").lower() in (
            "1", "true")
        try:
            ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                     logging_level=logging.WARNING, log_to_driver=False)
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = before
    return True


def disk_usage(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_sweep(spec: SweepSpec, trials: list[TrialConfig], *, tracking_uri: str | None = None,
              address: str | None = None, progress: SweepProgress | None = None,
              dashboard: bool = False) -> SweepOutcome:
    started = time.perf_counter()
    preflight(spec, trials, tracking_uri)
    if dashboard:
        check_dashboard(address)
    out = spec.output_dir
    out.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(out / LOCK_FILE):
            return _run_locked(spec, trials, started, tracking_uri, address, progress,
                               dashboard)
    except LockBusy as exc:
        raise UserInputError(
            f"another ukd sweep (pid {exc.holder or '?'}) is running on {out}; wait for it to "
            "end, or use another --output") from None


def _run_locked(spec: SweepSpec, trials: list[TrialConfig], started: float,
                tracking_uri: str | None, address: str | None,
                progress: SweepProgress | None, dashboard: bool) -> SweepOutcome:
    """The sweep proper, with the output directory locked: no other ukd process writes it,
    so every run of this sweep still RUNNING in MLflow was left by a dead process."""
    out = spec.output_dir
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
    for t in trials:
        trial_dir = Path(t.runtime["trial_dir"])
        remove_stale_temps(trial_dir)  # half-written files of a killed process
        if t.trial_id in finished and (trial_dir / STUDENT_WEIGHTS).is_file():
            (trial_dir / CHECKPOINT).unlink(missing_ok=True)  # killed before its clean-up
    to_run = [t for t in trials if t.trial_id not in finished]
    outcome = SweepOutcome(total=len(trials), skipped=len(finished), tracking_uri=uri,
                           parent_run_id=parent, output_dir=str(out))
    axes = varying_axes(trials)
    names = {t.trial_id: describe(t, axes) for t in trials}
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

    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # failure.json has the trace
    started_ray = False
    status = "KILLED"  # unless the sweep gets to its end
    # A local ray.init() turns on token auth for the rest of this process (RAY_AUTH_MODE);
    # put it back after the shutdown, or a later sweep of this process could not attach to a
    # cluster that runs without tokens.
    auth_mode = os.environ.get(AUTH_MODE_ENV)
    try:
        started_ray = _init_ray(address, dashboard)
        tracker.client.set_tag(parent, "ukd.ray_address", ray.get_runtime_context().gcs_address)
        if dashboard and started_ray:
            from ray._private.worker import get_dashboard_url

            view.console.print(f"Ray dashboard: http://{get_dashboard_url()}", highlight=False)
        teacher_knn, teacher_failed = _run_stages(spec, to_run, tracker, outcome, view)
        for t in [t for t in to_run if t.teacher["key"] in teacher_failed]:
            reason = teacher_failed[t.teacher["key"]]
            tracker.start_trial(t, {})
            tracker.fail_trial(t.trial_id, reason, 0)
            outcome.failed[names[t.trial_id]] = short(reason)
            view.update(t.trial_id, status="failed", reason=short(reason, 120))
        runnable = [t for t in to_run if t.teacher["key"] not in teacher_failed]
        by_id = {t.trial_id: t for t in runnable}
        trainable = tune.with_resources(_trainable, {"cpu": spec.resources.cpu,
                                                     "gpu": spec.resources.gpu})
        if runnable:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search([t.to_dict() for t in runnable])},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.resources.max_concurrent or None),
                run_config=tune.RunConfig(
                    name=f"{spec.name}-{sweep_id}",
                    storage_path=str(out / "ray"),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=spec.resources.retries),
                    callbacks=[SweepCallback(tracker, by_id, teacher_knn, view, outcome,
                                             names)],
                ),
            )
            with view, _sigterm_as_sigint():
                tuner.fit()  # SIGINT / SIGTERM: Tune stops the trials and returns
        outcome.interrupted = sum(1 for t in runnable if t.trial_id not in outcome.finished
                                  and names[t.trial_id] not in outcome.failed)
        status = ("KILLED" if outcome.interrupted else "FAILED" if outcome.failed
                  else "FINISHED")
    finally:
        # Runs this process opened and did not end (an interrupted fit) are not left RUNNING.
        tracker.kill_unfinished()
        tracker.close_sweep(status)
        if started_ray:
            ray.shutdown()
            if auth_mode is None:
                os.environ.pop(AUTH_MODE_ENV, None)
            else:
                os.environ[AUTH_MODE_ENV] = auth_mode
    outcome.wall_s = time.perf_counter() - started
    outcome.disk_bytes = disk_usage(out)
    return outcome


@contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM stops the sweep like Ctrl+C (Tune ends the trials, their runs are marked
    KILLED, Ray shuts down) instead of ending the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM,
                             lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_stages(spec: SweepSpec, trials: list[TrialConfig], tracker: Tracker,
                outcome: SweepOutcome, view: SweepProgress
                ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """One Ray task per distinct teacher: pretrain (cached), kNN reference, neighbour graphs.

    Returns each teacher's kNN reference, and the reason for each teacher whose stage failed.
    """
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
    failed: dict[str, str] = {}
    for key, future in futures.items():
        try:
            report: TeacherReport = ray.get(future)
        except Exception as exc:  # its trials fail with this reason, the others go on
            cause = getattr(exc, "cause", None) or exc
            failed[key] = f"teacher stage failed: {type(cause).__name__}: {cause}"[:2000]
            view.console.print(f"  teacher {teachers[key].teacher['label']}: "
                               f"[red]failed[/red] ({escape(short(failed[key]))})",
                               highlight=False, soft_wrap=True)
            continue
        outcome.teachers.append(report)
        if report.trained_now:
            tracker.log_teacher(report)
        knn[key] = report.knn
        state = "trained" if report.trained_now else "cached"
        view.console.print(f"  teacher {report.label}: {state}, "
                           f"kNN top-1@10 {report.knn.get('top1_k10', float('nan')):.2f}% "
                           f"({report.train_time_s:.0f}s training)")
    return knn, failed
