"""CompRess: Abbasi Koohpayegani et al., "CompRess: Self-Supervised Learning by Compressing
Representations" (NeurIPS 2020); docs/METHODS.md.

No projection heads in the main ("2q") variant: L2-normalised pooled features
t_i = n(f_T(x_i)) (teacher, raw features, no SSL head) and s_i = n(f_S(x_i)) (student), and
two FIFO memories of ``queue_size`` rows (128,000 by default): Q_T of past t and Q_S of past
k = n(f_K(x)), where f_K is a momentum copy of the student backbone:

    p_T,i = softmax(Q_T t_i / tau)      p_S,i = softmax(Q_S s_i / tau)       tau = 0.04
    L     = (1/B) sum_i KL(p_T,i || p_S,i)
    after the optimiser step:  enqueue t and k;  theta_K <- m theta_K + (1 - m) theta_S,
                               m = 0.999 (parameters only; f_K's BatchNorm statistics come
                               from its own forward passes in train mode)

"1q" uses Q_T on both sides, p_S,i = softmax(Q_T s_i / tau); the student's features then need
the teacher's dim, so (as in the official ``train_student_one_queue.py``, which replaces the
student's fc) they go through ``Linear(D_s, D_t)`` before the normalisation, and there is no
momentum encoder.

Checked against the official code (UMBCvision/CompRess: nn/compress_loss.py
``CompReSSMomentum`` / ``KLD``, train_student.py ``moment_update``). The memories start as
the official ones (nn/compress_loss.py:34-43, 111-120): every row uniform in (-a, a) with
a = 1 / sqrt(D / 3) for a memory of dim D (so E ||row||^2 = 1), *not* normalised and not
Gaussian, drawn from the trial's model stream; the first step therefore already compares
against ``queue_size`` random rows (about (1/D_t + 1/D_s) / (2 tau^2) for small logits:
0.76 for D_t = 2048, D_s = 512). ``queue_init: empty`` starts with no rows instead: only the
filled rows are used (Q_T and Q_S always hold the same number of rows), and the very first
step has a loss of exactly 0 (still attached to the student's graph). The official code
enqueues inside the forward; here ``after_step`` does it, with the features computed in the
same step. With ``queue_size`` above the training-set size the memory holds
older views of the same images (the official setting is ImageNet, 1.28M images). Memory:
queue_size x (D_t + D_s) floats (2 GB for 128,000 x (2048 + 2048)).

The momentum encoder: the student is not known when the objective is built (only its dims
are), so the encoder is a ``copy.deepcopy`` of ``step.student`` made on the first
``compute`` (or earlier, by calling :meth:`CompRess.attach_student`), registered as the
submodule ``key_encoder`` and therefore saved in ``state_dict``. Restoring a checkpoint into
a fresh objective (no encoder yet) keeps the saved ``key_encoder.*`` tensors aside and loads
them into the copy when it is made; ``state_dict()`` in between still returns them.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from models.base import Backbone
from models.momentum import ema_update_, frozen_copy
from models.queue import FeatureQueue

VARIANTS = ("2q", "1q")
QUEUE_INITS = ("random", "empty")
KEY_ENCODER = "key_encoder"


def compress_loss(
    student: Tensor,
    teacher: Tensor,
    student_memory: Tensor,
    teacher_memory: Tensor,
    tau: float = 0.04,
) -> Tensor:
    """(1/B) sum_i KL(softmax(Q_T n(t_i)/tau) || softmax(Q_S n(s_i)/tau)).

    ``student`` is B x D_s, ``teacher`` B x D_t (normalised here); ``student_memory`` is
    K x D_s and ``teacher_memory`` K x D_t (already normalised, same K >= 1, row k of both
    from the same image). For "1q" pass the teacher memory twice.
    """
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher features must be B x D_s and B x D_t, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student_memory.shape[0] != teacher_memory.shape[0] or student_memory.shape[0] == 0:
        raise ValueError(
            f"memories must hold the same, non-zero number of rows, got "
            f"{student_memory.shape[0]} and {teacher_memory.shape[0]}"
        )
    if student_memory.shape[1] != student.shape[1] or teacher_memory.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"memory dims {student_memory.shape[1]}, {teacher_memory.shape[1]} do not match the "
            f"features' {student.shape[1]}, {teacher.shape[1]}"
        )
    with torch.autocast(student.device.type, enabled=False):
        s = F.normalize(student.float(), dim=1)
        log_p_s = F.log_softmax(s @ student_memory.float().t() / tau, dim=1)
        with torch.no_grad():
            t = F.normalize(teacher.float(), dim=1)
            log_p_t = F.log_softmax(t @ teacher_memory.float().t() / tau, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


@dataclass(frozen=True)
class CompRessParams(Config):
    variant: Annotated[str, Choice(VARIANTS)] = "2q"
    tau: Annotated[float, Bounds(gt=0)] = 0.04
    queue_size: Annotated[int, Bounds(ge=1)] = 128000
    momentum: Annotated[float, Bounds(ge=0, le=1)] = 0.999
    weight: Annotated[float, Bounds(gt=0)] = 1.0
    queue_init: Annotated[str, Choice(QUEUE_INITS)] = "random"  # official: U(-a, a) rows


@register_objective
class CompRess(Objective[CompRessParams]):
    """Similarity-distribution distillation against teacher / momentum-student memories."""

    name: ClassVar[str] = "compress"
    Params: ClassVar[type[Config]] = CompRessParams
    summary: ClassVar[str] = "CompRess: KL of similarities to memories (2q momentum / 1q)"
    key_encoder: Backbone | None
    head: nn.Module

    def __init__(self, params: CompRessParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        k = params.queue_size
        self.teacher_queue = FeatureQueue(k, ctx.teacher_dim)
        self.student_queue: FeatureQueue | None = None
        self._pending: list[tuple[Tensor, Tensor | None]] = []
        self._pending_key_state: dict[str, Tensor] | None = None
        if params.variant == "2q":
            self.head = nn.Identity()
            self.student_queue = FeatureQueue(k, ctx.student_dim)
        else:
            self.head = nn.Linear(ctx.student_dim, ctx.teacher_dim)
        if params.queue_init == "random":
            self.teacher_queue.fill_uniform_(generator=ctx.generator)
            if self.student_queue is not None:
                self.student_queue.fill_uniform_(generator=ctx.generator)
        self.register_module(KEY_ENCODER, None)

    @classmethod
    def requirements(cls, params: CompRessParams) -> ObjectiveRequirements:
        return ObjectiveRequirements()

    @property
    def uses_momentum_encoder(self) -> bool:
        return self.params.variant == "2q"

    @torch.no_grad()
    def attach_student(self, student: Backbone) -> None:
        """Make the momentum encoder now (a frozen deep copy of ``student``); a no-op for
        "1q" or when it exists. Optional: the first :meth:`compute` does it otherwise."""
        if not self.uses_momentum_encoder or self.key_encoder is not None:
            return
        encoder = frozen_copy(student)
        if self._pending_key_state is not None:
            encoder.load_state_dict(self._pending_key_state)
            self._pending_key_state = None
        self.key_encoder = encoder

    def compute(self, step: StepInputs) -> LossTerms:
        images = step.views[0]
        with torch.no_grad():
            target = step.teacher.features(images)
        student = self.head(step.student.forward_features(images))

        keys: Tensor | None = None
        if self.uses_momentum_encoder:
            self.attach_student(step.student)
            assert self.key_encoder is not None and self.student_queue is not None
            with torch.no_grad():
                self.key_encoder.train(step.student.training)
                keys = F.normalize(self.key_encoder.forward_features(images).float(), dim=1)
            student_memory = self.student_queue.valid()
        else:
            student_memory = self.teacher_queue.valid()
        teacher_memory = self.teacher_queue.valid()

        if teacher_memory.shape[0] == 0:
            loss = student.sum() * 0.0  # empty memories: nothing to compare with yet
        else:
            loss = compress_loss(student, target, student_memory, teacher_memory, self.params.tau)
        if self.training:  # no enqueue for evaluation-mode calls
            self._pending.append((F.normalize(target.float(), dim=1), keys))
        return LossTerms({"compress": loss}, {"compress": self.params.weight})

    @torch.no_grad()
    def after_step(self, step: StepInputs) -> None:
        for target, keys in self._pending:
            self.teacher_queue.enqueue(target)
            if self.student_queue is not None and keys is not None:
                self.student_queue.enqueue(keys)
        self._pending.clear()
        if self.key_encoder is not None:
            ema_update_(self.key_encoder.parameters(), step.student.parameters(),
                        self.params.momentum)

    # -- checkpoints: keep a saved momentum encoder until the student is known --------------

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.key_encoder is None and self._pending_key_state is not None:
            for k, v in self._pending_key_state.items():
                destination[f"{prefix}{KEY_ENCODER}.{k}"] = v

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key_prefix = f"{prefix}{KEY_ENCODER}."
        if self.key_encoder is None and isinstance(state_dict, dict):
            saved = {k: state_dict.pop(k) for k in list(state_dict) if k.startswith(key_prefix)}
            if saved and self.uses_momentum_encoder:
                self._pending_key_state = {k[len(key_prefix) :]: v for k, v in saved.items()}
            elif saved:
                unexpected_keys.extend(saved)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
