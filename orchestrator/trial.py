"""The trial runner: data -> frozen teacher -> student (+ head) -> objective -> SGD -> kNN.

:func:`run_trial` is a plain function (no Ray): it takes a trial config and a ``report``
callback and returns the final metrics. It checkpoints atomically after every epoch in the
trial directory and resumes from there, so a killed trial continues where it stopped.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from losses import ObjectiveContext, StepInputs, build_objective, get_objective, make_params
from models.augment import AUGMENT_PRESETS, augment, normalise
from models.base import build_model
from orchestrator.datasets import load_dataset
from orchestrator.errors import TrialFailure
from orchestrator.fsutil import torch_save, write_yaml
from orchestrator.grid import TrialConfig
from orchestrator.knn import embed, weighted_knn
from orchestrator.sampling import neighbour_batches, random_batches
from orchestrator.teachers import (
    ensure_teacher,
    load_frozen_teacher,
    neighbour_graph_path,
    resolve_device,
)

Reporter = Callable[[dict[str, Any]], None]
CHECKPOINT = "checkpoint.pt"
STUDENT_WEIGHTS = "student.pt"


def lr_factor(train: Mapping[str, Any], epoch: int) -> float:
    """Learning-rate multiplier for a 0-based epoch."""
    total = int(train["epochs"])
    schedule = train["schedule"]
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / total))
    if schedule == "step":
        passed = sum(epoch >= round(m * total) for m in train["milestones"])
        return float(train["gamma"]) ** passed
    return 1.0


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def run_trial(config: TrialConfig | Mapping[str, Any], report: Reporter | None = None
              ) -> dict[str, float]:
    trial = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    emit = report or (lambda _metrics: None)
    runtime = trial.runtime
    trial_dir = Path(runtime["trial_dir"])
    trial_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(trial_dir / "config.yaml", trial.to_dict())
    torch.set_num_threads(int(runtime.get("threads", 1)))
    device = resolve_device(runtime.get("device", "auto"))
    train_cfg = trial.train
    data_cfg = trial.dataset

    bundle = load_dataset(data_cfg["name"], data_cfg.get("root"), data_cfg.get("download", False))
    loss_name = trial.loss["name"]
    loss_values = {k: v for k, v in trial.loss.items() if k != "name"}
    req = get_objective(loss_name).requirements(make_params(loss_name, loss_values))
    use_labels = bool(data_cfg.get("labels", True))
    if req.labels and not use_labels:
        raise TrialFailure(f"{loss_name} needs labels and dataset.labels is false", 0)

    # The stage normally ran before the trial (driver); running it here keeps this function
    # usable on its own. It is cached and locked, so this is a no-op after the stage.
    pool = _pool_of(loss_values) if req.neighbour_batches or req.neighbour_graph else None
    teacher_report = ensure_teacher(trial.teacher, data_cfg, trial.knn, runtime["cache_dir"],
                                    runtime.get("device", "auto"),
                                    () if pool is None else (pool,))
    teacher = load_frozen_teacher(trial.teacher, runtime["cache_dir"], bundle,
                                  req.teacher_classifier).to(device)
    if req.teacher_classifier and not teacher.has_classifier:
        raise TrialFailure(f"{loss_name} needs a teacher with a classifier", 0)

    gen = seed_everything(int(train_cfg["seed"]))
    channels = int(bundle.train.images.shape[1])
    student = build_model(trial.student, bundle.num_classes if req.student_classifier else None,
                          channels).to(device)
    ctx = ObjectiveContext(
        student_dim=student.feature_dim,
        teacher_dim=teacher.feature_dim,
        teacher_embedding_dim=teacher.embedding_dim,
        num_classes=bundle.num_classes if use_labels else None,
        teacher_has_classifier=teacher.has_classifier,
        student_has_classifier=student.has_classifier,
        dataset_size=len(bundle.train),
    )
    objective = build_objective(loss_name, loss_values, ctx).to(device)

    images = bundle.train.images.to(device)
    labels = bundle.train.labels.to(device)
    mean, std = bundle.mean.to(device), bundle.std.to(device)
    aug_cfg = AUGMENT_PRESETS[train_cfg["augment"]]

    def views_of(idx: Tensor) -> Tensor:
        return normalise(augment(images[idx.to(device)], aug_cfg, None), mean, std)

    sampling = objective.neighbour_sampling()
    graph: Tensor | None = None
    if pool is not None:
        graph = torch.load(neighbour_graph_path(runtime["cache_dir"], trial.teacher["key"], pool),
                           weights_only=True)

    params = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=float(train_cfg["lr"]),
                                momentum=float(train_cfg["momentum"]),
                                weight_decay=float(train_cfg["weight_decay"]))
    start_epoch = 0
    resumed: dict[str, Any] = {}
    ckpt_path = trial_dir / CHECKPOINT
    try:
        state = (torch.load(ckpt_path, weights_only=True, map_location=device)
                 if ckpt_path.is_file() else None)
    except Exception as exc:  # written atomically, so damaged by something else
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TrialFailure(f"unreadable checkpoint {ckpt_path} ({type(exc).__name__}: {first}); "
                           "delete it to restart the trial from scratch", 1) from None
    if state is not None:
        student.load_state_dict(state["student"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
    # One-off stages run after the restore, so that a resumed objective can skip what its
    # checkpoint already holds (SSKD's trained teacher SS head); the RNG is restored after it.
    objective.prepare(teacher, images, labels if use_labels else None,
                      lambda x: normalise(augment(x, aug_cfg, None), mean, std), device)
    if state is not None:
        gen.set_state(state["generator"].cpu())  # map_location may have moved them
        torch.set_rng_state(state["torch_rng"].cpu())
        start_epoch = int(state["epoch"])
        # Sent with the first report: the driver tags the resume and logs the checkpoint
        # epoch's metrics in case the process died before they reached MLflow.
        resumed = {"resumed_from_epoch": start_epoch,
                   "resumed_metrics": dict(state.get("metrics", {}))}

    epochs = int(train_cfg["epochs"])
    batch_size = int(train_cfg["batch_size"])
    started = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        epoch_start = time.perf_counter()
        lr = float(train_cfg["lr"]) * lr_factor(train_cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if sampling is not None and graph is not None:
            batches = neighbour_batches(graph, sampling[0], sampling[1], batch_size, gen)
        else:
            batches = random_batches(len(bundle.train), batch_size, gen)
        student.train()
        objective.train()
        sums: dict[str, float] = {}
        for step_index, idx in enumerate(batches):
            step = StepInputs(
                views=[views_of(idx) for _ in range(req.num_views)],
                indices=idx.to(device),
                labels=labels[idx.to(device)] if use_labels else None,
                student=student,
                teacher=teacher,
                fetch=views_of,
                neighbours=graph,
                epoch=epoch,
                step=step_index,
            )
            terms = objective.compute(step)
            if not torch.isfinite(terms.total):
                bad = [k for k, v in terms.terms.items() if not torch.isfinite(v)]
                raise TrialFailure(f"non-finite loss (terms: {', '.join(bad) or 'total'})",
                                   epoch + 1)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            objective.after_step(step)
            for key, value in terms.as_floats().items():
                sums[key] = sums.get(key, 0.0) + value
        metrics: dict[str, Any] = {k: v / max(1, len(batches)) for k, v in sums.items()}
        metrics.update({"epoch": epoch + 1, "lr": lr,
                        "epoch_time_s": time.perf_counter() - epoch_start})
        torch_save(ckpt_path, {
            "epoch": epoch + 1,
            "student": student.state_dict(),
            "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "metrics": metrics,
        })
        emit({"kind": "epoch", **metrics, **resumed})
        resumed = {}

    student.eval()
    train_feats = embed(student.forward_features, images, mean, std, int(trial.knn["batch_size"]))
    test_feats = embed(student.forward_features, bundle.test.images.to(device), mean, std,
                       int(trial.knn["batch_size"]))
    knn = weighted_knn(train_feats, labels, test_feats, bundle.test.labels.to(device),
                       [int(k) for k in trial.knn["k"]], float(trial.knn["temperature"]),
                       bundle.num_classes)
    torch_save(trial_dir / STUDENT_WEIGHTS, student.state_dict())
    final: dict[str, float] = {f"knn/{k}": v for k, v in knn.items()}
    final.update({f"teacher_knn/{k}": v for k, v in teacher_report.knn.items()})
    final["train_time_s"] = time.perf_counter() - started
    emit({"kind": "final", "epoch": epochs, **final, **resumed})
    return final


def _pool_of(loss_values: Mapping[str, Any]) -> int:
    """Neighbour-graph size an objective needs (CoSS's pool; BINGO's bag)."""
    for key in ("neighbour_pool", "bag_pool", "bag_size"):
        if key in loss_values:
            return int(loss_values[key])
    return 31
