"""Batch index samplers over a tensor dataset (no DataLoader), and what an epoch shows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from losses.base import NeighbourBatches


def random_batches(n: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    """A shuffled epoch in full batches (the last partial batch is dropped when there is more
    than one batch: batch-level losses such as L_ss get a full batch every step)."""
    order = torch.randperm(n, generator=gen)
    if n <= batch_size:
        return [order]
    return list(order[: (n // batch_size) * batch_size].split(batch_size))


def anchors_per_epoch(n: int, neighbours: int, batch_size: int, anchors: float = 1.0) -> int:
    """Anchors an epoch of neighbour batches uses: ``floor(anchors * N)`` distinct images
    (at least one batch's worth), cut to whole batches as the official sampler drops its
    incomplete last batch (``CFBatchSampler.__len__ = N // anchors_per_batch``)."""
    if not 0 < anchors <= 1:
        raise ValueError(f"anchors must be in (0, 1], got {anchors}")
    per_batch = max(1, batch_size // (neighbours + 1))
    count = min(n, max(per_batch, math.floor(n * anchors + 1e-9)))
    return (count // per_batch) * per_batch if count >= per_batch else count


def neighbour_batches(
    graph: Tensor, neighbours: int, pool: int, batch_size: int, gen: torch.Generator,
    anchors: float = 1.0,
) -> list[Tensor]:
    """CoSS batches: each anchor (shuffled) is followed by ``neighbours`` images drawn uniformly
    without replacement from its top-``pool`` teacher neighbours, redrawn on every visit;
    ``batch_size // (neighbours + 1)`` anchors a batch.

    ``anchors`` is the share of the training images that anchor once in an epoch. 1.0 is the
    official ``CFBatchSampler`` (paganpasta/coss-pytorch batch_sampler.py:9-49): every image
    is an anchor exactly once per epoch (but the ``N mod anchors_per_batch`` of the dropped
    incomplete last batch), so an epoch shows ``(neighbours + 1) x N`` images.
    ``1 / (neighbours + 1)`` shows about ``N`` images, as many as a plain epoch (ukd's
    meaning before, kept for budgets counted in plain epochs).
    """
    n, available = graph.shape
    if pool > available:
        raise ValueError(f"neighbour pool {pool} exceeds the graph's {available} neighbours")
    group = neighbours + 1
    anchors_per_batch = max(1, batch_size // group)
    count = anchors_per_epoch(n, neighbours, batch_size, anchors)
    # The draws below are those of the earlier sampler for the same number of anchors.
    chosen = torch.randperm(n, generator=gen)[: max(anchors_per_batch, math.floor(
        n * anchors + 1e-9))]
    picks = torch.rand(chosen.numel(), pool, generator=gen).argsort(dim=1)[:, :neighbours]
    drawn = graph[chosen][:, :pool].long().gather(1, picks)  # int32 on disk
    groups = torch.cat([chosen[:, None], drawn], dim=1)  # A x (1 + neighbours)
    return [g.reshape(-1) for g in groups[:count].split(anchors_per_batch)]


@dataclass(frozen=True)
class EpochSize:
    """What one epoch of a trial shows."""

    steps: int
    images: int  # images a step x steps (duplicates counted: a neighbour may recur)
    anchors: int | None  # neighbour batches only: distinct anchors of the epoch


def epoch_size(n: int, batch_size: int, nb: NeighbourBatches | None = None) -> EpochSize:
    """Steps and images of one epoch over ``n`` training images, as :func:`random_batches` /
    :func:`neighbour_batches` build it (nothing is drawn)."""
    if nb is None:
        if n <= batch_size:
            return EpochSize(1, n, None)
        steps = n // batch_size
        return EpochSize(steps, steps * batch_size, None)
    group = nb.neighbours + 1
    per_batch = max(1, batch_size // group)
    count = anchors_per_epoch(n, nb.neighbours, batch_size, nb.anchors)
    steps = math.ceil(count / per_batch)
    return EpochSize(steps, count * group, count)
