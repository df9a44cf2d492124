"""RKD: Park et al., "Relational Knowledge Distillation" (CVPR 2019), distance + angle.

On the pooled backbone features s_i (student) and t_i (teacher) of one batch -- compared
directly, no projection: both terms only use B x B (or B x B x B) relations, so the feature
dims may differ:

    psi_D(i, j)   = ||x_i - x_j|| / mu,   mu = mean of ||x_i - x_j|| over the pairs i != j,
                    psi_D(i, i) = 0
    L_distance    = mean over all B^2 (i, j) of smooth_l1(psi_D^S(i, j), psi_D^T(i, j))
    psi_A(i, j, k) = < n(x_j - x_i), n(x_k - x_i) >       (n(0) = 0)
    L_angle       = mean over all B^3 (i, j, k) of smooth_l1(psi_A^S, psi_A^T)
    L             = distance * L_distance + angle * L_angle,   weights 25 and 50

smooth_l1 is Huber with beta = 1 (``F.smooth_l1_loss``). Checked against RepDistiller
(HobbitLong/RepDistiller, distiller_zoo/RKD.py: ``pdist`` clamps squared distances at 1e-12
before the square root and zeroes the diagonal; the mean is over every element, degenerate
ones included), which applies RKD to the penultimate (pooled) features with w_d = 25, w_a = 50
(and its own extra weight ``-b 1``). The angle term is O(B^2 D) in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from common.fields import Bounds, Config
from losses.base import (
    LossTerms,
    Objective,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)


def _check_batch(student: Tensor, teacher: Tensor, minimum: int, what: str) -> None:
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher features must be B x D_s and B x D_t, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[0] < minimum:
        raise ValueError(f"RKD {what} needs a batch of at least {minimum}, got {student.shape[0]}")


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances (B x B) with the squared distance clamped at ``eps`` and a zero
    diagonal (RepDistiller's ``pdist``)."""
    sq = x.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (x @ x.t())).clamp(min=eps)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def _normalised_distances(x: Tensor) -> Tensor:
    d = pairwise_distances(x)
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d / d[off].mean()


def _angles(x: Tensor) -> Tensor:
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # [i, j] = x_j - x_i
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2))  # [i, j, k]


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Smooth-L1 between mean-normalised pairwise distances (needs B >= 2)."""
    _check_batch(student, teacher, 2, "distance")
    with torch.autocast(student.device.type, enabled=False):
        s = _normalised_distances(student.float())
        with torch.no_grad():
            t = _normalised_distances(teacher.float())
        return F.smooth_l1_loss(s, t)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Smooth-L1 between the cosines of the angles of every triplet (needs B >= 3)."""
    _check_batch(student, teacher, 3, "angle")
    with torch.autocast(student.device.type, enabled=False):
        s = _angles(student.float())
        with torch.no_grad():
            t = _angles(teacher.float())
        return F.smooth_l1_loss(s, t)


@dataclass(frozen=True)
class RKDParams(Config):
    distance: Annotated[float, Bounds(ge=0)] = 25.0  # weight of L_distance
    angle: Annotated[float, Bounds(ge=0)] = 50.0  # weight of L_angle

    def check(self) -> None:
        if self.distance == 0 and self.angle == 0:
            raise ValueError("distance and angle cannot both be 0")


@register_objective
class RKD(Objective[RKDParams]):
    """Relational KD (distance + angle) on pooled backbone features."""

    name: ClassVar[str] = "rkd"
    Params: ClassVar[type[Config]] = RKDParams
    summary: ClassVar[str] = "RKD distance (25) + angle (50) on pooled features"
    weight_fields: ClassVar[frozenset[str] | None] = frozenset({"distance", "angle"})

    @classmethod
    def term_weights(cls, params: RKDParams, epoch: int) -> dict[str, float]:
        return {k: w for k, w in (("distance", params.distance), ("angle", params.angle))
                if w > 0}

    @classmethod
    def requirements(cls, params: RKDParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(min_batch_size=3 if params.angle > 0 else 2)

    def compute(self, step: StepInputs) -> LossTerms:
        images = step.views[0]
        with torch.no_grad():
            target = step.teacher.features(images)
        feats = step.student.forward_features(images)
        weights = self.term_weights(self.params, step.epoch)
        terms: dict[str, Tensor] = {}
        if "distance" in weights:
            terms["distance"] = rkd_distance_loss(feats, target)
        if "angle" in weights:
            terms["angle"] = rkd_angle_loss(feats, target)
        return LossTerms(terms, weights)
