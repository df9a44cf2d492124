"""SEED: Fang et al., "SEED: Self-supervised Distillation For Visual Representation"
(ICLR 2021); docs/METHODS.md.

Teacher and student see the same view. The teacher keeps its SSL head; the student gets
``Linear(D_s, D_s) -> ReLU -> Linear(D_s, E)`` with E the teacher's embedding dim (128 for a
MoCo-v2 teacher, hence "128" in the paper; the student must land in the teacher's space):

    z_T = n(g_T(f_T(x)))       z_S = n(g_S(f_S(x)))       Q = queue of past z_T (K x E)
    D+_i = [z_T,i ; Q]          each sample's own teacher embedding, then the queue
    p_T,i = softmax(z_T,i . D+_i / tau_T)      log p_S,i = log_softmax(z_S,i . D+_i / tau_S)
    L = -(1/B) sum_i sum_j p_T,i[j] * log p_S,i[j],      tau_S = 0.2, tau_T = 1e-4

After the optimiser step (``after_step``) the batch's z_T are enqueued (FIFO, K = 65536 by
default). The queue is a registered buffer (saved in ``state_dict``). Checked against the
official code (jacobswan1/SEED, seed/builder.py ``SEED.forward`` + the soft cross-entropy of
tools/utils.py): same logits and temperatures. The queue starts as K random unit vectors
(normalised Gaussian rows drawn from the trial's model stream), as the official
``F.normalize(torch.randn(dim, K), dim=0)`` (seed/builder.py:52-53), so the first step
already contrasts against K entries (for K = 65,536, E = 128, tau_S = 0.2 its loss is about
11.2 - 5 cos(z_S, z_T)); ``queue_init: empty`` starts with no rows instead (only the filled
part is used, and the first step, D+ = [z_T,i] alone, has a loss of exactly 0). The official
code enqueues inside the forward, here after the step (same order relative to the loss).
Logits are computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from common.fields import Bounds, Choice, Config
from losses.base import (
    LossTerms,
    Objective,
    ObjectiveContext,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)
from models.heads import mlp_head
from models.queue import FeatureQueue

QUEUE_INITS = ("random", "empty")


def seed_loss(
    student: Tensor, teacher: Tensor, queue: Tensor, tau_s: float = 0.2, tau_t: float = 1e-4
) -> Tensor:
    """Soft cross-entropy between teacher and student similarity distributions over
    [own teacher embedding ; queue]. ``student`` and ``teacher`` are B x E, L2-normalised
    here; ``queue`` is K x E (already normalised, K may be 0)."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher embeddings must both be B x E, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    if queue.dim() != 2 or queue.shape[1] != student.shape[1]:
        raise ValueError(f"queue must be K x {student.shape[1]}, got {tuple(queue.shape)}")
    with torch.autocast(student.device.type, enabled=False):
        z_s = F.normalize(student.float(), dim=1)
        z_t = F.normalize(teacher.float(), dim=1)
        q = queue.float()
        logits_s = torch.cat([(z_s * z_t).sum(1, keepdim=True), z_s @ q.t()], dim=1) / tau_s
        with torch.no_grad():
            logits_t = torch.cat([(z_t * z_t).sum(1, keepdim=True), z_t @ q.t()], dim=1)
            p_t = F.softmax(logits_t / tau_t, dim=1)
        return -(p_t * F.log_softmax(logits_s, dim=1)).sum(dim=1).mean()


@dataclass(frozen=True)
class SEEDParams(Config):
    tau_s: Annotated[float, Bounds(gt=0)] = 0.2
    tau_t: Annotated[float, Bounds(gt=0)] = 1e-4
    queue_size: Annotated[int, Bounds(ge=1)] = 65536
    weight: Annotated[float, Bounds(gt=0)] = 1.0
    queue_init: Annotated[str, Choice(QUEUE_INITS)] = "random"  # official: random unit rows


@register_objective
class SEED(Objective[SEEDParams]):
    """Self-supervised distillation against a queue of teacher embeddings."""

    name: ClassVar[str] = "seed"
    Params: ClassVar[type[Config]] = SEEDParams
    summary: ClassVar[str] = "SEED: soft CE over similarities to a queue of teacher embeddings"

    def __init__(self, params: SEEDParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        d, e = ctx.student_dim, ctx.teacher_embedding_dim
        self.head = mlp_head(d, d, e)
        self.queue = FeatureQueue(params.queue_size, e)
        if params.queue_init == "random":
            self.queue.fill_random_(ctx.generator)
        self._pending: list[Tensor] = []

    @classmethod
    def requirements(cls, params: SEEDParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(teacher_embedding=True)

    def compute(self, step: StepInputs) -> LossTerms:
        images = step.views[0]
        with torch.no_grad():
            z_t = F.normalize(step.teacher.embedding(step.teacher.features(images)).float(), dim=1)
        z_s = self.head(step.student.forward_features(images))
        loss = seed_loss(z_s, z_t, self.queue.valid(), self.params.tau_s, self.params.tau_t)
        if self.training:  # no enqueue for evaluation-mode calls
            self._pending.append(z_t)
        return LossTerms({"seed": loss}, {"seed": self.params.weight})

    @torch.no_grad()
    def after_step(self, step: StepInputs) -> None:
        for z_t in self._pending:
            self.queue.enqueue(z_t)
        self._pending.clear()
