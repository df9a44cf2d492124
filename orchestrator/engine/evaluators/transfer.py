"""Transfer evaluation of the student backbone on downstream datasets
(:mod:`orchestrator.engine.transfer`; docs/RECIPES.md, "Transfer evaluation")."""

from __future__ import annotations

from orchestrator.engine.evaluators.base import EvalContext, register_evaluator
from orchestrator.engine.transfer import Extractor, transfer_metrics


@register_evaluator("transfer")
def transfer_evaluator(ctx: EvalContext) -> dict[str, float]:
    """``transfer/<dataset>/<metric>``: features at the transfer transform with the
    student's own input normalisation, computed once per dataset (and kept in
    ``ctx.transfer_cache`` when given)."""
    cfg = ctx.evaluation.transfer
    if cfg is None:
        return {}
    mean, std = ctx.mean_std
    extract = Extractor(ctx.student, mean, std, ctx.device, ctx.precision)
    return transfer_metrics(extract, cfg, ctx.transfer_cache)
