"""BINGO: bag of instances aggregation (Xu et al., ICLR 2022; docs/METHODS.md).

Implemented after the official code (haohang96/bingo: ``moco/builder.py``, ``main_moco.py``,
``moco/folder.py``, ``utils.cutmix``). A bag is an image plus its top-``bag_size`` (5) teacher
neighbours (``step.neighbours``, self excluded); each step draws one neighbour ``p`` per anchor
``a`` uniformly from the bag and fetches two fresh augmentations of it with ``step.fetch``.

    queries (student, backbone + head ``Linear(d, 2048) -> ReLU -> Linear(2048, D)``, D the
    teacher embedding dim, normalised):
        q_a = n(g_S f_S(views[0])),  q_p = n(g_S f_S(p_1)),  q_m = n(g_S f_S(cutmix(views[0], p_1)))
    keys (frozen teacher with its SSL head, normalised):
        k_a = n(g_T f_T(views[1])),  k_p = n(g_T f_T(p_2))
    CE_j(q) = CE([q . k_j, q . Q] / tau, 0)    tau = 0.2, Q = queue of past k_a (65,536)
    anchor    = w_s CE_a(q_a) + w_o CE_p(q_a)
    neighbour = w_o CE_a(q_p) + w_s CE_p(q_p)
    mix       = lam CE_a(q_m) + (1 - lam) CE_p(q_m)
    L = (anchor + neighbour + mix) / 3         (weights 1/3 each, as params)

(w_s, w_o) = (0.5, 0.5), except (1, 0) during the first ``warmup_epochs`` = 11 epochs (code:
``epoch > 10`` with epochs counted from 0; ``step.epoch`` is read the same way). CutMix as in
the code: ``lam ~ Beta(2, 2)``, one box for the whole batch with side ``sqrt(1 - lam)`` of the
image's, centred uniformly and clipped; the neighbour fills the box; ``lam`` is then the share
of the anchor left visible. Only the anchors' teacher keys ``k_a`` enter the queue.

The teacher keys use batch statistics (``teacher_bn: batch``, the default): the official
script never calls ``model.train()`` / ``eval()``, so the whole model, the frozen teacher
``encoder_k`` included, stays in PyTorch's default train mode and its BatchNorm layers
normalise by the statistics of the keys they see (moco/builder.py:157-172 feeds them through
shuffle-BN across the 8 GPUs of a subgroup). Here the teacher's weights and running statistics
are never updated (:meth:`~models.teacher.FrozenTeacher.batch_features`); on one device each
key forward (the anchors' key view, the fetched neighbours) is normalised over its whole batch,
which a shuffle would not change, where each official GPU normalises its 32 shuffled keys.
``teacher_bn: eval`` uses the running statistics instead.

Simplifications: the student head ends at the teacher embedding dim (the code has 128 on both
sides); the CutMix box is drawn along (H, W) properly (the code's names swap H and W, which
only matters for non-square images).
"""

from __future__ import annotations

import math
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
from models.base import Backbone
from models.heads import mlp_head
from models.queue import FeatureQueue

TEACHER_BN = ("batch", "eval")  # BatchNorm statistics of the teacher forward


def multi_positive_infonce(
    query: Tensor, keys: Tensor, queue: Tensor, weights: Tensor, temperature: float
) -> Tensor:
    """``mean_i sum_j w_ij CE([q_i . k_ij, q_i . Q] / tau, 0)``.

    ``query``: ``B x D``; ``keys``: ``B x P x D`` (P positives, each scored against the same
    queue negatives); ``queue``: ``K x D``; ``weights``: ``P`` or ``B x P``. Float32 even
    under autocast.
    """
    if keys.dim() != 3 or keys.shape[0] != query.shape[0] or keys.shape[2] != query.shape[1]:
        raise ValueError(
            f"keys must be B x P x D for queries {tuple(query.shape)}, got {tuple(keys.shape)}"
        )
    query = query.float()
    with torch.autocast(device_type=query.device.type, enabled=False):
        pos = torch.einsum("bd,bpd->bp", query, keys.float()) / temperature  # B x P
        neg = query @ queue.float().T / temperature
    neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)
    ce = torch.logaddexp(pos, neg_lse) - pos  # -log softmax of the positive, per key
    w = weights.to(ce).expand_as(ce)
    return (w * ce).sum(dim=1).mean()


def cutmix_box(height: int, width: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """``(y1, y2, x1, x2)``: a box of ``sqrt(1 - lam)`` of each side centred at ``(cy, cx)``,
    clipped to the image (``utils.rand_bbox`` of the BINGO / CutMix code)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    y1 = min(max(cy - cut_h // 2, 0), height)
    y2 = min(max(cy + cut_h // 2, 0), height)
    x1 = min(max(cx - cut_w // 2, 0), width)
    x2 = min(max(cx + cut_w // 2, 0), width)
    return y1, y2, x1, x2


def cutmix(anchor: Tensor, other: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, float]:
    """Paste ``other``'s box into a copy of ``anchor``; returns the image and the share of the
    anchor left visible (the weight of the anchor's key)."""
    if anchor.shape != other.shape:
        raise ValueError(f"shapes differ: {tuple(anchor.shape)} vs {tuple(other.shape)}")
    y1, y2, x1, x2 = box
    mixed = anchor.clone()
    mixed[:, :, y1:y2, x1:x2] = other[:, :, y1:y2, x1:x2]
    h, w = anchor.shape[-2:]
    return mixed, 1.0 - (y2 - y1) * (x2 - x1) / (h * w)


def sample_bag_neighbours(
    neighbours: Tensor, indices: Tensor, bag_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """One neighbour per anchor, uniform over its top-``bag_size`` teacher neighbours."""
    if neighbours.dim() != 2 or neighbours.shape[1] < bag_size:
        raise ValueError(
            f"need an N x K neighbour graph with K >= {bag_size}, got {tuple(neighbours.shape)}"
        )
    rows = neighbours[indices.to(neighbours.device).long()]
    cols = torch.randint(
        0, bag_size, (rows.shape[0], 1), generator=generator, device=neighbours.device
    )
    return rows.gather(1, cols).squeeze(1)


@dataclass(frozen=True)
class BINGOParams(Config):
    anchor_weight: Annotated[float, Bounds(ge=0)] = 1.0 / 3.0
    neighbour_weight: Annotated[float, Bounds(ge=0)] = 1.0 / 3.0
    mix_weight: Annotated[float, Bounds(ge=0)] = 1.0 / 3.0
    temperature: Annotated[float, Bounds(gt=0)] = 0.2
    queue_size: Annotated[int, Bounds(gt=0)] = 65536
    bag_size: Annotated[int, Bounds(ge=1)] = 5
    self_lam: Annotated[float, Bounds(ge=0)] = 0.5  # weight of a query's own key with bags
    other_lam: Annotated[float, Bounds(ge=0)] = 0.5  # weight of the other bag member's key
    warmup_epochs: Annotated[int, Bounds(ge=0)] = 11  # epochs (from 0) with the own key only
    cutmix_alpha: Annotated[float, Bounds(gt=0)] = 2.0
    hidden_dim: Annotated[int, Bounds(gt=0)] = 2048
    teacher_bn: Annotated[str, Choice(TEACHER_BN)] = "batch"  # official: train-mode teacher


@register_objective
class BINGO(Objective[BINGOParams]):
    """Student queries vs teacher keys of anchor + bag neighbour, plus a CutMix term."""

    name: ClassVar[str] = "bingo"
    Params: ClassVar[type[Config]] = BINGOParams
    summary: ClassVar[str] = "bag-of-instances contrastive distillation + CutMix (BINGO)"

    def __init__(self, params: BINGOParams, ctx: ObjectiveContext) -> None:
        super().__init__(params, ctx)
        dim = ctx.teacher_embedding_dim
        self.head = mlp_head(ctx.student_dim, params.hidden_dim, dim)
        self.queue = FeatureQueue(params.queue_size, dim).fill_random_(ctx.generator)
        # Keys of this step's compute calls, enqueued in order after the step (one call a
        # step, or one a device with train.devices > 1: the gathered batch, as DDP's
        # concat_all_gather enqueues it).
        self._pending_keys: list[Tensor] = []

    @classmethod
    def requirements(cls, params: BINGOParams) -> ObjectiveRequirements:
        return ObjectiveRequirements(num_views=2, neighbour_graph=params.bag_size,
                                     teacher_embedding=True)

    def embed(self, student: Backbone, x: Tensor) -> Tensor:
        """Normalised student query ``n(g_S f_S(x))``."""
        return F.normalize(self.head(student.forward_features(x)), dim=1)

    def draw_cutmix_box(self, height: int, width: int, generator: torch.Generator | None = None
                        ) -> tuple[int, int, int, int]:
        """``lam ~ Beta(alpha, alpha)`` and a uniform centre, drawn from ``generator``
        (Beta(a, a) as X / (X + Y) with X, Y ~ Gamma(a): torch's Beta takes no generator)."""
        alpha = torch.full((2,), self.params.cutmix_alpha)
        gammas = torch._standard_gamma(alpha, generator=generator)
        lam = float(gammas[0] / gammas.sum())
        centre = torch.randint(0, height * width, (), generator=generator)
        cy, cx = divmod(int(centre), width)
        return cutmix_box(height, width, lam, cy, cx)

    def bag_weights(self, epoch: int) -> tuple[float, float]:
        if epoch < self.params.warmup_epochs:
            return 1.0, 0.0
        return self.params.self_lam, self.params.other_lam

    def compute(self, step: StepInputs) -> LossTerms:
        if len(step.views) < 2:
            raise ValueError(f"bingo needs 2 views, got {len(step.views)}")
        if step.neighbours is None or step.fetch is None:
            raise ValueError("bingo needs the teacher neighbour graph and step.fetch")
        p = self.params
        x_q, x_k = step.views[0], step.views[1]
        nb = sample_bag_neighbours(step.neighbours, step.indices, p.bag_size, step.rng)
        nb_q = step.fetch(nb).to(device=x_q.device, dtype=x_q.dtype)
        nb_k = step.fetch(nb).to(device=x_k.device, dtype=x_k.dtype)
        box = self.draw_cutmix_box(x_q.shape[-2], x_q.shape[-1], step.rng)
        mixed, lam = cutmix(x_q, nb_q, box)

        q_a = self.embed(step.student, x_q)
        q_p = self.embed(step.student, nb_q)
        q_m = self.embed(step.student, mixed)
        teacher_forward = (step.teacher.batch_features if p.teacher_bn == "batch"
                           else step.teacher.features)
        with torch.no_grad():
            k_a = F.normalize(step.teacher.embedding(teacher_forward(x_k)).float(), dim=1)
            k_p = F.normalize(step.teacher.embedding(teacher_forward(nb_k)).float(), dim=1)
        if k_a.shape[1] != q_a.shape[1]:
            raise ValueError(
                f"teacher embedding dim {k_a.shape[1]} differs from the context's "
                f"teacher_embedding_dim {q_a.shape[1]}"
            )
        keys = torch.stack([k_a, k_p], dim=1)
        queue = self.queue.valid()
        w_self, w_other = self.bag_weights(step.epoch)
        dev = q_a.device
        terms = {
            "anchor": multi_positive_infonce(
                q_a, keys, queue, torch.tensor([w_self, w_other], device=dev), p.temperature
            ),
            "neighbour": multi_positive_infonce(
                q_p, keys, queue, torch.tensor([w_other, w_self], device=dev), p.temperature
            ),
            "mix": multi_positive_infonce(
                q_m, keys, queue, torch.tensor([lam, 1.0 - lam], device=dev), p.temperature
            ),
        }
        weights = {
            "anchor": p.anchor_weight,
            "neighbour": p.neighbour_weight,
            "mix": p.mix_weight,
        }
        self._pending_keys.append(k_a.detach())
        return LossTerms(terms, weights)

    @torch.no_grad()
    def after_step(self, step: StepInputs) -> None:
        """Enqueue this step's anchor teacher keys."""
        for keys in self._pending_keys:
            self.queue.enqueue(keys)
        self._pending_keys.clear()
