"""Selective transfer for SSKD (Xu et al., ECCV 2020; docs/METHODS.md).

The teacher's predictions on transformed inputs are noisy; SSKD distils only the rows where the
teacher is right plus the "least wrong" part of the others:

1. For each row, ``r`` = rank of the ground truth in the teacher's sorted distribution
   (ground truth = class label for the transformed-KD term, source-image index for the
   self-supervision term); ``r = 0`` means the teacher is right.
2. Keep every correct row (``r = 0``) plus the ``int(ratio * N_wrong)`` wrong rows with the
   smallest ``r``.

This is the logic of the official code after its July 2020 fix (correct rows counted as
``N - N_wrong``). The rank is computed tie-robustly as the number of classes the teacher scores
strictly higher than the ground truth (the official ``argsort`` position, which equals it when
there are no ties).

Ties at the cut: when wrong rows of equal rank straddle the ``int(ratio * N_wrong)`` boundary,
the official code keeps whichever ``torch.argsort`` (unstable, unspecified order) puts first.
With a ``generator`` the rows are shuffled by a seeded permutation before a stable sort by
rank, so every row of a tie is equally likely to be kept (the SSKD objective passes the
trial's model stream). Without one the earlier row wins; in SSKD's image-major layout that
would always keep the 90-degree copy of an image before its 180- and 270-degree copies, and
the first images of the batch before the last.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ground_truth_rank(teacher_scores: Tensor, targets: Tensor) -> Tensor:
    """Rank of ``targets[i]`` in row ``i`` of ``teacher_scores`` sorted descending (0 = top).

    ``teacher_scores`` are logits, probabilities or similarities (any monotone transform of
    them gives the same ranks): ``N x C``; ``targets``: ``N`` class / column indices.
    """
    if teacher_scores.dim() != 2 or targets.dim() != 1:
        raise ValueError(
            f"need N x C scores and N targets, got {tuple(teacher_scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if teacher_scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"scores have {teacher_scores.shape[0]} rows but there are {targets.shape[0]} targets"
        )
    scores = teacher_scores.detach().float()
    target_score = scores.gather(1, targets.long().view(-1, 1))
    return (scores > target_score).sum(dim=1)


def selective_keep_mask(rank: Tensor, ratio: float,
                        generator: torch.Generator | None = None) -> Tensor:
    """Boolean mask of kept rows: all ``rank == 0`` rows plus the ``int(ratio * N_wrong)``
    wrong rows with the smallest rank (ties: a seeded random order with ``generator``, else
    lower row index first)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if rank.dim() != 1:
        raise ValueError(f"rank must be a vector, got shape {tuple(rank.shape)}")
    wrong = rank > 0
    n_wrong = int(wrong.sum())
    n_correct = rank.numel() - n_wrong
    keep_wrong = int(n_wrong * ratio)
    # Stable sort: correct rows (rank 0) come first, then wrong rows by increasing rank; with
    # a generator, ties are in the order of a random permutation.
    if generator is None:
        order = torch.sort(rank, stable=True).indices
    else:
        perm = torch.randperm(rank.numel(), generator=generator,
                              device=generator.device).to(rank.device)
        order = perm[torch.sort(rank[perm], stable=True).indices]
    mask = torch.zeros_like(rank, dtype=torch.bool)
    mask[order[: n_correct + keep_wrong]] = True
    return mask


def selective_keep_indices(teacher_scores: Tensor, targets: Tensor, ratio: float,
                           generator: torch.Generator | None = None) -> Tensor:
    """Sorted indices of the rows SSKD's selective transfer keeps (ties: see the module)."""
    mask = selective_keep_mask(ground_truth_rank(teacher_scores, targets), ratio, generator)
    return mask.nonzero(as_tuple=True)[0]
