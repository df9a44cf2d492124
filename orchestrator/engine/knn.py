"""Weighted kNN evaluation (InstDisc / DINO protocol; docs/METHODS.md, "Weighted kNN").

Features are L2-normalised, similarity is the dot product, each of the top-k train neighbours
votes for its label with weight exp(sim / T); all k come from one similarity pass (top-max(k),
then prefixes). Top-1 and top-5 are percentages.

Top-5 ranks at most min(5, k, C) classes, as DINO (eval_knn.py: ``correct[:, :min(5, k)]``)
and solo-learn (solo/utils/knn.py: ``min(5, k, C)``) do, so at k = 1 top-5 equals top-1; and
only classes that received a vote count. The two libraries agree with this whenever at least
min(5, k) classes receive votes; when fewer do (k >= 5 neighbours from fewer than 5 classes)
they fill the remaining slots with zero-score classes in torch.sort's tie order, which is
unspecified, so an unvoted true class can count as a hit there and not here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from models.augment import normalise


@torch.no_grad()
def embed(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    mean: Tensor,
    std: Tensor,
    batch_size: int = 512,
) -> Tensor:
    """L2-normalised features of uint8 images under the test-time transform (no augmentation)."""
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        x = normalise(images[start:start + batch_size].float() / 255.0, mean, std)
        chunks.append(F.normalize(forward(x).float(), dim=1))
    return torch.cat(chunks)


@torch.no_grad()
def weighted_knn(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int],
    temperature: float,
    num_classes: int,
    chunk: int = 512,
) -> dict[str, float]:
    """Return ``{"top1_k{k}": %, "top5_k{k}": %}`` for every k (features already normalised)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    max_k = min(max(ks), train_features.shape[0])
    correct1 = {k: 0 for k in ks}
    correct5 = {k: 0 for k in ks}
    for start in range(0, test_features.shape[0], chunk):
        queries = test_features[start:start + chunk]
        truth = test_labels[start:start + chunk]
        sims, idx = (queries @ train_features.T).topk(max_k, dim=1)
        weights = (sims / temperature).exp()
        votes = train_labels[idx]
        for k in ks:
            kk = min(k, max_k)
            scores = torch.zeros(queries.shape[0], num_classes, device=queries.device)
            scores.scatter_add_(1, votes[:, :kk], weights[:, :kk])
            ranked = scores.topk(min(5, num_classes, kk), dim=1).indices
            correct1[k] += int((ranked[:, 0] == truth).sum())
            counts = torch.zeros_like(scores).scatter_add_(
                1, votes[:, :kk], torch.ones_like(weights[:, :kk]))
            voted = counts.gather(1, ranked) > 0  # a class nobody voted for never counts
            correct5[k] += int(((ranked == truth[:, None]) & voted).any(dim=1).sum())
    n = test_features.shape[0]
    out: dict[str, float] = {}
    for k in ks:
        out[f"top1_k{k}"] = 100.0 * correct1[k] / n
        out[f"top5_k{k}"] = 100.0 * correct5[k] / n
    return out


@torch.no_grad()
def neighbour_graph(features: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Each row's top-k neighbours by cosine similarity, itself excluded (N x k, int64)."""
    n = features.shape[0]
    if not 0 < k < n:
        raise ValueError(f"need 0 < k < N for a neighbour graph, got k={k}, N={n}")
    rows = []
    for start in range(0, n, chunk):
        sims = features[start:start + chunk] @ features.T
        own = torch.arange(start, min(start + chunk, n), device=features.device)
        sims[torch.arange(own.numel(), device=features.device), own] = float("-inf")
        rows.append(sims.topk(k, dim=1).indices)
    return torch.cat(rows).cpu()
