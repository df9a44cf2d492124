"""Hand-made sweeps in a real SQLite MLflow store, written per docs/CONTRACTS.md."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

EPOCHS = 3


@dataclass
class Trial:
    teacher: str
    student: str
    objective: str
    seed: int
    status: str = "FINISHED"
    """FINISHED / FAILED / KILLED / RUNNING, or ABSENT: listed in trials.yaml, never run."""
    top1: float | None = None
    """``knn/top1_k10`` (None: the trial did not log it)."""
    loss_params: dict[str, object] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)
    """Other trial params (batch_size, lr, ...) overriding the defaults."""
    teacher_top1: float | None = 75.0
    failure_reason: str | None = None
    failure_epoch: int | None = None

    def config(self) -> dict[str, object]:
        config: dict[str, object] = {
            "teacher": self.teacher,
            "teacher.arch": "resnet50",
            "student": self.student,
            "loss.name": self.objective,
            "batch_size": 256,
            "lr": 0.001,
            "epochs": EPOCHS,
            "seed": self.seed,
            "dataset.name": "cifar10",
            "knn.k": "[10, 20, 200]",
            "knn.temperature": 0.07,
        }
        config.update({f"loss.{k}": v for k, v in self.loss_params.items()})
        config.update(self.params)
        return config


@dataclass
class Sweep:
    name: str
    experiment_id: str
    parent_run_id: str
    run_ids: list[str]
    directory: Path


def new_store(root: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def make_sweep(
    client: MlflowClient,
    root: Path,
    name: str,
    trials: list[Trial],
    axes: list[str],
    *,
    trials_yaml: bool = True,
    spec_text: str | None = "name: demo\n",
    directory: Path | None = None,
    tracking_uri_in_json: str | None = None,
) -> Sweep:
    """Create experiment ``ukd/<name>``, a parent sweep run and one child run per trial.

    Runs are created in order, one millisecond apart, so "newest" is well defined. When
    ``directory`` is given, a ``sweep.json`` is written there.
    """
    experiment_id = client.create_experiment(
        f"ukd/{name}", artifact_location=(root / "artifacts" / name).as_uri()
    )
    sweep_id = f"sweep-{name}"
    out_dir = directory or (root / name)
    parent = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            "ukd.kind": "sweep",
            "ukd.sweep_id": sweep_id,
            "ukd.axes": json.dumps(axes),
            "ukd.output_dir": str(out_dir),
        },
    )
    parent_id = parent.info.run_id
    if spec_text is not None:
        client.log_text(parent_id, spec_text, "spec.yaml")
    if trials_yaml:
        expected = [{"trial_id": f"t{i:03d}", **t.config()} for i, t in enumerate(trials)]
        client.log_text(parent_id, yaml.safe_dump(expected, sort_keys=False), "trials.yaml")

    run_ids = []
    for index, trial in enumerate(trials):
        if trial.status == "ABSENT":
            continue
        run_ids.append(_log_trial(client, experiment_id, parent_id, sweep_id, index, trial))
    client.set_terminated(parent_id, "FINISHED")

    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        info: dict[str, object] = {
            "sweep_id": sweep_id,
            "parent_run_id": parent_id,
            "experiment_id": experiment_id,
            "name": name,
        }
        if tracking_uri_in_json is not None:
            info["tracking_uri"] = tracking_uri_in_json
        (directory / "sweep.json").write_text(json.dumps(info), encoding="utf-8")
    return Sweep(name, experiment_id, parent_id, run_ids, out_dir)


def _log_trial(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    sweep_id: str,
    index: int,
    trial: Trial,
) -> str:
    time.sleep(0.002)
    tags = {
        "mlflow.parentRunId": parent_id,
        "ukd.kind": "trial",
        "ukd.sweep_id": sweep_id,
        "ukd.trial_id": f"t{index:03d}",
        "ukd.teacher": trial.teacher,
        "ukd.student": trial.student,
        "ukd.objective": trial.objective,
    }
    if trial.failure_reason is not None:
        tags["ukd.failure_reason"] = trial.failure_reason
        tags["ukd.failure_epoch"] = str(trial.failure_epoch or 1)
    run = client.create_run(experiment_id, tags=tags)
    run_id: str = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric("loss/total", 5.0 - epoch, now, epoch) for epoch in range(1, EPOCHS + 1)]
    if trial.top1 is not None:
        # An early value at step 1 that must not be reported: the final one is at the last step.
        metrics.append(Metric("knn/top1_k10", trial.top1 - 30.0, now, 1))
        metrics.append(Metric("knn/top1_k10", trial.top1, now + 1, EPOCHS))
        metrics.append(Metric("knn/top5_k20", min(100.0, trial.top1 + 20.0), now + 1, EPOCHS))
        metrics.append(Metric("train_time_s", 12.5, now + 1, EPOCHS))
    if trial.teacher_top1 is not None:
        metrics.append(Metric("teacher_knn/top1_k10", trial.teacher_top1, now, EPOCHS))
        metrics.append(Metric("teacher_knn/top5_k20", trial.teacher_top1 + 15.0, now, EPOCHS))
    params = [Param(k, str(v)) for k, v in trial.config().items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    if trial.status != "RUNNING":
        client.set_terminated(run_id, trial.status)
    return run_id


# --------------------------------------------------------------------------- scenarios

TEACHER = "dino_r50"
SPEC = "name: main\nnote: <script>alert('x')</script> & co\nloss: {name: coss}\n"


@dataclass
class Store:
    root: Path
    uri: str
    main: Sweep
    multi: Sweep
    noyaml: Sweep
    empty: Sweep
    no_parent_experiment: str


def _coss(student: str, lam: float, seed: int, top1: float | None, **kw: Any) -> Trial:
    return Trial(TEACHER, student, "coss", seed, top1=top1, loss_params={"lambda": lam}, **kw)


def main_trials() -> list[Trial]:
    """Two pairs x {coss(lambda=0.5), coss(lambda=1.0), kd} x seeds {0, 1, 2}.

    resnet18:     coss 0.5 -> 60, 62, 64; coss 1.0 -> 61, FAILED, KILLED; kd -> 55, 56, absent
    mobilenet_v3: coss 0.5 -> (FAILED then retried) 50, 51, 52; coss 1.0 -> 53, 55, 57;
                  kd -> 40, 41, 42
    """
    r18, mob = "resnet18", "mobilenet_v3"
    kd: dict[str, object] = {"temperature": 4.0}
    return [
        _coss(r18, 0.5, 0, 60.0),
        _coss(r18, 0.5, 1, 62.0),
        _coss(r18, 0.5, 2, 64.0),
        _coss(r18, 1.0, 0, 61.0),
        _coss(
            r18, 1.0, 1, None, status="FAILED", failure_reason="CUDA out of memory", failure_epoch=2
        ),
        _coss(r18, 1.0, 2, None, status="KILLED"),
        Trial(TEACHER, r18, "kd", 0, top1=55.0, loss_params=kd),
        Trial(TEACHER, r18, "kd", 1, top1=56.0, loss_params=kd),
        Trial(TEACHER, r18, "kd", 2, status="ABSENT", loss_params=kd),
        _coss(mob, 0.5, 0, None, status="FAILED", failure_reason="NaN loss"),
        _coss(mob, 0.5, 0, 50.0),
        _coss(mob, 0.5, 1, 51.0),
        _coss(mob, 0.5, 2, 52.0),
        _coss(mob, 1.0, 0, 53.0),
        _coss(mob, 1.0, 1, 55.0),
        _coss(mob, 1.0, 2, 57.0),
        Trial(TEACHER, mob, "kd", 0, top1=40.0, loss_params=kd),
        Trial(TEACHER, mob, "kd", 1, top1=41.0, loss_params=kd),
        Trial(TEACHER, mob, "kd", 2, top1=42.0, loss_params=kd),
    ]


def multi_value(lam: float, batch_size: int, seed: int) -> float:
    return 50.0 + 10.0 * lam + batch_size / 64.0 + seed


def multi_trials() -> list[Trial]:
    """coss: lambda {0.5, 1} x batch_size {256, 64, 128} x seeds {0, 1}; one pair."""
    return [
        Trial(
            TEACHER,
            "resnet18",
            "coss",
            seed,
            top1=multi_value(lam, bs, seed),
            loss_params={"lambda": lam},
            params={"batch_size": bs},
        )
        for lam in (1.0, 0.5)
        for bs in (256, 64, 128)
        for seed in (0, 1)
    ]


def noyaml_trials() -> list[Trial]:
    """No trials.yaml: expected seeds are the seeds seen ({0, 1})."""
    return [
        Trial("supervised_r50", "resnet18", "coss", 0, top1=70.0, teacher_top1=None),
        Trial("supervised_r50", "resnet18", "coss", 1, top1=72.0, teacher_top1=None),
        Trial("supervised_r50", "resnet18", "kd", 0, top1=65.0, teacher_top1=None),
        Trial("supervised_r50", "resnet18", "rkd", 0, top1=66.0, teacher_top1=None),
        Trial("supervised_r50", "resnet18", "rkd", 1, status="RUNNING", teacher_top1=None),
    ]


def build_store(root: Path) -> Store:
    """The test store: sweeps main, multi, noyaml, empty and an experiment without sweep."""
    uri, client = new_store(root)
    # The store's own directory is the output directory of "main" (sweep.json without a
    # tracking_uri: the default sqlite:///<dir>/mlflow.db applies).
    main = make_sweep(
        client,
        root,
        "main",
        main_trials(),
        ["student", "loss.name", "loss.lambda", "seed"],
        spec_text=SPEC,
        directory=root,
    )
    multi = make_sweep(
        client,
        root,
        "multi",
        multi_trials(),
        ["loss.lambda", "batch_size", "seed"],
        directory=root / "multi-out",
        tracking_uri_in_json=uri,
    )
    noyaml = make_sweep(
        client,
        root,
        "noyaml",
        noyaml_trials(),
        ["loss.name", "seed"],
        trials_yaml=False,
        spec_text=None,
        directory=root / "noyaml-out",
        tracking_uri_in_json=uri,
    )
    empty = make_sweep(
        client, root, "empty", [], ["seed"], directory=root / "empty-out", tracking_uri_in_json=uri
    )
    bare = client.create_experiment(
        "ukd/bare", artifact_location=(root / "artifacts" / "bare").as_uri()
    )
    return Store(root, uri, main, multi, noyaml, empty, bare)
