"""Teacher stage: make each teacher available once, cached by content hash.

For every distinct teacher of a sweep (:attr:`TeacherConfig.key`, a hash of the resolved
pretraining config and the recipe version, or of the checkpoint / weights) the stage, under a
file lock so concurrent trials or sweeps never train it twice:
1. pretrains it (SimCLR / MoCo-v2 / supervised recipe) unless ``teacher.pt`` is cached,
   or loads it from a checkpoint / torchvision weights;
2. measures its own kNN accuracy once per kNN setting (the reference column of the tables),
   and its classifier's test accuracy once when it has one;
3. builds the teacher kNN graph a trial's objective asks for (``ObjectiveRequirements``):
   exact top-k in chunks on the stage's device, stored once as an int32 ``.npy`` that every
   trial memory-maps (orchestrator/engine/knn.py).
The result is a :class:`TeacherReport`; the driver hands it to the trials in their config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from common.atomic import write_json
from common.hashing import content_hash
from common.locks import file_lock
from models.checkpoint_format import CheckpointError, load_teacher, save_teacher
from models.hub import WeightsUnavailableError, fetch_weights, pretrained_backbone
from models.pretrain import RECIPES, pretrain_teacher
from models.teacher import FrozenTeacher
from models.weights import build_teacher_from_checkpoint
from orchestrator.data.datasets import DatasetBundle, load_dataset, uses_labels
from orchestrator.engine.device import resolve_device
from orchestrator.engine.knn import embed, save_neighbour_graph, weighted_knn
from orchestrator.engine.precision import autocast
from orchestrator.engine.teacher_pass import TeacherNeeds
from orchestrator.errors import UserInputError
from orchestrator.spec.config import (
    CheckpointSource,
    DatasetConfig,
    KnnConfig,
    PretrainSource,
    TeacherConfig,
    TeacherReport,
    TrialConfig,
)

TEACHER_FILE = "teacher.pt"
NO_NEEDS = TeacherNeeds()  # the backbone only


def teacher_dir(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "teachers" / key


def load_frozen_teacher(teacher: TeacherConfig, cache_dir: str | Path, bundle: DatasetBundle,
                        needs: TeacherNeeds = NO_NEEDS) -> FrozenTeacher:
    """The teacher a trial distils from (the stage must have run for pretrained ones).

    A checkpoint is asked for a classifier over the dataset's classes when ``needs`` says so,
    and for its SSL head (an error if it has none); pretrained teachers carry theirs.
    """
    channels = int(bundle.train.images.shape[1])
    source = teacher.source
    if isinstance(source, PretrainSource):
        path = teacher_dir(cache_dir, teacher.key) / TEACHER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"teacher {teacher.label!r} has not been trained: {path}")
        frozen, _ = load_teacher(path)
        return frozen
    if isinstance(source, CheckpointSource):
        return build_teacher_from_checkpoint(
            source.arch, source.checkpoint, bundle.num_classes if needs.classifier else None,
            channels, with_ssl_head=needs.ssl_head)
    return FrozenTeacher(pretrained_backbone(source.arch, source.weights))


def _knn_of(frozen: FrozenTeacher, bundle: DatasetBundle, knn: KnnConfig,
            device: torch.device) -> dict[str, float]:
    mean, std = bundle.mean.to(device), bundle.std.to(device)
    with autocast(device, "auto"):  # bf16 forwards on CUDA, as the trials' evaluation
        train = embed(frozen.features, bundle.train.images.to(device), mean, std,
                      knn.batch_size)
        test = embed(frozen.features, bundle.test.images.to(device), mean, std,
                     knn.batch_size)
    return weighted_knn(train, bundle.train.labels.to(device), test,
                        bundle.test.labels.to(device), knn.k, knn.temperature,
                        bundle.num_classes)


def _cached_json(path: Path, compute: Any) -> Any:
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_json(path, value)
    return value


def ensure_teacher(teacher: TeacherConfig, dataset: DatasetConfig, knn: KnnConfig,
                   cache_dir: str | Path, device_name: str = "auto",
                   graph_sizes: tuple[int, ...] = (), threads: int | None = None
                   ) -> TeacherReport:
    """Run the stage for one teacher (a Ray task in a sweep); safe from many processes."""
    report, _ = run_stage(teacher, dataset, knn, cache_dir, device_name, graph_sizes, threads)
    return report


def cached_stage(teacher: TeacherConfig, knn: KnnConfig, cache_dir: str | Path,
                 graph_sizes: tuple[int, ...] = ()) -> TeacherReport | None:
    """The stage's report read from its cache when the stage has nothing left to do (a
    pretrained teacher's weights, its kNN for this setting, every neighbour graph asked for);
    None otherwise. Reads files only (each written atomically): no dataset, no model, so the
    driver answers a cached stage itself instead of starting a process that imports torch.
    Other sources (checkpoints, torchvision) always run the stage."""
    source = teacher.source
    if not isinstance(source, PretrainSource):
        return None
    directory = teacher_dir(cache_dir, teacher.key)
    knn_path = directory / f"knn-{content_hash(knn.to_dict(), 8)}.json"
    graphs = {size: neighbour_graph_path(cache_dir, teacher.key, size)
              for size in sorted(set(graph_sizes))}
    classifier = RECIPES[source.pretrain.recipe].needs_labels
    needed = [directory / TEACHER_FILE, directory / "meta.json", knn_path, *graphs.values(),
              *([directory / "test_top1.json"] if classifier else [])]
    if not all(path.is_file() for path in needed):
        return None
    stored = json.loads((directory / "meta.json").read_text())
    test_top1 = (float(json.loads((directory / "test_top1.json").read_text()))
                 if classifier else None)
    return TeacherReport(teacher.key, teacher.label, str(directory),
                         {k: float(v) for k, v in json.loads(knn_path.read_text()).items()},
                         {size: str(path) for size, path in graphs.items()}, test_top1, False,
                         float(stored.get("train_time_s", 0.0)),
                         tuple(stored.get("history", [])))


def run_stage(teacher: TeacherConfig, dataset: DatasetConfig, knn: KnnConfig,
              cache_dir: str | Path, device_name: str = "auto",
              graph_sizes: tuple[int, ...] = (), threads: int | None = None,
              needs: TeacherNeeds = NO_NEEDS) -> tuple[TeacherReport, FrozenTeacher]:
    """The stage, returning the loaded teacher too (loaded with ``needs``), so that a trial
    run on its own loads its teacher once."""
    if threads is not None:
        torch.set_num_threads(threads)
    directory = teacher_dir(cache_dir, teacher.key)
    device = resolve_device(device_name)
    bundle = load_dataset(dataset)
    trained_now = False
    train_time = 0.0
    history: list[dict[str, float]] = []
    with file_lock(directory.with_suffix(".lock")):
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / "meta.json"
        source = teacher.source
        if isinstance(source, PretrainSource) and not (directory / TEACHER_FILE).is_file():
            train_time, history = _pretrain(teacher, source, dataset, bundle, device, directory)
            write_json(meta_path, {"train_time_s": train_time, "history": history,
                                   "pretrain": source.pretrain.to_dict()})
            trained_now = True
        elif meta_path.is_file():
            stored = json.loads(meta_path.read_text())
            train_time = float(stored.get("train_time_s", 0.0))
            history = list(stored.get("history", []))
        frozen = load_frozen_teacher(teacher, cache_dir, bundle, needs).to(device)
        knn_metrics = _cached_json(directory / f"knn-{content_hash(knn.to_dict(), 8)}.json",
                                   lambda: _knn_of(frozen, bundle, knn, device))
        test_top1 = None
        if frozen.has_classifier:
            test_top1 = _cached_json(directory / "test_top1.json",
                                     lambda: _test_accuracy(frozen, bundle, device))
        graphs: dict[int, str] = {}
        for size in sorted(set(graph_sizes)):
            graph_path = neighbour_graph_path(cache_dir, teacher.key, size)
            if not graph_path.is_file():
                mean, std = bundle.mean.to(device), bundle.std.to(device)
                with autocast(device, "auto"):
                    feats = embed(frozen.features, bundle.train.images.to(device), mean, std)
                save_neighbour_graph(graph_path, feats, size)
            graphs[size] = str(graph_path)
    report = TeacherReport(teacher.key, teacher.label, str(directory), knn_metrics, graphs,
                           test_top1, trained_now, train_time, tuple(history))
    return report, frozen


def _pretrain(teacher: TeacherConfig, source: PretrainSource, dataset: DatasetConfig,
              bundle: DatasetBundle, device: torch.device, directory: Path
              ) -> tuple[float, list[dict[str, float]]]:
    cfg = source.pretrain
    wants = uses_labels(dataset) and RECIPES[cfg.recipe].needs_labels
    labels = bundle.train.labels if wants else None
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    backbone, head = pretrain_teacher(
        cfg, bundle.training_images.to(device), None if labels is None else labels.to(device),
        bundle.mean.to(device), bundle.std.to(device),
        bundle.num_classes if cfg.recipe == "supervised" else None, device,
        lambda epoch, metrics: history.append({"epoch": epoch, **metrics}))
    train_time = time.perf_counter() - started
    save_teacher(directory / TEACHER_FILE, backbone.cpu(), None if head is None else head.cpu(),
                 {"label": teacher.label, "key": teacher.key, "dataset": dataset.name})
    return train_time, history


def check_teacher_sources(teachers: dict[str, TeacherConfig], spec_file: Path,
                          in_channels: int,
                          needs: Mapping[str, tuple[TeacherNeeds, tuple[str, ...]]] | None = None
                          ) -> None:
    """Before Ray starts: checkpoints must load into their architecture and torchvision
    weights must be cached or downloadable (offline: a message saying where the file goes).

    ``needs`` maps a teacher label to what its trials ask of it and the objectives that ask
    (:func:`teacher_needs_by_label`): a checkpoint teacher of an objective that distils the
    teacher's SSL embedding (SEED, DisCo, BINGO) must hold an SSL projection head."""
    for label, teacher in teachers.items():
        source = teacher.source
        need, objectives = (needs or {}).get(label, (TeacherNeeds(), ()))
        try:
            if isinstance(source, CheckpointSource):
                try:
                    build_teacher_from_checkpoint(source.arch, source.checkpoint, None,
                                                  in_channels, with_ssl_head=need.ssl_head)
                except CheckpointError as exc:
                    if not need.ssl_head:
                        raise
                    # The backbone loads without the head: the head is what is missing.
                    build_teacher_from_checkpoint(source.arch, source.checkpoint, None,
                                                  in_channels)
                    users = ", ".join(objectives) or "an objective"
                    raise CheckpointError(
                        f"{exc} (needed by {users}, which distil the teacher's SSL embedding; "
                        "a MoCo-v2 checkpoint holds the head as encoder_q.fc.0 / fc.2)"
                    ) from None
            elif not isinstance(source, PretrainSource):
                fetch_weights(source.arch, source.weights)
        except (CheckpointError, WeightsUnavailableError) as exc:
            key = "checkpoint" if isinstance(source, CheckpointSource) else "weights"
            raise UserInputError(f"{spec_file} at `teachers.{label}.{key}`: {exc}") from None


def teacher_needs_by_label(trials: Sequence[TrialConfig]
                           ) -> dict[str, tuple[TeacherNeeds, tuple[str, ...]]]:
    """Per teacher label: what its trials need of it (the SSL head when an objective uses the
    teacher's embedding) and the objectives that need the head."""
    out: dict[str, tuple[TeacherNeeds, tuple[str, ...]]] = {}
    for label in dict.fromkeys(t.teacher.label for t in trials):
        mine = [t for t in trials if t.teacher.label == label]
        users = tuple(dict.fromkeys(t.loss.name for t in mine
                                    if t.requirements.teacher_embedding))
        classifier = any(t.requirements.teacher_classifier for t in mine)
        out[label] = (TeacherNeeds(classifier=classifier, ssl_head=bool(users)), users)
    return out


@torch.no_grad()
def _test_accuracy(frozen: FrozenTeacher, bundle: DatasetBundle, device: torch.device) -> float:
    if frozen.backbone.num_classes != bundle.num_classes:
        return float("nan")  # e.g. an ImageNet classifier on CIFAR
    from models.augment import normalise

    correct = 0
    images, labels = bundle.test.images, bundle.test.labels
    for start in range(0, images.shape[0], 512):
        x = normalise(images[start:start + 512].to(device).float() / 255.0,
                      bundle.mean, bundle.std)
        pred = frozen.logits(frozen.features(x)).argmax(1).cpu()
        correct += int((pred == labels[start:start + 512]).sum())
    return 100.0 * correct / images.shape[0]


def neighbour_graph_path(cache_dir: str | Path, key: str, size: int) -> Path:
    """The stored graph: ``N x size`` int32 ``.npy``, memory-mapped by every trial."""
    return teacher_dir(cache_dir, key) / f"neighbours-{size}.npy"
