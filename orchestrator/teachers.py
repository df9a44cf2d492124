"""Teacher stage: make each teacher available once, cached by content hash.

For every distinct teacher of a sweep (``TrialConfig.teacher["key"]``) the stage, under a
file lock so concurrent trials or sweeps never train it twice:
1. pretrains it (SimCLR / MoCo-v2 / supervised recipe) unless ``teacher.pt`` is cached,
   or loads it from a checkpoint / torchvision weights;
2. measures its own kNN accuracy once per kNN setting (the reference column of the tables);
3. builds the teacher kNN graph used for neighbour batches when a trial needs one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.checkpoints import (
    CheckpointError,
    build_teacher_from_checkpoint,
    load_teacher,
    save_teacher,
)
from models.hub import WeightsUnavailableError, fetch_weights, pretrained_backbone
from models.pretrain import PretrainConfig, pretrain_teacher
from models.teacher import FrozenTeacher
from orchestrator.datasets import DatasetBundle, load_dataset
from orchestrator.errors import UserInputError
from orchestrator.fsutil import file_lock, torch_save, write_json
from orchestrator.grid import content_hash
from orchestrator.knn import embed, neighbour_graph, weighted_knn


@dataclass
class TeacherReport:
    key: str
    label: str
    directory: str
    trained_now: bool
    train_time_s: float
    knn: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    test_top1: float | None = None


def teacher_dir(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "teachers" / key


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("resources.device is cuda but no CUDA device is visible")
    return torch.device(name)


def pretrain_config(teacher: Mapping[str, Any], in_channels: int) -> PretrainConfig:
    return PretrainConfig(arch=teacher["arch"], in_channels=in_channels,
                          **dict(teacher.get("pretrain") or {}))


def load_frozen_teacher(teacher: Mapping[str, Any], cache_dir: str | Path,
                        bundle: DatasetBundle, with_classifier: bool = False) -> FrozenTeacher:
    """The teacher a trial distils from (the stage must have run for pretrained ones).

    ``with_classifier`` asks a checkpoint for a classifier over the dataset's classes (KD-style
    objectives); otherwise only the backbone is loaded.
    """
    channels = int(bundle.train.images.shape[1])
    source = teacher["source"]
    if source == "pretrain":
        path = teacher_dir(cache_dir, teacher["key"]) / "teacher.pt"
        if not path.is_file():
            raise FileNotFoundError(f"teacher {teacher['label']!r} has not been trained: {path}")
        frozen, _ = load_teacher(path)
        return frozen
    if source == "checkpoint":
        return build_teacher_from_checkpoint(
            teacher["arch"], teacher["checkpoint"],
            bundle.num_classes if with_classifier else None, channels)
    return FrozenTeacher(pretrained_backbone(teacher["arch"], teacher["weights"]))


def _knn_of(frozen: FrozenTeacher, bundle: DatasetBundle, knn: Mapping[str, Any],
            device: torch.device) -> dict[str, float]:
    frozen.to(device)
    mean, std = bundle.mean.to(device), bundle.std.to(device)
    train = embed(frozen.features, bundle.train.images.to(device), mean, std, knn["batch_size"])
    test = embed(frozen.features, bundle.test.images.to(device), mean, std, knn["batch_size"])
    return weighted_knn(train, bundle.train.labels.to(device), test,
                        bundle.test.labels.to(device), knn["k"], knn["temperature"],
                        bundle.num_classes)


def ensure_teacher(
    teacher: Mapping[str, Any],
    dataset: Mapping[str, Any],
    knn: Mapping[str, Any],
    cache_dir: str | Path,
    device_name: str = "auto",
    neighbour_pools: tuple[int, ...] = (),
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    threads: int | None = None,
) -> TeacherReport:
    """Run the stage for one teacher; safe to call from many processes at once."""
    if threads is not None:
        torch.set_num_threads(threads)
    directory = teacher_dir(cache_dir, teacher["key"])
    device = resolve_device(device_name)
    bundle = load_dataset(dataset["name"], dataset.get("root"), dataset.get("download", False))
    channels = int(bundle.train.images.shape[1])
    trained_now = False
    train_time = 0.0
    history: list[dict[str, float]] = []
    with file_lock(directory.with_suffix(".lock")):
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / "meta.json"
        if teacher["source"] == "pretrain" and not (directory / "teacher.pt").is_file():
            cfg = pretrain_config(teacher, channels)
            labels = bundle.train.labels if dataset.get("labels", True) else None
            started = time.perf_counter()

            def record(epoch: int, metrics: dict[str, float]) -> None:
                history.append({"epoch": epoch, **metrics})
                if on_epoch is not None:
                    on_epoch(epoch, metrics)

            torch.manual_seed(cfg.seed)
            backbone, head = pretrain_teacher(
                cfg, bundle.train.images.to(device), None if labels is None else labels.to(device),
                bundle.mean.to(device), bundle.std.to(device),
                bundle.num_classes if cfg.recipe == "supervised" else None, device, record)
            train_time = time.perf_counter() - started
            save_teacher(directory / "teacher.pt", backbone.cpu(),
                         None if head is None else head.cpu(),
                         {"label": teacher["label"], "key": teacher["key"],
                          "dataset": dataset["name"]})
            write_json(meta_path, {"train_time_s": train_time, "history": history,
                                   "pretrain": teacher.get("pretrain")})
            trained_now = True
        elif meta_path.is_file():
            stored = json.loads(meta_path.read_text())
            train_time = float(stored.get("train_time_s", 0.0))
            history = list(stored.get("history", []))
        frozen = load_frozen_teacher(teacher, cache_dir, bundle).to(device)
        knn_path = directory / f"knn-{content_hash(dict(knn), 8)}.json"
        if knn_path.is_file():
            knn_metrics = json.loads(knn_path.read_text())
        else:
            knn_metrics = _knn_of(frozen, bundle, knn, device)
            write_json(knn_path, knn_metrics)
        test_top1 = _test_accuracy(frozen, bundle, device) if frozen.has_classifier else None
        for pool in neighbour_pools:
            graph_path = directory / f"neighbours-{pool}.pt"
            if not graph_path.is_file():
                mean, std = bundle.mean.to(device), bundle.std.to(device)
                feats = embed(frozen.features, bundle.train.images.to(device), mean, std)
                torch_save(graph_path, neighbour_graph(feats, pool))
    return TeacherReport(teacher["key"], teacher["label"], str(directory), trained_now,
                         train_time, knn_metrics, history,
                         {k: v for k, v in teacher.items() if k != "pretrain"}
                         | {f"pretrain.{k}": v for k, v in (teacher.get("pretrain") or {}).items()},
                         test_top1)


def check_teacher_sources(teachers: Mapping[str, Any], spec_file: Path,
                          in_channels: int) -> None:
    """Before Ray starts: checkpoints must load into their architecture and torchvision
    weights must be cached or downloadable (offline: a message saying where the file goes)."""
    for label, teacher in teachers.items():
        try:
            if teacher.source == "checkpoint":
                build_teacher_from_checkpoint(teacher.arch, teacher.checkpoint, None, in_channels)
            elif teacher.source == "torchvision":
                fetch_weights(teacher.arch, teacher.weights)
        except (CheckpointError, WeightsUnavailableError) as exc:
            key = "checkpoint" if teacher.source == "checkpoint" else "weights"
            raise UserInputError(f"{spec_file} at `teachers.{label}.{key}`: {exc}") from None


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


def neighbour_graph_path(cache_dir: str | Path, key: str, pool: int) -> Path:
    return teacher_dir(cache_dir, key) / f"neighbours-{pool}.pt"

