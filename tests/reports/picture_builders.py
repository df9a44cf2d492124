"""A sweep for the report pictures in a real SQLite MLflow store: per-epoch loss terms,
periodic kNN evaluations, a second metric with its teacher reference, reference runs, and a
second sweep with only two varying axes. Built once per test session (:func:`picture_store`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from common import names
from tests.reports.report_builders import new_store

TEACHER = "dino_r50"
EPOCHS = 6
EVAL_EVERY = 2
AXES = ["student", "loss.name", "loss.lambda", "seed"]


@dataclass
class PicTrial:
    student: str
    objective: str
    seed: int
    top1: float
    """Final ``knn/top1_k10``; the periodic ones before it are lower (see :func:`knn_at`)."""
    lam: float | None = None
    status: str = "FINISHED"
    failure_reason: str | None = None

    def params(self) -> dict[str, object]:
        params: dict[str, object] = {
            "teacher": TEACHER,
            "student": self.student,
            "loss.name": self.objective,
            "batch_size": 128,
            "epochs": EPOCHS,
            "seed": self.seed,
        }
        if self.lam is not None:
            params["loss.lambda"] = self.lam
        return params


def loss_at(trial: PicTrial, term: str, epoch: int) -> float:
    base = {"loss/total": 4.0, "loss/cos": 2.0, "loss/sim": 1.5}[term]
    return base - 0.25 * epoch + 0.1 * trial.seed


def knn_at(trial: PicTrial, epoch: int) -> float:
    return trial.top1 - 2.0 * (EPOCHS - epoch)


def linear_top1(trial: PicTrial) -> float:
    return trial.top1 + 5.0


@dataclass(frozen=True)
class Ref:
    student: str
    reference: str
    seed: int
    top1: float
    status: str = "FINISHED"


@dataclass
class PictureSweep:
    name: str
    experiment_id: str
    parent_run_id: str
    directory: Path
    trials: list[PicTrial]
    run_ids: list[str]
    reference_ids: list[str] = field(default_factory=list)


@dataclass
class PictureStore:
    root: Path
    uri: str
    pictures: PictureSweep
    """4 varying axes, two pairs (wrn_16_2 with a single seed), references."""
    two_axes: PictureSweep
    """Only loss.name and seed vary; one reference run of its own."""


R18, WRN = "resnet18", "wrn_16_2"
TEACHER_TOP1 = 70.0
TEACHER_LINEAR = 80.0


def picture_trials() -> list[PicTrial]:
    return [
        PicTrial(R18, "coss", 0, 60.0, lam=0.5),
        PicTrial(R18, "coss", 1, 64.0, lam=0.5),
        PicTrial(R18, "coss", 0, 58.0, lam=1.0),
        PicTrial(R18, "coss", 1, 0.0, lam=1.0, status="FAILED", failure_reason="NaN loss"),
        PicTrial(R18, "cos", 0, 50.0),
        PicTrial(R18, "cos", 1, 52.0),
        PicTrial(WRN, "coss", 0, 66.0, lam=0.5),
    ]


def picture_references() -> list[Ref]:
    return [
        Ref(R18, "random_init", 0, 99.0),  # superseded by the newer run of the same seed
        Ref(R18, "random_init", 0, 30.0),
        Ref(R18, "random_init", 1, 32.0),
        Ref(R18, "ssl_only", 0, 45.0),
        Ref(R18, "ssl_only", 1, 10.0, status="FAILED"),
        Ref(WRN, "supervised_only", 0, 75.0),
    ]


def two_axes_trials() -> list[PicTrial]:
    return [
        PicTrial(R18, "coss", 0, 61.0, lam=0.5),
        PicTrial(R18, "coss", 1, 63.0, lam=0.5),
        PicTrial(R18, "cos", 0, 51.0),
        PicTrial(R18, "cos", 1, 53.0),
    ]


def _log_trial(
    client: MlflowClient, experiment_id: str, parent_id: str, index: int, trial: PicTrial
) -> str:
    time.sleep(0.002)
    tags = {
        names.TAG_PARENT: parent_id,
        names.TAG_KIND: names.KIND_TRIAL,
        names.TAG_TRIAL_ID: f"p{index:03d}",
        names.TAG_TEACHER: TEACHER,
        names.TAG_STUDENT: trial.student,
        names.TAG_OBJECTIVE: trial.objective,
    }
    if trial.failure_reason is not None:
        tags[names.TAG_FAILURE_REASON] = trial.failure_reason
        tags[names.TAG_FAILURE_EPOCH] = "3"
    run_id: str = client.create_run(experiment_id, tags=tags).info.run_id
    now = int(time.time() * 1000)
    terms = ["loss/total", "loss/cos"] + (["loss/sim"] if trial.objective == "coss" else [])
    last = EPOCHS if trial.status == "FINISHED" else 3
    metrics: list[Metric] = []
    for epoch in range(1, last + 1):
        metrics += [Metric(t, loss_at(trial, t, epoch), now + epoch, epoch) for t in terms]
        metrics.append(Metric(names.LR, 0.1 / epoch, now + epoch, epoch))
    if trial.status == "FINISHED":
        for epoch in range(EVAL_EVERY, EPOCHS + 1, EVAL_EVERY):
            metrics.append(Metric("knn/top1_k10", knn_at(trial, epoch), now + epoch, epoch))
        metrics += [
            Metric("knn/top1_k10_best", trial.top1, now + EPOCHS, EPOCHS),
            Metric("linear/top1", linear_top1(trial), now + EPOCHS, EPOCHS),
            Metric(names.teacher_metric("knn/top1_k10"), TEACHER_TOP1, now, EPOCHS),
            Metric(names.teacher_metric("linear/top1"), TEACHER_LINEAR, now, EPOCHS),
            Metric(names.TRAIN_TIME, 3.5, now + EPOCHS, EPOCHS),
        ]
    params = [Param(k, str(v)) for k, v in trial.params().items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_terminated(run_id, trial.status)
    return run_id


def _log_reference(client: MlflowClient, experiment_id: str, parent_id: str, ref: Ref) -> str:
    time.sleep(0.002)
    tags = {
        names.TAG_PARENT: parent_id,
        names.TAG_KIND: names.KIND_REFERENCE,
        names.TAG_REFERENCE: ref.reference,
        names.TAG_STUDENT: ref.student,
    }
    run_id: str = client.create_run(experiment_id, tags=tags).info.run_id
    now = int(time.time() * 1000)
    metrics = [
        Metric("knn/top1_k10", ref.top1, now, 1),
        Metric("linear/top1", ref.top1 + 1.0, now, 1),
    ]
    client.log_batch(run_id, metrics=metrics, params=[Param(names.PARAM_SEED, str(ref.seed))])
    client.set_terminated(run_id, ref.status)
    return run_id


def make_picture_sweep(
    client: MlflowClient,
    root: Path,
    name: str,
    trials: list[PicTrial],
    axes: list[str],
    references: list[Ref],
) -> PictureSweep:
    experiment_id = client.create_experiment(
        names.EXPERIMENT_PREFIX + name, artifact_location=(root / "artifacts" / name).as_uri()
    )
    directory = root / name
    parent_id = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            names.TAG_KIND: names.KIND_SWEEP,
            names.TAG_SWEEP_ID: f"sweep-{name}",
            names.TAG_AXES: json.dumps(axes),
            names.TAG_OUTPUT_DIR: str(directory),
        },
    ).info.run_id
    run_ids = [
        _log_trial(client, experiment_id, parent_id, i, trial) for i, trial in enumerate(trials)
    ]
    ref_ids = [_log_reference(client, experiment_id, parent_id, ref) for ref in references]
    client.set_terminated(parent_id, "FINISHED")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / names.SWEEP_JSON).write_text(
        json.dumps(
            {
                "parent_run_id": parent_id,
                "experiment_id": experiment_id,
                "name": name,
                "tracking_uri": f"sqlite:///{root / names.DEFAULT_DB}",
            }
        ),
        encoding="utf-8",
    )
    return PictureSweep(name, experiment_id, parent_id, directory, trials, run_ids, ref_ids)


def build_picture_store(root: Path) -> PictureStore:
    uri, client = new_store(root)
    pictures = make_picture_sweep(
        client, root, "pictures", picture_trials(), AXES, picture_references()
    )
    two = make_picture_sweep(
        client,
        root,
        "two-axes",
        two_axes_trials(),
        ["loss.name", "seed"],
        [Ref(R18, "random_init", 0, 12.0)],
    )
    return PictureStore(root, uri, pictures, two)


_CACHE: dict[str, PictureStore] = {}


def picture_store(factory: pytest.TempPathFactory) -> PictureStore:
    """The picture store, built on first use and shared by every test module of the session."""
    if "store" not in _CACHE:
        _CACHE["store"] = build_picture_store(factory.mktemp("ukd-pictures"))
    return _CACHE["store"]
