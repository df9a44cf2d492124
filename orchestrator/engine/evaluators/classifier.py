"""Classifier accuracy: top-1 / top-5 of the model's own logits on the test split (students
trained with a classifier -- KD, SSKD -- and the supervised_only reference)."""

from __future__ import annotations

import torch

from orchestrator.engine.evaluators.base import EvalContext, register_evaluator
from orchestrator.engine.evaluators.linear import accuracy

PREFIX = "classifier/"


@register_evaluator("classifier")
@torch.no_grad()
def classifier_evaluator(ctx: EvalContext) -> dict[str, float]:
    """The classifier on the cached pooled test features (the same forward as the model's
    own ``forward_logits(forward_features(x))``); nothing for a model without one."""
    student = ctx.student
    if not student.has_classifier or student.num_classes != ctx.bundle.num_classes:
        return {}
    logits = student.forward_logits(ctx.test_raw_features.to(_dtype(student)))
    scores = accuracy(logits.float(), ctx.test_labels)
    return {PREFIX + k: v for k, v in scores.items()}


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
