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

At scale (ImageNet: a 1.28 M bank, 50 k queries; a 1.28 M x 384 neighbour graph) nothing is
N x N: :func:`top_k` keeps a running top-k over bank chunks (``chunk x bank_chunk`` scores
at a time) and breaks ties by the lower bank index, so chunked and unchunked runs agree
exactly; the graph is written chunk by chunk to an int32 ``.npy`` that trials memory-map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.atomic import atomic_write
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


def _block_topk(sims: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest entries of each row of ``sims`` (rows x m, k <= m) in the canonical
    order: similarity descending, ties by column ascending -- exact at the k-th place too
    (``torch.topk`` picks among tied entries in an unspecified order)."""
    values, cols = sims.topk(k, dim=1)
    threshold = values[:, -1:]
    # One pass over the block finds the rows whose k-th value has tied entries topk left out
    # (rare on real features); only those rows are redone with the lowest columns kept.
    short = (torch.count_nonzero(sims >= threshold, dim=1) > k).nonzero()[:, 0]
    if short.numel():
        part, t = sims[short], threshold[short]
        tied = part == t
        above = part > t
        need = k - torch.count_nonzero(above, dim=1)[:, None]
        tied &= tied.to(torch.int32).cumsum(dim=1, dtype=torch.int32) <= need
        cols = cols.clone()
        cols[short] = (above | tied).nonzero()[:, 1].view(-1, k)  # k columns a row
        values = sims.gather(1, cols)
    cols = cols.sort(dim=1).values  # columns ascending, then a stable sort by value
    values = sims.gather(1, cols)
    order = values.argsort(dim=1, descending=True, stable=True)
    return values.gather(1, order), cols.gather(1, order)


def top_k(queries: Tensor, bank: Tensor, k: int, bank_chunk: int = 65536,
          exclude_from: int | None = None) -> tuple[Tensor, Tensor]:
    """Each query's ``k`` most similar bank rows by dot product (values, int64 indices),
    similarity descending with ties by bank index ascending, from a running top-k over bank
    chunks: memory is ``queries x min(bank_chunk, N)`` scores, whatever N.

    ``exclude_from``: query ``i`` is bank row ``exclude_from + i`` and is left out (a
    neighbour graph excludes each image itself)."""
    n = bank.shape[0]
    k = min(k, n - (exclude_from is not None))
    rows = queries.shape[0]
    best_v = queries.new_empty(rows, 0)
    best_i = torch.empty(rows, 0, dtype=torch.long, device=queries.device)
    for start in range(0, n, bank_chunk):
        sims = queries @ bank[start:start + bank_chunk].T
        if exclude_from is not None:
            own = torch.arange(rows, device=sims.device) + exclude_from - start
            inside = (own >= 0) & (own < sims.shape[1])
            sims[inside.nonzero()[:, 0], own[inside]] = float("-inf")
        v, i = _block_topk(sims, min(k, sims.shape[1]))
        # Earlier chunks hold lower indices: a stable sort of [best, chunk] by value keeps
        # the canonical tie order.
        cand_v = torch.cat([best_v, v], dim=1)
        cand_i = torch.cat([best_i, i + start], dim=1)
        order = cand_v.argsort(dim=1, descending=True, stable=True)[:, :k]
        best_v, best_i = cand_v.gather(1, order), cand_i.gather(1, order)
    return best_v, best_i


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
    bank_chunk: int = 65536,
) -> dict[str, float]:
    """Return ``{"top1_k{k}": %, "top5_k{k}": %}`` for every k (features already normalised).

    Queries go ``chunk`` at a time, the bank ``bank_chunk`` rows at a time (:func:`top_k`):
    memory stays ``chunk x bank_chunk`` scores (ImageNet: 1.28 M bank x 50 k queries), and the
    result is the same for any chunk sizes (ties: lower bank index first)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    max_k = min(max(ks), train_features.shape[0])
    correct1 = {k: 0 for k in ks}
    correct5 = {k: 0 for k in ks}
    for start in range(0, test_features.shape[0], chunk):
        queries = test_features[start:start + chunk]
        truth = test_labels[start:start + chunk]
        sims, idx = top_k(queries, train_features, max_k, bank_chunk)
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
def neighbour_rows(features: Tensor, k: int, chunk: int = 1024, bank_chunk: int = 65536
                   ) -> Iterator[Tensor]:
    """The top-k neighbour graph ``chunk`` rows at a time (int32 on the CPU): each row's k
    most cosine-similar other rows (features L2-normalised), itself excluded, similarity
    descending, ties by index ascending. Memory: ``chunk x bank_chunk`` scores on the
    features' device, whatever N (CoSS's compute_close_far.py holds 256 x N)."""
    n = features.shape[0]
    if not 0 < k < n:
        raise ValueError(f"need 0 < k < N for a neighbour graph, got k={k}, N={n}")
    for start in range(0, n, chunk):
        _, idx = top_k(features[start:start + chunk], features, k, bank_chunk,
                       exclude_from=start)
        yield idx.to(torch.int32).cpu()


def neighbour_graph(features: Tensor, k: int, chunk: int = 1024, bank_chunk: int = 65536
                    ) -> Tensor:
    """The whole graph in memory (N x k, int32): :func:`neighbour_rows` concatenated."""
    return torch.cat(list(neighbour_rows(features, k, chunk, bank_chunk)))


def save_neighbour_graph(path: str | Path, features: Tensor, k: int, chunk: int = 1024,
                         bank_chunk: int = 65536) -> Path:
    """Write the graph to ``path`` as an ``N x k`` int32 ``.npy``, chunk by chunk (host
    memory: one chunk of rows), atomically (a temp file renamed into place)."""
    n = features.shape[0]

    def write(handle: IO[bytes]) -> None:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<i4", "fortran_order": False, "shape": (n, k)})
        for rows in neighbour_rows(features, k, chunk, bank_chunk):
            handle.write(rows.numpy().astype("<i4", copy=False).tobytes())

    return atomic_write(path, write)


def load_neighbour_graph(path: str | Path) -> Tensor:
    """A stored graph, memory-mapped (copy-on-write): every process that opens the file
    shares the page cache's one copy; nothing is read until rows are indexed."""
    array = np.load(path, mmap_mode="c")
    if array.dtype != np.int32 or array.ndim != 2:
        raise ValueError(f"{path}: expected an N x k int32 neighbour graph, got "
                         f"{array.dtype} {array.shape}")
    return torch.from_numpy(array)
