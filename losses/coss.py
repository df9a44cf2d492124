"""CoSS and CoS (Singh & Wang, ECCV 2024; shared/methods.md section 1).

With A_s the student's (projected) raw features and A_t the teacher's raw pooled features
(B x D, no centring, no teacher SSL head):

    L_co = -(1/B) * sum_i cos(A_s[i, :], A_t[i, :])      rows: one D-vector per sample
    L_ss = -(1/D) * sum_j cos(A_s[:, j], A_t[:, j])      columns: one B-vector per dimension,
                                                          normalised along the batch axis
    L    = scale * (L_co + lambda * L_ss)

``scale`` defaults to the official code's 1 / (tau_t * tau_s) = 1 / (0.07 * 0.1) ~ 142.857,
which only rescales the gradient (it interacts with the SGD learning rate). CoS is L_co alone.
Batches follow each anchor with ``neighbours`` images drawn from its top-``neighbour_pool``
teacher neighbours (15 of 31 by default; 0 disables neighbour batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from losses.base import (
    LossTerms,
    Objective,
    ObjectiveContext,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)
from models.heads import coss_projection

OFFICIAL_SCALE = 1.0 / (0.07 * 0.1)


def _check_pair(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher features must both be B x D, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )


def cosine_rows_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_co = -(1/B) sum_i cos(s_i, t_i): per-sample cosine similarity (rows)."""
    _check_pair(student, teacher)
    return -F.cosine_similarity(student, teacher, dim=1).mean()


def space_similarity_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_ss = -(1/D) sum_j cos(s[:, j], t[:, j]): per-dimension cosine over the batch axis.

    Needs B >= 2: a column of a single sample has no direction.
    """
    _check_pair(student, teacher)
    if student.shape[0] < 2:
        raise ValueError(f"space similarity needs a batch of at least 2, got {student.shape[0]}")
    return -F.cosine_similarity(student, teacher, dim=0).mean()


@dataclass(frozen=True)
class CoSSParams:
    lambda_: float = 1.0
    scale: float = OFFICIAL_SCALE
    neighbours: int = 15
    neighbour_pool: int = 31
    hidden_dim: int = 2048

    def __post_init__(self) -> None:
        if self.lambda_ < 0:
            raise ValueError(f"lambda must be >= 0, got {self.lambda_}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if self.neighbours < 0 or self.neighbour_pool < self.neighbours:
            raise ValueError(
                f"need 0 <= neighbours <= neighbour_pool, got {self.neighbours}, "
                f"{self.neighbour_pool}"
            )
        if self.hidden_dim <= 0:
            raise ValueError(f"hidden_dim must be > 0, got {self.hidden_dim}")


@register_objective
class CoSS(Objective):
    """Cosine similarity (rows) + lambda * space similarity (columns) on raw features."""

    name: ClassVar[str] = "coss"
    Params: ClassVar[type[CoSSParams]] = CoSSParams
    summary: ClassVar[str] = "L_co + lambda * L_ss on raw features, neighbour batches (CoSS)"
    params: CoSSParams

    def __init__(self, params: CoSSParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        self.head = coss_projection(ctx.student_dim, ctx.teacher_dim, params.hidden_dim)

    @classmethod
    def requirements(cls, params: CoSSParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(
            min_batch_size=max(2 if params.lambda_ > 0 else 1, params.neighbours + 1),
            neighbour_batches=params.neighbours > 0,
        )

    def neighbour_sampling(self) -> tuple[int, int] | None:
        p = self.params
        return (p.neighbours, p.neighbour_pool) if p.neighbours > 0 else None

    def compute(self, step: StepInputs) -> LossTerms:
        images = step.views[0]
        with torch.no_grad():
            target = step.teacher.features(images)
        projected = self.head(step.student.forward_features(images))
        # The cosines in float32 even under autocast (CPU bf16 autocast keeps them in bf16).
        with torch.autocast(projected.device.type, enabled=False):
            a_s, a_t = projected.float(), target.float()
            terms = {"co": cosine_rows_loss(a_s, a_t)}
            weights = {"co": self.params.scale}
            if self.params.lambda_ > 0:
                terms["ss"] = space_similarity_loss(a_s, a_t)
                weights["ss"] = self.params.scale * self.params.lambda_
        return LossTerms(terms, weights)


@dataclass(frozen=True)
class CoSParams:
    scale: float = OFFICIAL_SCALE
    neighbours: int = 15
    neighbour_pool: int = 31
    hidden_dim: int = 2048

    def __post_init__(self) -> None:
        CoSSParams(0.0, self.scale, self.neighbours, self.neighbour_pool, self.hidden_dim)


@register_objective
class CoS(CoSS):
    """CoSS's main ablation: L_co alone (lambda = 0), same head and neighbour batches."""

    name: ClassVar[str] = "cos"
    Params: ClassVar[type[CoSParams]] = CoSParams  # type: ignore[assignment]
    summary: ClassVar[str] = "L_co alone (CoSS ablation, lambda = 0)"

    def __init__(self, params: CoSParams, ctx: ObjectiveContext) -> None:
        full = CoSSParams(
            0.0, params.scale, params.neighbours, params.neighbour_pool, params.hidden_dim
        )
        super().__init__(full, ctx)

    @classmethod
    def requirements(cls, params: CoSParams) -> ObjectiveRequirements:  # type: ignore[override]
        return ObjectiveRequirements(
            min_batch_size=params.neighbours + 1, neighbour_batches=params.neighbours > 0
        )
