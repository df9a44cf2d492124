"""CosPress: Mannix, Hodgkinson & Bondell, "Cosine Similarity Preserving Compression"
(TMLR 2025; docs/METHODS.md). Label-free.

A teacher-side head ``h = LayerNorm(D_t) -> Linear(D_t, D_s)`` compresses the teacher's
features into the student's dimension while preserving their cosine similarities, and the
student regresses onto the compressed features. With f_t the teacher's raw pooled features
(B x D_t, no SSL head) and f_s the student's pooled features (B x D_s, no student head):

    C_T[i, j] = cos(f_t,i, f_t,j)         C_h[i, j] = cos(h(f_t,i), h(f_t,j))
                                           (both with the diagonal masked: minus 1e8)
    p = rowsoftmax(C_T / tau)              q = rowsoftmax(C_h / tau)
    P = (p + p^T) / sum_kl (p + p^T)_kl    Q = (q + q^T) / sum_kl (q + q^T)_kl
    sim = (1 / |T|) sum_{tau in T} sum_ij P_ij (log P_ij - log Q_ij)      KL(P || Q)
          T = {0.01, 0.02, ..., 0.10}
    fea = (1 / B) sum_i (1 - cos(f_s,i, sg(h(f_t,i))))
    L   = 1 * sim + 1 * fea

``h`` belongs to the objective and trains jointly with the student (its parameters are in
the student's optimiser, one step for both). Its only gradient comes from ``sim`` (the
teacher features carry none); ``fea`` sees ``h(f_t)`` detached, so it trains the student
alone. The student is evaluated on its backbone features, where ``fea`` acts.

Reading of the official code (emannix/cospress-cosine-similarity-preserving-compression,
``run/CosPress_imagenet_dinov2_vits.yaml`` -> goo/methods/self_supervised/
proteus_vmfsne7_reversed.py, class ``Proteus``) for pooled CNN features:
- the head is ``architecture_heads: proteus`` (LayerNorm then Linear with bias), one head for
  every token (``conjoin_heads: True``); the student head is the identity
  (``architecture: identity``);
- ``sim`` is the "global" vMF-SNE term (``lambda_global: 1``): teacher CLS tokens against
  the all-gathered batch, diagonal masked (``target_mask: True``), ``sne_style: full``
  (symmetrised joint distributions, KL summed over the whole B x B matrix), averaged over the
  10 temperatures. Here the batch is one device's batch and the pooled feature plays the CLS
  token. The "local" term (``lambda_local``: tokens of one image against each other) has no
  pooled-feature analogue and is left out;
- ``fea`` is ``CosineLoss`` (1 - cos, batch mean) with ``freeze_heads_backwards: True``. The
  official student loss has two such terms, all tokens flattened (``lambda_fea``) and the CLS
  token (``lambda_token``); with one pooled vector they are one term here, weight 1.
The official optimiser is AdamW (lr 5e-4, wd 0.05, 300 epochs, batch 1024, 5-epoch warm-up);
ukd trains every objective with the spec's SGD, which the head shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.fields import Bounds, Config
from losses.base import (
    LossTerms,
    Objective,
    ObjectiveContext,
    ObjectiveRequirements,
    StepInputs,
    register_objective,
)

OFFICIAL_TEMPERATURES = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10)
MASK = 1e8  # subtracted from the diagonal of the similarity matrices (official LARGE_NUM)


def cosine_matrix(x: Tensor) -> Tensor:
    """``C[i, j] = cos(x_i, x_j)`` with the diagonal lowered by 1e8 (``B x B``, float32)."""
    z = F.normalize(x.float(), dim=1)
    eye = torch.eye(z.shape[0], device=z.device, dtype=z.dtype)
    return z @ z.T - MASK * eye


def joint_log_distribution(sims: Tensor, tau: float) -> Tensor:
    """``log P`` of the symmetrised joint distribution ``(p + p^T) / sum(p + p^T)`` with
    ``p`` the row-softmax of ``sims / tau`` (log space throughout, like the official code)."""
    log_p = F.log_softmax(sims / tau, dim=1)
    log_joint = torch.logsumexp(torch.stack([log_p, log_p.T]), dim=0)
    return log_joint - torch.logsumexp(log_joint.flatten(), dim=0)


def similarity_preservation_loss(teacher: Tensor, compressed: Tensor,
                                 temperatures: tuple[float, ...] = OFFICIAL_TEMPERATURES
                                 ) -> Tensor:
    """``(1/|T|) sum_tau KL(P_tau(teacher) || Q_tau(compressed))`` over the batch's cosine
    similarities (diagonal masked); ``teacher`` is ``B x D_t`` (no gradient), ``compressed``
    ``B x D_s``. Float32 even under autocast."""
    if teacher.dim() != 2 or compressed.dim() != 2 or teacher.shape[0] != compressed.shape[0]:
        raise ValueError(
            f"need B x D_t and B x D_s features, got {tuple(teacher.shape)} and "
            f"{tuple(compressed.shape)}"
        )
    if teacher.shape[0] < 2:
        raise ValueError(f"cospress needs a batch of at least 2, got {teacher.shape[0]}")
    if not temperatures:
        raise ValueError("need at least one temperature")
    with torch.autocast(compressed.device.type, enabled=False):
        with torch.no_grad():
            c_t = cosine_matrix(teacher.detach())
        c_h = cosine_matrix(compressed)
        total = compressed.new_zeros((), dtype=torch.float32)
        for tau in temperatures:
            with torch.no_grad():
                log_p = joint_log_distribution(c_t, tau)
            log_q = joint_log_distribution(c_h, tau)
            total = total + (log_p.exp() * (log_p - log_q)).sum()
        return total / len(temperatures)


def cosine_regression_loss(student: Tensor, target: Tensor) -> Tensor:
    """``(1/B) sum_i (1 - cos(s_i, t_i))`` with ``target`` detached (official ``CosineLoss``
    with ``freeze_heads_backwards``)."""
    if student.shape != target.shape or student.dim() != 2:
        raise ValueError(
            f"student and target must both be B x D, got {tuple(student.shape)} and "
            f"{tuple(target.shape)}"
        )
    with torch.autocast(student.device.type, enabled=False):
        cos = F.cosine_similarity(student.float(), target.detach().float(), dim=1)
        return (1.0 - cos).mean()


def compression_head(teacher_dim: int, student_dim: int) -> nn.Sequential:
    """``LayerNorm(D_t) -> Linear(D_t, D_s)`` (official ``architecture_heads: proteus``)."""
    return nn.Sequential(nn.LayerNorm(teacher_dim), nn.Linear(teacher_dim, student_dim))


@dataclass(frozen=True)
class CosPressParams(Config):
    sim_weight: Annotated[float, Bounds(ge=0)] = 1.0  # official lambda_global
    fea_weight: Annotated[float, Bounds(ge=0)] = 1.0  # official lambda_fea (+ lambda_token)
    temperatures: Annotated[tuple[float, ...], Bounds(gt=0)] = OFFICIAL_TEMPERATURES

    def check(self) -> None:
        if not self.temperatures:
            raise ValueError("temperatures must list at least one temperature")


@register_objective
class CosPress(Objective[CosPressParams]):
    """Cosine-similarity-preserving teacher head + cosine regression of the student onto it."""

    name: ClassVar[str] = "cospress"
    Params: ClassVar[type[Config]] = CosPressParams
    summary: ClassVar[str] = (
        "CosPress: teacher head compresses to D_s preserving cosines, student regresses on it"
    )

    def __init__(self, params: CosPressParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        self.head = compression_head(ctx.teacher_dim, ctx.student_dim)

    @classmethod
    def requirements(cls, params: CosPressParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(min_batch_size=2)

    def compute(self, step: StepInputs) -> LossTerms:
        images = step.views[0]
        with torch.no_grad():
            target = step.teacher.features(images)
        compressed = self.head(target.float())
        student = step.student.forward_features(images)
        p = self.params
        terms = {
            "sim": similarity_preservation_loss(target, compressed, p.temperatures),
            "fea": cosine_regression_loss(student, compressed),
        }
        return LossTerms(terms, {"sim": p.sim_weight, "fea": p.fea_weight})
