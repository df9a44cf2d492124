"""Reference stages: what a student architecture scores without distillation.

Per (student architecture, dataset, seed), computed once and cached like the teachers:
- ``random_init``: the untrained student, initialised exactly as a trial of that seed
  initialises its backbone (:func:`~orchestrator.data.streams.seeded_init`);
- ``ssl_only``: the student trained by a pretraining recipe (SimCLR / MoCo-v2) and no teacher,
  CoSS's "no teacher" row;
- ``supervised_only``: the student trained with cross-entropy alone, SSKD's "S" column.

Each is evaluated by the trials' evaluators (kNN, the linear probe, the classifier where the
model has one). The weights are cached under ``cache_dir/references/<key>/`` (key: a hash of
kind, architecture, dataset, seed and the resolved recipe), the metrics beside them per
evaluation setting, all under a file lock, so concurrent sweeps never train one twice. No
Ray, no MLflow: the driver runs :func:`ensure_reference` as a Ray task and the tracker logs
the :class:`~orchestrator.spec.config.ReferenceReport` as a run of its own.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from common.atomic import torch_save, write_json
from common.hashing import content_hash
from common.locks import file_lock
from models.base import Backbone, build_model
from models.pretrain import pretrain_teacher
from orchestrator.data.datasets import DATASETS, DatasetBundle, load_dataset
from orchestrator.data.streams import seeded_init
from orchestrator.engine.device import resolve_device
from orchestrator.engine.evaluators.base import EvalContext, evaluate_model
from orchestrator.spec.config import (
    DatasetConfig,
    EvalConfig,
    ReferenceConfig,
    ReferenceReport,
    ReferencesConfig,
    TeacherConfig,
    TrialConfig,
)
from orchestrator.stages.teachers import load_frozen_teacher, teacher_dir

WEIGHTS_FILE = "student.pt"
META_FILE = "meta.json"


def reference_dir(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "references" / key


def transfer_cache(cache_dir: str | Path) -> str:
    """Where the teachers' and references' transfer features are kept (by content hash:
    orchestrator/engine/transfer.py), so a changed solver setting re-solves, not re-extracts."""
    return str(Path(cache_dir) / "transfer-features")


def plan_references(references: ReferencesConfig, trials: Sequence[TrialConfig]
                    ) -> list[ReferenceConfig]:
    """The reference runs of a sweep: every enabled kind x student architecture x seed of
    the trials, in that order (kinds in REFERENCE_KINDS order, students and seeds as they
    first appear in the grid)."""
    if not trials or not references.kinds:
        return []
    first = trials[0]
    channels = DATASETS[first.dataset.name].channels
    students = list(dict.fromkeys(t.student.arch for t in trials))
    out: list[ReferenceConfig] = []
    for kind in references.kinds:
        template = getattr(references, kind)
        for student in students:
            seeds = dict.fromkeys(t.train.seed for t in trials if t.student.arch == student)
            for seed in seeds:
                recipe = None if kind == "random_init" else dataclasses.replace(
                    template, arch=student, seed=seed, in_channels=channels)
                out.append(ReferenceConfig(kind, student, first.dataset, seed, recipe,
                                           first.eval))
    return out


def _build_untrained(ref: ReferenceConfig, channels: int) -> Backbone:
    with seeded_init(ref.seed):  # as build_member builds a trial's student (no classifier)
        return build_model(ref.student, None, channels)


def _train(ref: ReferenceConfig, bundle: DatasetBundle, device: torch.device
           ) -> tuple[Backbone, float, list[dict[str, float]]]:
    assert ref.recipe is not None
    cfg = ref.recipe
    labels = bundle.train.labels.to(device) if ref.kind == "supervised_only" else None
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    backbone, _ = pretrain_teacher(
        cfg, bundle.training_images.to(device), labels, bundle.mean.to(device),
        bundle.std.to(device), bundle.num_classes if labels is not None else None, device,
        lambda epoch, metrics: history.append({"epoch": epoch, **metrics}))
    return backbone, time.perf_counter() - started, history


def _load(ref: ReferenceConfig, path: Path, channels: int, num_classes: int) -> Backbone:
    model = build_model(ref.student, num_classes if ref.kind == "supervised_only" else None,
                        channels)
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return model


def cached_reference(ref: ReferenceConfig, cache_dir: str | Path) -> ReferenceReport | None:
    """:func:`ensure_reference`'s report read from its cache when it has nothing left to do
    (the metrics of this evaluation setting, and the weights of a trained kind); None
    otherwise. Files only, so the driver answers it without a Ray task."""
    directory = reference_dir(cache_dir, ref.key)
    metrics_path = directory / f"eval-{ref.eval_key}.json"
    meta_path = directory / META_FILE
    needed = [metrics_path, meta_path, *([] if ref.kind == "random_init"
                                          else [directory / WEIGHTS_FILE])]
    if not all(path.is_file() for path in needed):
        return None
    stored = json.loads(meta_path.read_text())
    metrics = {k: float(v) for k, v in json.loads(metrics_path.read_text()).items()}
    return ReferenceReport(ref.key, ref.kind, ref.student, ref.seed, str(directory), metrics,
                           False, float(stored.get("train_time_s", 0.0)),
                           tuple(stored.get("history", [])))


def ensure_reference(ref: ReferenceConfig, cache_dir: str | Path, device_name: str = "auto",
                     threads: int | None = None) -> ReferenceReport:
    """Run the stage for one reference (a Ray task in a sweep); safe from many processes."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    dataset = ref.dataset
    bundle = load_dataset(dataset)
    channels = int(bundle.train.images.shape[1])
    directory = reference_dir(cache_dir, ref.key)
    trained_now = False
    train_time = 0.0
    history: list[dict[str, float]] = []
    with file_lock(directory.with_suffix(".lock")):
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / META_FILE
        weights = directory / WEIGHTS_FILE
        if ref.kind == "random_init":
            model = _build_untrained(ref, channels)
        elif weights.is_file():
            model = _load(ref, weights, channels, bundle.num_classes)
            if meta_path.is_file():
                stored = json.loads(meta_path.read_text())
                train_time = float(stored.get("train_time_s", 0.0))
                history = list(stored.get("history", []))
        else:
            model, train_time, history = _train(ref, bundle, device)
            torch_save(weights, {k: v.cpu() for k, v in model.state_dict().items()})
            trained_now = True
        if not meta_path.is_file() or trained_now:
            write_json(meta_path, {"kind": ref.kind, "student": ref.student,
                                   "dataset": dataset.name, "seed": ref.seed,
                                   "recipe": None if ref.recipe is None
                                   else ref.recipe.to_dict(),
                                   "train_time_s": train_time, "history": history})
        metrics_path = directory / f"eval-{ref.eval_key}.json"
        if metrics_path.is_file():
            metrics = {k: float(v) for k, v in json.loads(metrics_path.read_text()).items()}
        else:
            model = model.to(device)
            metrics = evaluate_model(EvalContext(ref.eval, model, bundle,
                                                 bundle.train.images.to(device), device,
                                                 "auto", ref.seed, transfer_cache(cache_dir)))
            write_json(metrics_path, metrics)
    return ReferenceReport(ref.key, ref.kind, ref.student, ref.seed, str(directory), metrics,
                           trained_now, train_time, tuple(history))


# ----------------------------------------------------------------------------- teachers


def _teacher_evaluators(evaluation: EvalConfig) -> list[str]:
    """The evaluators a teacher runs beside its stage's kNN: the linear probe, transfer."""
    return [name for name, on in (("linear", evaluation.linear is not None),
                                  ("transfer", evaluation.transfer is not None)) if on]


def _teacher_metrics_path(teacher: TeacherConfig, evaluation: EvalConfig,
                          cache_dir: str | Path) -> Path:
    names = _teacher_evaluators(evaluation)
    assert names
    if names == ["linear"]:  # the file name of before transfer existed
        assert evaluation.linear is not None
        name = f"linear-{content_hash(evaluation.linear.to_dict(), 8)}.json"
    else:
        identity = evaluation.identity()
        name = (f"{'-'.join(names)}-" + content_hash({k: identity.get(k) for k in names}, 8)
                + ".json")
    return teacher_dir(cache_dir, teacher.key) / name


def cached_teacher_metrics(teacher: TeacherConfig, evaluation: EvalConfig,
                           cache_dir: str | Path) -> dict[str, float] | None:
    """:func:`ensure_teacher_metrics` read from its cache; None when it has to run."""
    if not _teacher_evaluators(evaluation):
        return {}
    path = _teacher_metrics_path(teacher, evaluation, cache_dir)
    if not path.is_file():
        return None
    return {k: float(v) for k, v in json.loads(path.read_text()).items()}


def ensure_teacher_metrics(teacher: TeacherConfig, dataset: DatasetConfig,
                           evaluation: EvalConfig, cache_dir: str | Path,
                           device_name: str = "auto", threads: int | None = None
                           ) -> dict[str, float]:
    """The teacher's own values of the evaluators beside kNN (the linear probe, transfer),
    once per setting, cached in the teacher's directory like its kNN (the teacher stage must
    have run). Its classifier, when it has one, is the stage's ``test_top1``."""
    names = _teacher_evaluators(evaluation)
    if not names:
        return {}
    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    bundle = load_dataset(dataset)
    directory = teacher_dir(cache_dir, teacher.key)
    only = dataclasses.replace(evaluation, classifier=False)
    path = _teacher_metrics_path(teacher, evaluation, cache_dir)
    with file_lock(directory.with_suffix(".lock")):
        if path.is_file():
            return {k: float(v) for k, v in json.loads(path.read_text()).items()}
        frozen = load_frozen_teacher(teacher, cache_dir, bundle).to(device)
        ctx = EvalContext(only, frozen.backbone, bundle, bundle.train.images.to(device),
                          device, "auto", 0, transfer_cache(cache_dir))
        metrics = evaluate_model(ctx, names)
        write_json(path, metrics)
    return metrics
