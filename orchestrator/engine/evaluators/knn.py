"""Weighted kNN on the student backbone (docs/METHODS.md, "Weighted kNN")."""

from __future__ import annotations

from orchestrator.engine.evaluators.base import EvalContext, register_evaluator
from orchestrator.engine.knn import weighted_knn


@register_evaluator("knn")
def knn_evaluator(ctx: EvalContext) -> dict[str, float]:
    """Weighted kNN on the student backbone (docs/METHODS.md, "Weighted kNN")."""
    knn = ctx.evaluation.knn
    scores = weighted_knn(ctx.train_features, ctx.train_labels, ctx.test_features,
                          ctx.test_labels, knn.k, knn.temperature, ctx.bundle.num_classes)
    return {f"knn/{k}": v for k, v in scores.items()}
