"""SMD: Liu et al., "Improving Self-supervised Lightweight Model Learning via Hard-aware Metric
Distillation" (ECCV 2022); docs/METHODS.md.

Teacher: raw pooled features (its SSL head is replaced by identity). Student: pooled backbone
features through ``Linear(D_s, D_t)`` (always, as in the official code). Both are
L2-normalised: t_i, s_i. Then

    D_T[i, j] = ||t_i - t_j||              D[i, j] = ||t_i - s_j||
    N_i = {j != i : D_T[i, j] > D[i, i]}   negatives; positives P_i = the rest (i included)
    n   = argmin_{j in N_i} D[i, j]        hardest negative
    p   = argmax_{j in P_i} D[i, j]        hardest positive
    w_n = max(D_T[i, n] - D[i, n], 0)      w_p = max(D[i, p] - D_T[i, p], 0)   (no gradient)
    L_i = softplus((w_p D[i, p] - w_n D[i, n]) / tau),   L = (1/B) sum_i L_i,   tau = 0.04

A row without negatives contributes softplus(w_p D[i, p] / tau) (its negative logit is 0, as
in the official code, where the masked 1e5 distance gets weight 0). Distances use the
official clamp: sqrt(max(squared distance, 1e-12)).

Checked against the official code (liuhao-lh/SMD, main_distill.py ``SMD``: cross-entropy over
the logits [w_n D_in / tau, w_p D_ip / tau] with label 0, which is the softplus above). The
defaults are the official recipe:
- two views, each scored against the teacher on the same view, the terms averaged over the
  views (``views: 2``; main_distill.py:414-416, ``TwoCropsTransform``);
- a warm-up term ``cos = -(1/V) sum_v mean_i cos(t_i, s_i)`` *added* with weight 1 during the
  first 2 epochs (``cos_warmup_epochs: 2``, compared with ``StepInputs.epoch`` counted from
  0; main_distill.py:418-421: ``loss = cos + distill`` while ``epoch < 2``), weight 0 after;
- tau = 0.04, or 0.004 for MobileNet / EfficientNet students (``tau`` unset; main_distill.py
  :102, 108-109 set it for mobilenetv3_large, efficientnet_b0 / b1; here any student whose
  arch name starts with "mobilenet" or "efficientnet", CIFAR MobileNetV2 included). A value
  given for ``tau`` is used for every student.
``views: 1, cos_warmup_epochs: 0`` is ukd's earlier single-view form. Here i is never its own
negative (the official code relies on D_T[i, i] ~ 1e-6 being below D[i, i]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.fields import Bounds, Config
from losses.base import (
    LossTerms,
    Objective,
    ObjectiveContext,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)
from losses.functional import cosine_rows_loss


def _cross_distances(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """[i, j] = ||a_i - b_j||, squared distance clamped at ``eps`` before the square root."""
    sq = a.pow(2).sum(dim=1, keepdim=True) + b.pow(2).sum(dim=1).unsqueeze(0) - 2.0 * a @ b.t()
    return sq.clamp(min=eps).sqrt()


def smd_loss(student: Tensor, teacher: Tensor, tau: float = 0.04) -> Tensor:
    """Hard-aware metric distillation loss (both inputs are L2-normalised here)."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher features must both be B x D, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    if student.shape[0] < 2:
        raise ValueError(f"smd needs a batch of at least 2, got {student.shape[0]}")
    with torch.autocast(student.device.type, enabled=False):
        s = F.normalize(student.float(), dim=1)
        t = F.normalize(teacher.float(), dim=1)
        with torch.no_grad():
            # A point's distance to itself is 0; the expanded form leaves float32 rounding
            # there (up to ~1e-3 after the square root), which w_p would carry when p = i.
            d_t = _cross_distances(t, t).fill_diagonal_(0.0)
        d = _cross_distances(t, s)
        b = s.shape[0]
        eye = torch.eye(b, dtype=torch.bool, device=s.device)
        negative = (d_t > d.diagonal().detach().unsqueeze(1)) & ~eye
        has_negative = negative.any(dim=1)

        d_n, n = d.masked_fill(~negative, float("inf")).min(dim=1)
        d_p, p = d.masked_fill(negative, float("-inf")).max(dim=1)
        d_n = torch.where(has_negative, d_n, torch.zeros_like(d_n))

        with torch.no_grad():
            t_n = d_t.gather(1, n.unsqueeze(1)).squeeze(1)
            t_p = d_t.gather(1, p.unsqueeze(1)).squeeze(1)
            w_n = torch.where(has_negative, (t_n - d_n).clamp(min=0.0), torch.zeros_like(t_n))
            w_p = (d_p - t_p).clamp(min=0.0)
        return F.softplus((w_p * d_p - w_n * d_n) / tau).mean()


OFFICIAL_TAU = 0.04
SMALL_STUDENT_TAU = 0.004  # the official value for MobileNetV3 / EfficientNet students
SMALL_STUDENTS = ("mobilenet", "efficientnet")  # arch-name prefixes (lower case)


def default_tau(arch: str | None) -> float:
    """The official temperature for a student architecture (main_distill.py:102, 108-109)."""
    name = (arch or "").lower()
    return SMALL_STUDENT_TAU if name.startswith(SMALL_STUDENTS) else OFFICIAL_TAU


@dataclass(frozen=True)
class SMDParams(Config):
    tau: Annotated[float | None, Bounds(gt=0)] = None  # None: 0.04, 0.004 for small students
    weight: Annotated[float, Bounds(gt=0)] = 1.0
    views: Annotated[int, Bounds(ge=1)] = 2
    cos_warmup_epochs: Annotated[int, Bounds(ge=0)] = 2


@register_objective
class SMD(Objective[SMDParams]):
    """Hard-aware metric distillation: teacher raw features, student + Linear(D_s, D_t)."""

    name: ClassVar[str] = "smd"
    Params: ClassVar[type[Config]] = SMDParams
    summary: ClassVar[str] = "SMD: weighted hardest positive / negative metric distillation"

    def __init__(self, params: SMDParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        self.head = nn.Linear(ctx.student_dim, ctx.teacher_dim)

    @classmethod
    def requirements(cls, params: SMDParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(num_views=params.views, min_batch_size=2)

    def compute(self, step: StepInputs) -> LossTerms:
        views = step.views[: self.params.views]
        if len(views) < self.params.views:
            raise ValueError(f"smd expects {self.params.views} views, got {len(step.views)}")
        tau = self.params.tau if self.params.tau is not None else default_tau(
            step.student.arch)
        smd_terms, cos_terms = [], []
        for images in views:
            with torch.no_grad():
                target = step.teacher.features(images)
            projected = self.head(step.student.forward_features(images))
            smd_terms.append(smd_loss(projected, target, tau))
            if self.params.cos_warmup_epochs > 0:
                cos_terms.append(cosine_rows_loss(projected, target))
        terms = {"smd": torch.stack(smd_terms).mean()}
        weights = {"smd": self.params.weight}
        if cos_terms:
            terms["cos"] = torch.stack(cos_terms).mean()
            weights["cos"] = 1.0 if step.epoch < self.params.cos_warmup_epochs else 0.0
        return LossTerms(terms, weights)
