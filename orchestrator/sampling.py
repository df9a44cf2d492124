"""Batch index samplers over a tensor dataset (no DataLoader)."""

from __future__ import annotations

import torch
from torch import Tensor


def random_batches(n: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    """A shuffled epoch in full batches (the last partial batch is dropped when there is more
    than one batch: batch-level losses such as L_ss get a full batch every step)."""
    order = torch.randperm(n, generator=gen)
    if n <= batch_size:
        return [order]
    return list(order[: (n // batch_size) * batch_size].split(batch_size))


def neighbour_batches(
    graph: Tensor, neighbours: int, pool: int, batch_size: int, gen: torch.Generator
) -> list[Tensor]:
    """CoSS batches: each anchor (shuffled) is followed by ``neighbours`` images drawn uniformly
    without replacement from its top-``pool`` teacher neighbours, redrawn every epoch.

    An epoch shows as many images as a plain epoch (N // (neighbours + 1) anchors), so every
    objective gets the same number of steps for the same epoch budget.
    """
    n, available = graph.shape
    if pool > available:
        raise ValueError(f"neighbour pool {pool} exceeds the graph's {available} neighbours")
    group = neighbours + 1
    anchors_per_batch = max(1, batch_size // group)
    anchors = torch.randperm(n, generator=gen)[: max(anchors_per_batch, n // group)]
    picks = torch.rand(anchors.numel(), pool, generator=gen).argsort(dim=1)[:, :neighbours]
    drawn = graph[anchors][:, :pool].gather(1, picks)
    groups = torch.cat([anchors[:, None], drawn], dim=1)  # A x (1 + neighbours)
    usable = (anchors.numel() // anchors_per_batch) * anchors_per_batch
    return [g.reshape(-1) for g in groups[:usable].split(anchors_per_batch)]
