"""KD: Hinton et al., "Distilling the knowledge in a neural network" (2015).

With z_T, z_S the teacher's and the student's logits for the same view (B x C):

    L_kd = tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))    summed over classes,
                                                                     averaged over the batch
    L_ce = CE(z_S, y)                                               only when ``ce`` > 0
    L    = kd * L_kd + ce * L_ce

tau = 4 as in RepDistiller (HobbitLong/RepDistiller, distiller_zoo/KD.py: ``DistillKL`` sums the
KL and divides by the batch size, i.e. "batchmean", and multiplies by T^2). RepDistiller's KD
runs use ``-r 0.1 -a 0.9`` (CE 0.1, KD 0.9); this project distils without labels, so the
default here is ``kd = 1``, ``ce = 0`` and labels are only required when ``ce > 0``.
Both networks must have a classifier (teacher logits through ``FrozenTeacher.logits``).
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


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """tau^2 * KL(softmax(z_T/tau) || softmax(z_S/tau)), batchmean (float32)."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be B x C, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    with torch.autocast(student_logits.device.type, enabled=False):
        log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
        log_p_t = F.log_softmax(teacher_logits.float() / tau, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * tau**2


@dataclass(frozen=True)
class KDParams:
    tau: float = 4.0
    kd: float = 1.0  # weight of the KD term
    ce: float = 0.0  # weight of the cross-entropy term (needs labels when > 0)

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.kd < 0:
            raise ValueError(f"kd must be >= 0, got {self.kd}")
        if self.ce < 0:
            raise ValueError(f"ce must be >= 0, got {self.ce}")


@register_objective
class KD(Objective):
    """Hinton KD on logits (+ optional cross-entropy with labels)."""

    name: ClassVar[str] = "kd"
    Params: ClassVar[type[KDParams]] = KDParams
    summary: ClassVar[str] = "tau^2 KL(teacher || student) on logits (Hinton), optional CE"
    params: KDParams

    def __init__(self, params: KDParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        if not ctx.teacher_has_classifier:
            raise ValueError("kd needs a teacher with a classifier")
        if not ctx.student_has_classifier:
            raise ValueError("kd needs a student built with a classifier")

    @classmethod
    def requirements(cls, params: KDParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(
            labels=params.ce > 0, teacher_classifier=True, student_classifier=True
        )

    def compute(self, step: StepInputs) -> LossTerms:
        images = step.views[0]
        with torch.no_grad():
            teacher_logits = step.teacher.logits(step.teacher.features(images))
        student_logits = step.student.forward_logits(step.student.forward_features(images))
        terms = {"kd": kd_loss(student_logits, teacher_logits, self.params.tau)}
        weights = {"kd": self.params.kd}
        if self.params.ce > 0:
            if step.labels is None:
                raise ValueError("kd with ce > 0 needs labels, but the batch has none")
            with torch.autocast(student_logits.device.type, enabled=False):
                terms["ce"] = F.cross_entropy(student_logits.float(), step.labels)
            weights["ce"] = self.params.ce
        return LossTerms(terms, weights)
