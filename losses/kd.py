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
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F

from common.fields import Bounds, Config
from losses.base import (
    LossTerms,
    Objective,
    ObjectiveContext,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)
from losses.functional import distill_kl


@dataclass(frozen=True)
class KDParams(Config):
    tau: Annotated[float, Bounds(gt=0)] = 4.0
    kd: Annotated[float, Bounds(ge=0)] = 1.0  # weight of the KD term
    ce: Annotated[float, Bounds(ge=0)] = 0.0  # weight of the cross-entropy term (labels if > 0)


@register_objective
class KD(Objective[KDParams]):
    """Hinton KD on logits (+ optional cross-entropy with labels)."""

    name: ClassVar[str] = "kd"
    Params: ClassVar[type[Config]] = KDParams
    summary: ClassVar[str] = "tau^2 KL(teacher || student) on logits (Hinton), optional CE"
    weight_fields: ClassVar[frozenset[str] | None] = frozenset({"kd", "ce"})

    @classmethod
    def term_weights(cls, params: KDParams, epoch: int) -> dict[str, float]:
        return {"kd": params.kd, **({"ce": params.ce} if params.ce > 0 else {})}

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
        weights = self.term_weights(self.params, step.epoch)
        terms = {"kd": distill_kl(student_logits, teacher_logits, self.params.tau)}
        if "ce" in weights:
            if step.labels is None:
                raise ValueError("kd with ce > 0 needs labels, but the batch has none")
            with torch.autocast(student_logits.device.type, enabled=False):
                terms["ce"] = F.cross_entropy(student_logits.float(), step.labels)
        return LossTerms(terms, weights)
