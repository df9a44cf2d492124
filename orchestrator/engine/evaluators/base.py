"""Evaluators: what a trial measures of its student, registered by name.

Each evaluator takes an :class:`EvalContext` (the student in eval mode, the data, the device)
and returns metrics named ``<evaluator>/<metric>``. Features of the train and test split under
the test-time transform are computed once per evaluation and shared by the evaluators that
need them. ``EvalConfig.every`` > 0 evaluates every N epochs too (step = epoch); the final
value is the last epoch's, and the best one is logged as ``<metric>_best`` with its epoch.

The registry lives here; the plug-ins (``knn``, ``linear`` -- the linear probe --, and
``classifier`` -- the model's own logits) are modules of this package that register
themselves, imported by the package's ``__init__``, so no module imports one that imports
it. The same evaluation serves trials (:func:`evaluate`), reference runs and teachers
(:func:`evaluate_model`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.augment import normalise
from models.base import Backbone
from orchestrator.data.datasets import DatasetBundle
from orchestrator.engine.precision import autocast
from orchestrator.spec.config import EvalConfig, TrialConfig


@dataclass
class EvalContext:
    """What an evaluator sees: the model in eval mode, the data, the evaluation settings and
    the seed of the trial (or reference run) being evaluated."""

    evaluation: EvalConfig
    student: Backbone
    bundle: DatasetBundle
    train_images: Tensor  # uint8, on the device
    device: torch.device
    precision: str = "auto"  # train.precision: bf16 forwards on CUDA for auto / bf16
    seed: int = 0  # randomness of an evaluator (the linear probe's batch order)
    transfer_cache: str | None = None  # folder of cached transfer features (None: none)

    @classmethod
    def of_trial(cls, trial: TrialConfig, student: Backbone, bundle: DatasetBundle,
                 train_images: Tensor, device: torch.device) -> EvalContext:
        return cls(trial.eval, student, bundle, train_images, device, trial.train.precision,
                   trial.train.seed)

    @functools.cached_property
    def mean_std(self) -> tuple[Tensor, Tensor]:
        return self.bundle.mean.to(self.device), self.bundle.std.to(self.device)

    @torch.no_grad()
    def _raw(self, images: Tensor) -> Tensor:
        mean, std = self.mean_std
        size = self.evaluation.knn.batch_size
        chunks = []
        with autocast(self.device, self.precision):
            for start in range(0, images.shape[0], size):
                x = normalise(images[start:start + size].float() / 255.0, mean, std)
                chunks.append(self.student.forward_features(x).float())
        return torch.cat(chunks)

    @functools.cached_property
    def train_raw_features(self) -> Tensor:
        """Pooled backbone features of the training split (test-time transform), float32."""
        return self._raw(self.train_images)

    @functools.cached_property
    def test_raw_features(self) -> Tensor:
        return self._raw(self.bundle.test.images.to(self.device))

    @functools.cached_property
    def train_features(self) -> Tensor:
        """L2-normalised backbone features of the training split (test-time transform)."""
        return F.normalize(self.train_raw_features, dim=1)

    @functools.cached_property
    def test_features(self) -> Tensor:
        return F.normalize(self.test_raw_features, dim=1)

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


def evaluator_names(evaluation: EvalConfig, has_classifier: bool) -> list[str]:
    """The evaluators an evaluation runs, in order: kNN always, the linear probe when
    configured, the classifier's accuracy when asked for and the model has a classifier."""
    names = ["knn"]
    if evaluation.linear is not None:
        names.append("linear")
    if evaluation.classifier and has_classifier:
        names.append("classifier")
    if evaluation.transfer is not None:
        names.append("transfer")
    return names


def enabled_evaluators(trial: TrialConfig) -> list[str]:
    """The evaluators a trial runs, in order (kNN always)."""
    return evaluator_names(trial.eval, trial.requirements.student_classifier)


def periodic_evaluators(trial: TrialConfig) -> list[str]:
    """The evaluators of the every-N-epochs evaluations: all but transfer (it runs once, at
    the end: minutes per dataset)."""
    return [n for n in enabled_evaluators(trial) if n != "transfer"]


@torch.no_grad()
def evaluate_model(ctx: EvalContext, names: Sequence[str] | None = None) -> dict[str, float]:
    """Run the evaluators (default: :func:`evaluator_names`) on ``ctx.student``."""
    student = ctx.student
    was_training = student.training
    student.eval()
    out: dict[str, float] = {}
    chosen = names if names is not None else evaluator_names(ctx.evaluation,
                                                             student.has_classifier)
    try:
        for name in chosen:
            out.update(EVALUATORS[name](ctx))
    finally:
        student.train(was_training)
    return out


@torch.no_grad()
def evaluate(trial: TrialConfig, student: Backbone, bundle: DatasetBundle, train_images: Tensor,
             device: torch.device, names: Sequence[str] | None = None) -> dict[str, float]:
    ctx = EvalContext.of_trial(trial, student, bundle, train_images, device)
    return evaluate_model(ctx, names or enabled_evaluators(trial))


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

