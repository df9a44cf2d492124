"""Evaluators: what a trial measures of its student, registered by name.

Each evaluator takes an :class:`EvalContext` (the student in eval mode, the data, the device)
and returns metrics named ``<evaluator>/<metric>``. Features of the train and test split under
the test-time transform are computed once per evaluation and shared by the evaluators that
need them. ``EvalConfig.every`` > 0 evaluates every N epochs too (step = epoch); the final
value is the last epoch's, and the best one is logged as ``<metric>_best`` with its epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.base import Backbone
from orchestrator.config import TrialConfig
from orchestrator.datasets import DatasetBundle
from orchestrator.engine.precision import autocast
from orchestrator.knn import embed, weighted_knn


@dataclass
class EvalContext:
    trial: TrialConfig
    student: Backbone
    bundle: DatasetBundle
    train_images: Tensor  # uint8, on the device
    device: torch.device

    @functools.cached_property
    def mean_std(self) -> tuple[Tensor, Tensor]:
        return self.bundle.mean.to(self.device), self.bundle.std.to(self.device)

    def _features(self, images: Tensor) -> Tensor:
        mean, std = self.mean_std
        with autocast(self.device, self.trial.train.precision):
            return embed(self.student.forward_features, images, mean, std,
                         self.trial.eval.knn.batch_size)

    @functools.cached_property
    def train_features(self) -> Tensor:
        """L2-normalised backbone features of the training split (test-time transform)."""
        return self._features(self.train_images)

    @functools.cached_property
    def test_features(self) -> Tensor:
        return self._features(self.bundle.test.images.to(self.device))

    @functools.cached_property
    def train_labels(self) -> Tensor:
        return self.bundle.train.labels.to(self.device)

    @functools.cached_property
    def test_labels(self) -> Tensor:
        return self.bundle.test.labels.to(self.device)


Evaluator = Callable[[EvalContext], dict[str, float]]
EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(name: str) -> Callable[[Evaluator], Evaluator]:
    def add(fn: Evaluator) -> Evaluator:
        if name in EVALUATORS:
            raise ValueError(f"evaluator {name!r} registered twice")
        EVALUATORS[name] = fn
        return fn

    return add


@register_evaluator("knn")
def knn_evaluator(ctx: EvalContext) -> dict[str, float]:
    """Weighted kNN on the student backbone (docs/METHODS.md, "Weighted kNN")."""
    knn = ctx.trial.eval.knn
    scores = weighted_knn(ctx.train_features, ctx.train_labels, ctx.test_features,
                          ctx.test_labels, knn.k, knn.temperature, ctx.bundle.num_classes)
    return {f"knn/{k}": v for k, v in scores.items()}


def enabled_evaluators(trial: TrialConfig) -> list[str]:
    """The evaluators a trial runs, in order (kNN always)."""
    return ["knn"]


@torch.no_grad()
def evaluate(trial: TrialConfig, student: Backbone, bundle: DatasetBundle, train_images: Tensor,
             device: torch.device, names: Sequence[str] | None = None) -> dict[str, float]:
    was_training = student.training
    student.eval()
    ctx = EvalContext(trial, student, bundle, train_images, device)
    out: dict[str, float] = {}
    for name in names or enabled_evaluators(trial):
        out.update(EVALUATORS[name](ctx))
    student.train(was_training)
    return out


@dataclass
class BestTracker:
    """The best value of each metric over a trial's evaluations (higher is better)."""

    best: dict[str, tuple[float, int]]

    @classmethod
    def restored(cls, saved: Any) -> BestTracker:
        return cls({k: (float(v), int(e)) for k, (v, e) in dict(saved or {}).items()})

    def update(self, metrics: dict[str, float], epoch: int) -> None:
        for key, value in metrics.items():
            if key not in self.best or value > self.best[key][0]:
                self.best[key] = (value, epoch)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, (value, epoch) in self.best.items():
            out[f"{key}_best"] = value
            out[f"{key}_best_epoch"] = float(epoch)
        return out
