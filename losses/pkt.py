"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer" (ECCV 2018), with the cosine kernel of the authors' code.

On the pooled backbone features (no projection: only B x B kernels are compared, so the
feature dims may differ), with eps = 1e-7:

    x~_i   = x_i / (||x_i|| + eps)
    K[i,j] = (x~_i . x~_j + 1) / 2                       cosine kernel scaled to [0, 1]
    P[i,j] = K[i,j] / sum_k K[i,k]                       row-wise conditional probabilities
    L_pkt  = (1/B^2) sum_{i,j} P_T[i,j] * log((P_T[i,j] + eps) / (P_S[i,j] + eps))

The mean is over all B^2 entries (diagonal included), as in the authors' code
(passalis/probabilistic_kt, copied into RepDistiller as distiller_zoo/PKT.py
``cosine_similarity_loss``). Because of that mean, RepDistiller weights the term by 30000
(``-b 30000``); ``weight`` defaults to that value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from torch import Tensor

from common.fields import Bounds, Config
from losses.base import (
    LossTerms,
    Objective,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)

PKT_EPS = 1e-7


def _conditional_probabilities(x: Tensor, eps: float) -> Tensor:
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    kernel = (x @ x.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = PKT_EPS) -> Tensor:
    """Mean over B^2 entries of P_T log((P_T + eps) / (P_S + eps)) with cosine kernels."""
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher features must be B x D_s and B x D_t, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    with torch.autocast(student.device.type, enabled=False):
        p_s = _conditional_probabilities(student.float(), eps)
        with torch.no_grad():
            p_t = _conditional_probabilities(teacher.float(), eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@dataclass(frozen=True)
class PKTParams(Config):
    weight: Annotated[float, Bounds(gt=0)] = 30000.0


@register_objective
class PKT(Objective[PKTParams]):
    """Probabilistic knowledge transfer (cosine kernel) on pooled backbone features."""

    name: ClassVar[str] = "pkt"
    Params: ClassVar[type[Config]] = PKTParams
    summary: ClassVar[str] = "PKT: KL between cosine-kernel neighbour distributions"
    weight_fields: ClassVar[frozenset[str] | None] = frozenset({"weight"})

    @classmethod
    def term_weights(cls, params: PKTParams, epoch: int) -> dict[str, float]:
        return {"pkt": params.weight}

    @classmethod
    def requirements(cls, params: PKTParams) -> ObjectiveRequirements:
        # With B = 1 the only probability is 1 on both sides: the loss is 0, not an error.
        return ObjectiveRequirements(min_batch_size=2)

    def compute(self, step: StepInputs) -> LossTerms:
        images = step.views[0]
        with torch.no_grad():
            target = step.teacher.features(images)
        feats = step.student.forward_features(images)
        return LossTerms({"pkt": pkt_loss(feats, target)},
                         self.term_weights(self.params, step.epoch))
