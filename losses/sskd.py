"""SSKD: knowledge distillation meets self-supervision (Xu et al., ECCV 2020; seed 001;
docs/METHODS.md). Supervised: needs labels and classifier teacher and student.

Every image becomes 4 copies rotated by 0, 90, 180 and 270 degrees, laid out image-major like
the official code (row ``4i + k`` is image ``i`` rotated ``k`` times). Copy 0 is "normal",
copies 1-3 "transformed" (row ``3i + k - 1`` of the transformed block). The copies come from
the official data pipeline (xuguodong03/SSKD cifar.py:140-165): the stored image is flipped
once (p = 0.5), rotated, and each rotated copy is cropped on its own (``step.rotated``, built
by the trial engine from the data stream; the teacher SS-head stage gets the same pipeline
through ``prepare(rotate=...)``), so the four copies are not rotations of one crop. A
direct call without ``step.rotated`` falls back to rotating ``step.views[0]`` (one crop
rotated four times, an easier rotation task). With ``h`` the SS head
``Linear(d, d) -> ReLU -> Linear(d, d)`` on pooled features, the similarity matrix is

    A[i, j] = cos(h(x~_i), h(x_j))        A in R^{3B x B}; the right column of row i is i // 3

and the loss (tau1 = tau2 = 4, tau3 = 0.5, weights 0.1 / 0.9 / 2.7 / 10 by default) is

    ce    = CE(z_S(x), y)                                                   normal copies
    kd    = tau1^2 KL(softmax(z_T(x)/tau1) || softmax(z_S(x)/tau1))         normal copies
    tf_kd = tau2^2 KL_sel(softmax(z_T(x~)/tau2) || softmax(z_S(x~)/tau2))   3B rotated copies
    ss    = tau3^2 KL_sel(softmax(A_T/tau3) || softmax(A_S/tau3))

KL is "batchmean" over the kept rows. KL_sel keeps rows by selective transfer
(:mod:`losses.selective`): ground truth = label (ratio 1.0) for ``tf_kd``, source image
(ratio 0.75) for ``ss``; wrong rows of equal rank at the cut are kept in a random order drawn
from ``step.rng`` (the official unstable ``argsort`` leaves it unspecified; row order would
favour the 90-degree copies and the first images). With no row kept a term is 0 (the
official code would give NaN).

The teacher SS head is trained once in :meth:`SSKD.prepare` (teacher backbone frozen, BN in
eval, CE(A_T, source index), temperature 1; code: 60 epochs, SGD lr 0.05 momentum 0.9
wd 5e-4, x0.1 at epochs 30 and 45, 64 images (x4 copies) a batch) and frozen afterwards. The
student SS head trains with the student. Both heads belong to the objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

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
from losses.selective import selective_keep_indices
from models.heads import mlp_head
from models.teacher import TeacherOutputs


def rotate_batch(x: Tensor) -> Tensor:
    """``B x C x H x W`` -> ``4B x C x H x W``: row ``4i + k`` is image ``i`` rotated by
    ``k * 90`` degrees (``torch.rot90`` over H, W). Needs square images."""
    if x.dim() != 4:
        raise ValueError(f"need a B x C x H x W batch, got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations need square images, got {x.shape[-2]} x {x.shape[-1]}")
    copies = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return torch.stack(copies, dim=1).flatten(0, 1)


def split_copies(t: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of an image-major ``4B x ...`` tensor -> (normal ``B x ...``, transformed
    ``3B x ...``); transformed row ``3i + k - 1`` is image ``i``'s rotation ``k``."""
    if t.shape[0] % 4 != 0:
        raise ValueError(f"need 4 copies per image, got {t.shape[0]} rows")
    grouped = t.reshape(t.shape[0] // 4, 4, *t.shape[1:])
    return grouped[:, 0], grouped[:, 1:].flatten(0, 1)


def similarity_matrix(transformed: Tensor, normal: Tensor) -> Tensor:
    """``A[i, j] = cos(transformed[i], normal[j])`` (``3B x B``), in float32 even under
    autocast (it is small, and the selective-transfer ranks are read from it)."""
    with torch.autocast(device_type=normal.device.type, enabled=False):
        return F.normalize(transformed.float(), dim=1) @ F.normalize(normal.float(), dim=1).T


def source_targets(batch: int, device: torch.device) -> Tensor:
    """Column of each transformed row's source image: ``[0, 0, 0, 1, 1, 1, ...]``."""
    return torch.arange(batch, device=device).repeat_interleave(3)


@dataclass(frozen=True)
class SSKDParams(Config):
    ce_weight: Annotated[float, Bounds(ge=0)] = 0.1
    kd_weight: Annotated[float, Bounds(ge=0)] = 0.9
    tf_kd_weight: Annotated[float, Bounds(ge=0)] = 2.7
    ss_weight: Annotated[float, Bounds(ge=0)] = 10.0
    kd_temperature: Annotated[float, Bounds(gt=0)] = 4.0  # tau1, normal copies
    tf_temperature: Annotated[float, Bounds(gt=0)] = 4.0  # tau2, rotated copies
    ss_temperature: Annotated[float, Bounds(gt=0)] = 0.5  # tau3, similarity matrix
    tf_ratio: Annotated[float, Bounds(ge=0, le=1)] = 1.0  # wrong rows kept (transformed KD)
    ss_ratio: Annotated[float, Bounds(ge=0, le=1)] = 0.75  # same for the SS term
    teacher_head_epochs: Annotated[int, Bounds(ge=0)] = 60  # stage 2; 0 keeps the random head
    teacher_head_lr: Annotated[float, Bounds(gt=0)] = 0.05
    teacher_head_milestones: tuple[int, ...] = (30, 45)
    teacher_head_gamma: Annotated[float, Bounds(gt=0, le=1)] = 0.1
    teacher_head_batch_size: Annotated[int, Bounds(ge=2)] = 64  # images a batch (x4 copies)
    teacher_head_momentum: Annotated[float, Bounds(ge=0, lt=1)] = 0.9
    teacher_head_weight_decay: Annotated[float, Bounds(ge=0)] = 5e-4

    def check(self) -> None:
        milestones = self.teacher_head_milestones
        if any(m < 0 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(
                f"teacher_head_milestones must be increasing epochs >= 0, got {milestones}"
            )


@register_objective
class SSKD(Objective[SSKDParams]):
    """CE + KD on normal copies + selective KD on rotated copies + selective SS similarity KD."""

    name: ClassVar[str] = "sskd"
    Params: ClassVar[type[Config]] = SSKDParams
    summary: ClassVar[str] = (
        "KD + rotation self-supervision with selective transfer (SSKD; labels, classifiers)"
    )
    teacher_head_ready: Tensor

    def __init__(self, params: SSKDParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        self.student_head = mlp_head(ctx.student_dim, ctx.student_dim, ctx.student_dim)
        self.teacher_head = mlp_head(ctx.teacher_dim, ctx.teacher_dim, ctx.teacher_dim)
        self.teacher_head.requires_grad_(False)  # trained only inside prepare()
        # Saved with the objective so that a resumed trial does not retrain the teacher head.
        self.register_buffer("teacher_head_ready", torch.zeros((), dtype=torch.bool))
        self.prepare_log: list[dict[str, float]] = []

    @classmethod
    def requirements(cls, params: SSKDParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(
            labels=True, teacher_classifier=True, student_classifier=True, min_batch_size=2,
            rotated_views=True,
        )

    # ---- stage 2: the teacher SS head ------------------------------------------------------

    def prepare(
        self,
        teacher: TeacherOutputs,
        train_images: Tensor,
        train_labels: Tensor | None,
        augment: Callable[[Tensor], Tensor],
        device: torch.device,
        generator: torch.Generator | None = None,
        rotate: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Train the teacher SS head with CE(A_T, source index) on the frozen teacher.

        ``rotate`` maps a batch of stored training images (``train_images[idx]``) to their
        ``4B`` rotated, separately cropped copies, the pipeline the student sees; without it
        ``augment`` (one normalised view) is rotated. Skipped when the head is already
        trained (e.g. restored from a checkpoint).
        """
        if bool(self.teacher_head_ready):
            return
        p = self.params
        head = self.teacher_head.to(device)
        head.train()
        head.requires_grad_(True)
        optimiser = torch.optim.SGD(
            head.parameters(),
            lr=p.teacher_head_lr,
            momentum=p.teacher_head_momentum,
            weight_decay=p.teacher_head_weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimiser, milestones=list(p.teacher_head_milestones), gamma=p.teacher_head_gamma
        )
        n = int(train_images.shape[0])
        self.prepare_log = []
        try:
            with torch.enable_grad():
                for epoch in range(p.teacher_head_epochs):
                    order = torch.randperm(n, generator=generator).to(train_images.device)
                    loss_sum, correct, rows = 0.0, 0, 0
                    for start in range(0, n, p.teacher_head_batch_size):
                        idx = order[start : start + p.teacher_head_batch_size]
                        if idx.numel() < 2:
                            continue  # one image has no other column to contrast with
                        if rotate is not None:
                            x4 = rotate(train_images[idx]).to(device)
                        else:
                            x4 = rotate_batch(augment(train_images[idx]).to(device))
                        feats = teacher.features(x4).float()
                        normal, transformed = split_copies(head(feats))
                        sim = similarity_matrix(transformed, normal)
                        target = source_targets(normal.shape[0], sim.device)
                        loss = F.cross_entropy(sim, target)
                        optimiser.zero_grad(set_to_none=True)
                        loss.backward()
                        optimiser.step()
                        loss_sum += float(loss.detach()) * target.numel()
                        correct += int((sim.detach().argmax(1) == target).sum())
                        rows += target.numel()
                    scheduler.step()
                    self.prepare_log.append(
                        {
                            "epoch": float(epoch + 1),
                            "loss": loss_sum / max(rows, 1),
                            "acc": 100.0 * correct / max(rows, 1),
                        }
                    )
        finally:
            head.requires_grad_(False)
        self.teacher_head_ready.fill_(True)

    # ---- stage 3: the student --------------------------------------------------------------

    def compute(self, step: StepInputs) -> LossTerms:
        if step.labels is None:
            raise ValueError("sskd needs class labels (step.labels is None)")
        if not bool(self.teacher_head_ready):
            raise RuntimeError(
                "sskd: the teacher SS head is untrained; call prepare() before training "
                "(teacher_head_epochs: 0 to skip the stage on purpose)"
            )
        x4 = step.rotated if step.rotated is not None else rotate_batch(step.views[0])
        if x4.shape[0] % 4:
            raise ValueError(f"sskd's rotated batch needs 4 copies an image, got {x4.shape[0]}")
        batch = x4.shape[0] // 4
        if batch < 2:
            raise ValueError(f"sskd needs a batch of at least 2 images, got {batch}")
        p = self.params
        labels = step.labels.to(x4.device).long()

        s_feat = step.student.forward_features(x4)
        s_logits = step.student.forward_logits(s_feat)
        s_rep = self.student_head(s_feat)
        with torch.no_grad():
            t_feat = step.teacher.features(x4)
            t_logits = step.teacher.logits(t_feat).float()
            t_rep = self.teacher_head(t_feat)

        s_nor_logits, s_tf_logits = split_copies(s_logits)
        t_nor_logits, t_tf_logits = split_copies(t_logits)
        s_nor_rep, s_tf_rep = split_copies(s_rep)
        s_sim = similarity_matrix(s_tf_rep, s_nor_rep)
        with torch.no_grad():
            t_nor_rep, t_tf_rep = split_copies(t_rep)
            t_sim = similarity_matrix(t_tf_rep, t_nor_rep)

        tf_rows = selective_keep_indices(t_tf_logits, labels.repeat_interleave(3), p.tf_ratio,
                                         step.rng)
        ss_rows = selective_keep_indices(t_sim, source_targets(batch, x4.device), p.ss_ratio,
                                         step.rng)

        terms = {
            "ce": F.cross_entropy(s_nor_logits.float(), labels),
            "kd": distill_kl(s_nor_logits, t_nor_logits, p.kd_temperature),
            "tf_kd": distill_kl(s_tf_logits, t_tf_logits, p.tf_temperature, tf_rows),
            "ss": distill_kl(s_sim, t_sim, p.ss_temperature, ss_rows),
        }
        weights = {
            "ce": p.ce_weight,
            "kd": p.kd_weight,
            "tf_kd": p.tf_kd_weight,
            "ss": p.ss_weight,
        }
        return LossTerms(terms, weights)

    def extra_repr(self) -> str:
        return f"params={self.params}"
