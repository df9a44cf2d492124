"""DisCo: distilled contrastive learning (Gao et al., ECCV 2022; docs/METHODS.md).

The student runs MoCo-v2 on two views and its embedding of each view is pulled towards the
teacher's (official code: ``NetWithLossCell`` in the MindSpore port, ``moco/builder.py``):

    q1 = n(g_S f_S(x1)), q2 = n(g_S f_S(x2))                    student queries (two forwards)
    k  = n(g_K f_K(x2))                                          momentum key encoder (0.999)
    t1 = n(g_T f_T(x1)), t2 = n(g_T f_T(x2))                     teacher with its SSL head
    contrast = CE([q1 . k, q1 . Q] / tau, 0)                     MoCo InfoNCE, tau = 0.2,
                                                                 Q = queue of past k (65,536)
    mse1 = sum ||q1 - t1||^2,  mse2 = sum ||q2 - t2||^2          summed over batch and dims
    L = 1 * contrast + 1 * mse1 + 1 * mse2                       (code: MSELoss(reduction='sum'))

Student head ``g_S``: ``Linear(d, 2048) -> ReLU -> Linear(2048, D)`` where D is the teacher
embedding dim. The official code has D = 128 on both sides and uses the *same* normalised
query for InfoNCE and MSE; we keep that single head and set its output dim to the teacher's
embedding dim (128 for a MoCo-v2 head, the raw feature dim for a teacher without SSL head), so
contrastive learning happens in the space being distilled; the queue is ``queue_size x D``.

The key encoder is a deep copy of the student backbone + head, made on the first
:meth:`DisCo.compute` (the student only arrives with the step); the momentum update and the
enqueue of ``k`` happen in :meth:`DisCo.after_step` (equivalent to MoCo's update at the start of
the next forward). The queue is a shared :class:`~models.queue.FeatureQueue` filled with random
unit vectors at the start, as in MoCo. The copy, the queue and its pointer are in
``state_dict()``; a key-encoder state loaded before the first step is kept aside and applied
when the copy is made.

BatchNorm, as in the official code:
- the teacher runs with batch statistics (``teacher_bn: batch``, the default): the official
  teacher is a submodule of the MoCo wrapper, which ``main.py:422`` puts in train mode, so
  its BatchNorm layers normalise by the statistics of the batch it sees (the official code
  also updates their running statistics, which nothing reads; here they are never updated
  and no teacher weight changes, :meth:`~models.teacher.FrozenTeacher.batch_features`).
  One device: the statistics are those of the whole batch, where each of the official 8 GPUs
  uses its own 32 images. ``teacher_bn: eval`` uses the running statistics instead.
- the momentum key encoder gets MoCo's shuffle-BN, emulated on one device: the key view is
  permuted (``step.rng``), cut into ``key_bn_splits`` chunks (8, the official GPU count)
  normalised one by one, and put back in order (builder:196-200 shuffle across GPUs);
  ``key_bn_splits: 1`` is one forward over the whole batch. The student's queries use the
  statistics of the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.fields import Bounds, Choice, Config
from losses.base import (
    LossTerms,
    Objective,
    ObjectiveContext,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)
from losses.functional import moco_infonce, shuffled_split_forward, sum_mse
from models.base import Backbone
from models.heads import mlp_head
from models.momentum import ema_update_, frozen_copy
from models.queue import FeatureQueue

TEACHER_BN = ("batch", "eval")  # BatchNorm statistics of the teacher forward


class MomentumEncoder(nn.Module):
    """Backbone + head copy updated as ``theta_k <- m theta_k + (1 - m) theta_q``."""

    backbone: Backbone
    head: nn.Module

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = frozen_copy(backbone)
        self.head = frozen_copy(head)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = F.normalize(self.head(self.backbone.forward_features(x)), dim=1)
        return out

    @torch.no_grad()
    def update(self, backbone: nn.Module, head: nn.Module, momentum: float) -> None:
        ema_update_([*self.backbone.parameters(), *self.head.parameters()],
                    [*backbone.parameters(), *head.parameters()], momentum)


@dataclass(frozen=True)
class DisCoParams(Config):
    contrast_weight: Annotated[float, Bounds(ge=0)] = 1.0
    mse1_weight: Annotated[float, Bounds(ge=0)] = 1.0  # view 1 (the MoCo query view)
    mse2_weight: Annotated[float, Bounds(ge=0)] = 1.0  # view 2 (the key view)
    temperature: Annotated[float, Bounds(gt=0)] = 0.2
    momentum: Annotated[float, Bounds(ge=0, le=1)] = 0.999
    queue_size: Annotated[int, Bounds(gt=0)] = 65536
    hidden_dim: Annotated[int, Bounds(gt=0)] = 2048
    teacher_bn: Annotated[str, Choice(TEACHER_BN)] = "batch"  # official: train-mode teacher
    key_bn_splits: Annotated[int, Bounds(ge=1)] = 8  # shuffle-BN chunks of the key view


@register_objective
class DisCo(Objective[DisCoParams]):
    """MoCo-v2 on the student + sum-MSE to the teacher's normalised embedding on both views."""

    name: ClassVar[str] = "disco"
    Params: ClassVar[type[Config]] = DisCoParams
    summary: ClassVar[str] = "student MoCo-v2 + sum-MSE to teacher embeddings, two views (DisCo)"
    key_encoder: MomentumEncoder | None

    def __init__(self, params: DisCoParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        dim = ctx.teacher_embedding_dim
        self.head = mlp_head(ctx.student_dim, params.hidden_dim, dim)
        self.queue = FeatureQueue(params.queue_size, dim).fill_random_(ctx.generator)
        # Registered as an empty slot so that its checkpoint keys are accepted before it exists.
        self.register_module("key_encoder", None)
        self._stashed_key_state: dict[str, Tensor] | None = None
        # Keys of this step's compute calls, enqueued in order after the step (one call a
        # step, or one a device with train.devices > 1: the gathered batch, as DDP's
        # concat_all_gather enqueues it).
        self._pending_keys: list[Tensor] = []

    @classmethod
    def requirements(cls, params: DisCoParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(num_views=2, teacher_embedding=True)

    def _encoder(self, student: Backbone) -> MomentumEncoder:
        if self.key_encoder is None:
            encoder = MomentumEncoder(student, self.head)
            if self._stashed_key_state is not None:
                encoder.load_state_dict(self._stashed_key_state)
                self._stashed_key_state = None
            encoder.train(self.training)
            self.key_encoder = encoder
        return self.key_encoder

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if self.key_encoder is None:
            sub = prefix + "key_encoder."
            stash = {
                k[len(sub) :]: v.detach().clone()
                for k, v in state_dict.items()
                if k.startswith(sub)
            }
            self._stashed_key_state = stash or None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def embed(self, student: Backbone, x: Tensor) -> Tensor:
        """Normalised student query ``n(g_S f_S(x))``."""
        return F.normalize(self.head(student.forward_features(x)), dim=1)

    def compute(self, step: StepInputs) -> LossTerms:
        if len(step.views) < 2:
            raise ValueError(f"disco needs 2 views, got {len(step.views)}")
        p = self.params
        x1, x2 = step.views[0], step.views[1]
        q1 = self.embed(step.student, x1)
        q2 = self.embed(step.student, x2)
        encoder = self._encoder(step.student)
        teacher_forward = (step.teacher.batch_features if p.teacher_bn == "batch"
                           else step.teacher.features)
        with torch.no_grad():
            k = shuffled_split_forward(encoder, x2, p.key_bn_splits, step.rng).float()
            t1 = F.normalize(step.teacher.embedding(teacher_forward(x1)).float(), dim=1)
            t2 = F.normalize(step.teacher.embedding(teacher_forward(x2)).float(), dim=1)
        if t1.shape[1] != q1.shape[1]:
            raise ValueError(
                f"teacher embedding dim {t1.shape[1]} differs from the context's "
                f"teacher_embedding_dim {q1.shape[1]}"
            )
        terms = {
            "contrast": moco_infonce(q1, k, self.queue.valid(), p.temperature),
            "mse1": sum_mse(q1, t1),
            "mse2": sum_mse(q2, t2),
        }
        weights = {
            "contrast": p.contrast_weight,
            "mse1": p.mse1_weight,
            "mse2": p.mse2_weight,
        }
        self._pending_keys.append(k.detach())
        return LossTerms(terms, weights)

    @torch.no_grad()
    def after_step(self, step: StepInputs) -> None:
        """Momentum update of the key encoder, then enqueue this step's keys."""
        if self.key_encoder is not None:
            self.key_encoder.update(step.student, self.head, self.params.momentum)
        for keys in self._pending_keys:
            self.queue.enqueue(keys)
        self._pending_keys.clear()
