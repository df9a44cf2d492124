"""Loss formulas shared by several objectives (one home each). Inputs are B x D batches;
every function computes in float32, also under autocast. Also the one-device emulation of
MoCo's shuffled BatchNorm (:func:`shuffled_split_forward`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair(student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher features must both be B x D, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )


def cosine_rows_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``L_co = -(1/B) sum_i cos(s_i, t_i)``: per-sample cosine similarity (rows)."""
    _check_pair(student, teacher)
    with torch.autocast(student.device.type, enabled=False):
        return -F.cosine_similarity(student.float(), teacher.float(), dim=1).mean()


def space_similarity_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``L_ss = -(1/D) sum_j cos(s[:, j], t[:, j])``: per-dimension cosine over the batch axis
    (CoSS's space similarity). Needs B >= 2: a column of a single sample has no direction."""
    _check_pair(student, teacher)
    if student.shape[0] < 2:
        raise ValueError(f"space similarity needs a batch of at least 2, got {student.shape[0]}")
    with torch.autocast(student.device.type, enabled=False):
        return -F.cosine_similarity(student.float(), teacher.float(), dim=0).mean()


def moco_infonce(query: Tensor, key: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """``mean_i CE([q_i . k_i, q_i . Q_1, ..., q_i . Q_K] / tau, 0)`` (inputs normalised)."""
    with torch.autocast(query.device.type, enabled=False):
        q = query.float()
        pos = (q * key.float()).sum(dim=1, keepdim=True)
        neg = q @ queue.float().T
        logits = torch.cat([pos, neg], dim=1) / temperature
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, target)


def sum_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """``sum_i sum_d (s_id - t_id)^2`` (``nn.MSELoss(reduction='sum')``; teacher detached)."""
    if student.shape != teacher.shape:
        raise ValueError(f"shapes differ: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    with torch.autocast(student.device.type, enabled=False):
        return (student.float() - teacher.detach().float()).pow(2).sum()


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
               rows: Tensor | None = None) -> Tensor:
    """``tau^2 * (1/n) sum_i KL(softmax(z_T,i / tau) || softmax(z_S,i / tau))`` over ``rows``
    (all rows when None): Hinton's KD, RepDistiller's ``DistillKL``, SSKD's KL terms. With no
    row kept it is 0, still attached to the graph (the official SSKD code would give NaN)."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be B x C, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if rows is not None:
        student_logits, teacher_logits = student_logits[rows], teacher_logits[rows]
    with torch.autocast(student_logits.device.type, enabled=False):
        if student_logits.shape[0] == 0:
            return student_logits.float().sum() * 0.0
        log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
        log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * temperature**2


def shuffled_split_forward(forward: Callable[[Tensor], Tensor], x: Tensor, splits: int,
                           generator: torch.Generator | None = None) -> Tensor:
    """MoCo's shuffle-BN on one device: the batch is permuted (``generator``; without one the
    order is kept), cut into ``splits`` chunks that go through ``forward`` one at a time (a
    train-mode BatchNorm then normalises each chunk by its own statistics, as each GPU does
    with its share of the shuffled keys in the official code), and the outputs are put back
    in the batch's order. ``splits`` is capped so that every chunk has at least 2 images;
    ``splits <= 1`` is one plain forward."""
    b = x.shape[0]
    splits = min(splits, b // 2)
    if splits <= 1:
        return forward(x)
    if generator is not None:
        perm = torch.randperm(b, generator=generator, device=generator.device).to(x.device)
    else:
        perm = torch.arange(b, device=x.device)
    outs = torch.cat([forward(chunk) for chunk in x[perm].tensor_split(splits)])
    return outs[torch.argsort(perm)]
