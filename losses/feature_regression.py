"""Plain feature regression baselines: ``mse`` and ``cosine``.

The student's pooled features go through the CoSS-style head
``Linear(D_s, hidden) -> ReLU -> Linear(hidden, D_t)`` when D_s != D_t (no head when the dims
match; ``models.heads.coss_projection``), and are regressed onto the teacher's raw pooled
features t_i (no teacher SSL head):

    mse:     L = (1/(B D_t)) sum_{i,d} (s_i[d] - t_i[d])^2          ``normalise = False``
             with ``normalise = True`` both sides are L2-normalised per sample first, which
             equals (2/D_t) * (1 - mean_i cos(s_i, t_i))
    cosine:  L = -(1/B) sum_i cos(s_i, t_i)

``mse`` defaults to raw features: FitNets-style hint regression (RepDistiller's
``HintLoss`` is ``nn.MSELoss()``: a mean over all elements). On normalised features it would
only be a rescaled ``cosine``. The weight defaults to 1. RepDistiller's FitNet runs use 100
(scripts/run_cifar_distill.sh: ``--distill hint -a 0 -b 100``), but for a hint on an
intermediate feature map through a conv regressor; on pooled features through the MLP head,
100 at SGD lr 0.05 diverges in the first epoch (digits, resnet20 student), while 1 learns
slowly (the element mean makes the term small: experiments/baselines.yaml). ``cosine`` is CoS
(L_co of CoSS) without neighbour batches and without the 1/(tau_t tau_s) scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from common.fields import Bounds, Config
from losses.base import (
    LossTerms,
    Objective,
    ObjectiveContext,
    StepInputs,
    register_objective,
)
from losses.functional import cosine_rows_loss
from models.heads import coss_projection


def mse_loss(student: Tensor, teacher: Tensor, normalise: bool = False) -> Tensor:
    """Mean squared error over all B x D elements (optionally of L2-normalised rows)."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher features must both be B x D, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    with torch.autocast(student.device.type, enabled=False):
        s, t = student.float(), teacher.float()
        if normalise:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        return F.mse_loss(s, t)


@dataclass(frozen=True)
class MSEParams(Config):
    weight: Annotated[float, Bounds(gt=0)] = 1.0
    normalise: bool = False
    hidden_dim: Annotated[int, Bounds(gt=0)] = 2048


@dataclass(frozen=True)
class CosineParams(Config):
    weight: Annotated[float, Bounds(gt=0)] = 1.0
    hidden_dim: Annotated[int, Bounds(gt=0)] = 2048


Regression = TypeVar("Regression", bound=MSEParams | CosineParams)


class _Regression(Objective[Regression]):
    """Shared part: head (only when dims differ), teacher raw features, one view."""

    weight_fields: ClassVar[frozenset[str] | None] = frozenset({"weight"})
    term: ClassVar[str]

    @classmethod
    def term_weights(cls, params: Regression, epoch: int) -> dict[str, float]:
        return {cls.term: params.weight}

    def __init__(self, params: Regression, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        self.head = coss_projection(ctx.student_dim, ctx.teacher_dim, params.hidden_dim)

    def _pair(self, step: StepInputs) -> tuple[Tensor, Tensor]:
        images = step.views[0]
        with torch.no_grad():
            target = step.teacher.features(images)
        return self.head(step.student.forward_features(images)), target


@register_objective
class MSE(_Regression[MSEParams]):
    """Mean squared error between projected student and raw teacher features."""

    name: ClassVar[str] = "mse"
    term: ClassVar[str] = "mse"
    Params: ClassVar[type[Config]] = MSEParams
    summary: ClassVar[str] = "MSE feature regression (raw by default) onto teacher features"

    def compute(self, step: StepInputs) -> LossTerms:
        student, teacher = self._pair(step)
        loss = mse_loss(student, teacher, self.params.normalise)
        return LossTerms({"mse": loss}, self.term_weights(self.params, step.epoch))


@register_objective
class Cosine(_Regression[CosineParams]):
    """Negative mean cosine between projected student and raw teacher features."""

    name: ClassVar[str] = "cosine"
    term: ClassVar[str] = "cos"
    Params: ClassVar[type[Config]] = CosineParams
    summary: ClassVar[str] = "-cos feature regression onto teacher features (no neighbours)"

    def compute(self, step: StepInputs) -> LossTerms:
        student, teacher = self._pair(step)
        loss = cosine_rows_loss(student, teacher)
        return LossTerms({"cos": loss}, self.term_weights(self.params, step.epoch))
