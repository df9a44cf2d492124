"""CoSS and CoS (Singh & Wang, ECCV 2024; docs/METHODS.md, "CoSS").

With A_s the student's (projected) raw features and A_t the teacher's raw pooled features
(B x D, no centring, no teacher SSL head):

    L_co = -(1/B) * sum_i cos(A_s[i, :], A_t[i, :])      rows: one D-vector per sample
    L_ss = -(1/D) * sum_j cos(A_s[:, j], A_t[:, j])      columns: one B-vector per dimension,
                                                          normalised along the batch axis
    L    = scale * (L_co + lambda * L_ss)

``scale`` defaults to the official code's 1 / (tau_t * tau_s) = 1 / (0.07 * 0.1) ~ 142.857,
which only rescales the gradient (it interacts with the SGD learning rate). CoS is L_co alone.
Batches follow each anchor with ``neighbours`` images drawn from its top-``neighbour_pool``
teacher neighbours (15 of 31 by default; 0 disables neighbour batches: plain shuffled
batches, as the CIFAR prototype paganpasta/URepDistiller uses). ``epoch_anchors`` is the
share of the training images that anchor once in an epoch: 1.0 (default) is the official
``CFBatchSampler`` (paganpasta/coss-pytorch batch_sampler.py:24-49), every image an anchor
once per epoch, so an epoch shows ``(neighbours + 1) x N`` images (16 N by default) and
"25 epochs" means what the paper's script means; ``1 / (neighbours + 1)`` (0.0625) shows
about N images an epoch, as many as a plain epoch (ukd's earlier meaning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, TypeVar

import torch

from common.fields import Bounds, Config
from losses.base import (
    LossTerms,
    NeighbourBatches,
    Objective,
    ObjectiveContext,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)
from losses.functional import cosine_rows_loss, space_similarity_loss
from models.heads import coss_projection

OFFICIAL_SCALE = 1.0 / (0.07 * 0.1)


@dataclass(frozen=True)
class CoSParams(Config):
    scale: Annotated[float, Bounds(gt=0)] = OFFICIAL_SCALE
    neighbours: Annotated[int, Bounds(ge=0)] = 15
    neighbour_pool: Annotated[int, Bounds(ge=1)] = 31
    hidden_dim: Annotated[int, Bounds(gt=0)] = 2048
    epoch_anchors: Annotated[float, Bounds(gt=0, le=1)] = 1.0  # 1: every image anchors once

    def check(self) -> None:
        _check_neighbours(self.neighbours, self.neighbour_pool)


@dataclass(frozen=True)
class CoSSParams(Config):
    """CoS's parameters with lambda first (the YAML key users sweep)."""

    lambda_: Annotated[float, Bounds(ge=0)] = 1.0
    scale: Annotated[float, Bounds(gt=0)] = OFFICIAL_SCALE
    neighbours: Annotated[int, Bounds(ge=0)] = 15
    neighbour_pool: Annotated[int, Bounds(ge=1)] = 31
    hidden_dim: Annotated[int, Bounds(gt=0)] = 2048
    epoch_anchors: Annotated[float, Bounds(gt=0, le=1)] = 1.0  # 1: every image anchors once

    def check(self) -> None:
        _check_neighbours(self.neighbours, self.neighbour_pool)


def _check_neighbours(neighbours: int, pool: int) -> None:
    if pool < neighbours:
        raise ValueError(f"need 0 <= neighbours <= neighbour_pool, got {neighbours}, {pool}")


Cosine = TypeVar("Cosine", bound=CoSParams | CoSSParams)


class _CosineDistillation(Objective[Cosine]):
    """CoSS and CoS share the head, the neighbour batches and the row term."""

    def __init__(self, params: Cosine, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        self.head = coss_projection(ctx.student_dim, ctx.teacher_dim, params.hidden_dim)

    weight_fields: ClassVar[frozenset[str] | None] = frozenset({"lambda_", "scale"})

    @staticmethod
    def space_weight(params: Cosine) -> float:
        """lambda, the weight of L_ss relative to L_co."""
        raise NotImplementedError

    @classmethod
    def term_weights(cls, params: Cosine, epoch: int) -> dict[str, float]:
        weights = {"co": params.scale}
        if cls.space_weight(params) > 0:
            weights["ss"] = params.scale * cls.space_weight(params)
        return weights

    @classmethod
    def requirements(cls, params: Cosine) -> ObjectiveRequirements:
        space = cls.space_weight(params) > 0
        return ObjectiveRequirements(
            min_batch_size=max(2 if space else 1, params.neighbours + 1),
            neighbour_batches=(NeighbourBatches(params.neighbours, params.neighbour_pool,
                                                params.epoch_anchors)
                               if params.neighbours > 0 else None),
        )

    def compute(self, step: StepInputs) -> LossTerms:
        images = step.views[0]
        with torch.no_grad():
            target = step.teacher.features(images)
        projected = self.head(step.student.forward_features(images))
        weights = self.term_weights(self.params, step.epoch)
        terms = {"co": cosine_rows_loss(projected, target)}
        if "ss" in weights:
            terms["ss"] = space_similarity_loss(projected, target)
        return LossTerms(terms, weights)


@register_objective
class CoSS(_CosineDistillation[CoSSParams]):
    """Cosine similarity (rows) + lambda * space similarity (columns) on raw features."""

    name: ClassVar[str] = "coss"
    Params: ClassVar[type[Config]] = CoSSParams
    summary: ClassVar[str] = "L_co + lambda * L_ss on raw features, neighbour batches (CoSS)"

    @staticmethod
    def space_weight(params: CoSSParams) -> float:
        return params.lambda_


@register_objective
class CoS(_CosineDistillation[CoSParams]):
    """CoSS's main ablation: L_co alone (lambda = 0), same head and neighbour batches."""

    name: ClassVar[str] = "cos"
    Params: ClassVar[type[Config]] = CoSParams
    summary: ClassVar[str] = "L_co alone (CoSS ablation, lambda = 0)"

    @staticmethod
    def space_weight(params: CoSParams) -> float:
        return 0.0
