"""Selective transfer (SSKD, shared/methods.md section 2): which rows are kept."""

from __future__ import annotations

import pytest
import torch

from losses.selective import ground_truth_rank, selective_keep_indices, selective_keep_mask


def scores_with_ranks(ranks: list[int], num_classes: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores whose target (column = row % num_classes) has exactly ``ranks[i]`` classes above."""
    rows = []
    targets = []
    for i, r in enumerate(ranks):
        target = i % num_classes
        others = [c for c in range(num_classes) if c != target]
        row = [0.0] * num_classes
        # r classes strictly above the target, the rest strictly below.
        for j, c in enumerate(others):
            row[c] = 10.0 + j if j < r else -10.0 - j
        row[target] = 1.0
        rows.append(row)
        targets.append(target)
    return torch.tensor(rows), torch.tensor(targets)


def test_rank_of_constructed_rows() -> None:
    ranks = [0, 3, 0, 1, 2, 5]
    scores, targets = scores_with_ranks(ranks)
    assert ground_truth_rank(scores, targets).tolist() == ranks


def test_rank_matches_sorted_position_without_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(20, 7, generator=gen)
    targets = torch.randint(0, 7, (20,), generator=gen)
    got = ground_truth_rank(scores, targets).tolist()
    for i in range(20):
        order = sorted(range(7), key=lambda c: -float(scores[i, c]))
        assert got[i] == order.index(int(targets[i]))


def test_brief_example_keeps_correct_rows_and_three_least_wrong() -> None:
    # 6 rows: 2 correct (rows 0, 2), 4 wrong with ranks 3, 1, 2, 5 (rows 1, 3, 4, 5).
    # ratio 0.75: int(0.75 * 4) = 3 wrong rows kept, those with ranks 1, 2, 3.
    ranks = [0, 3, 0, 1, 2, 5]
    scores, targets = scores_with_ranks(ranks)
    kept = selective_keep_indices(scores, targets, 0.75)
    assert kept.tolist() == [0, 1, 2, 3, 4]
    mask = selective_keep_mask(torch.tensor(ranks), 0.75)
    assert mask.tolist() == [True, True, True, True, True, False]


def test_fixed_count_uses_correct_plus_ratio_of_wrong() -> None:
    # 1 correct, 5 wrong: keep 1 + int(0.75 * 5) = 4 rows. The pre-July-2020 code swapped
    # the counts and would keep 5 + int(0.75 * 1) = 5.
    rank = torch.tensor([4, 0, 2, 1, 3, 5])
    mask = selective_keep_mask(rank, 0.75)
    assert int(mask.sum()) == 4
    assert mask.tolist() == [False, True, True, True, True, False]


def test_ratio_extremes_and_ties() -> None:
    rank = torch.tensor([2, 0, 2, 1, 0, 2])
    assert selective_keep_mask(rank, 1.0).all()
    assert selective_keep_mask(rank, 0.0).tolist() == [False, True, False, False, True, False]
    # 4 wrong, ratio 0.5 -> 2 kept: the rank-1 row, then the first of the rank-2 rows.
    assert selective_keep_mask(rank, 0.5).tolist() == [True, True, False, True, True, False]
    assert selective_keep_mask(torch.zeros(5, dtype=torch.long), 0.3).all()


def test_ties_at_the_cut_are_kept_in_a_seeded_random_order() -> None:
    """Issue 12, item 7: rows of equal rank straddling the cut are not kept in row order (in
    SSKD's image-major layout that keeps an image's 90-degree copy first and the first images
    of the batch) but in the order of a permutation drawn from the generator."""
    # SSKD's layout: 4 images x 3 rotated copies, every row wrong with the same rank.
    rank = torch.ones(12, dtype=torch.long)
    assert selective_keep_mask(rank, 0.25).nonzero().flatten().tolist() == [0, 1, 2]
    kept = torch.zeros(12)
    for seed in range(300):
        mask = selective_keep_mask(rank, 0.25, torch.Generator().manual_seed(seed))
        assert int(mask.sum()) == 3
        kept += mask.float()
        again = selective_keep_mask(rank, 0.25, torch.Generator().manual_seed(seed))
        assert torch.equal(mask, again)  # seeded: reproducible
    share = kept / 300  # each row kept with probability 3 / 12
    assert float(share.min()) > 0.15 and float(share.max()) < 0.35
    by_copy = kept.view(4, 3).sum(0) / kept.sum()  # 90 / 180 / 270 degrees
    assert torch.allclose(by_copy, torch.full((3,), 1 / 3), atol=0.07)
    # Ranks still decide first: correct rows, then the smaller rank, shuffled only within ties.
    rank = torch.tensor([3, 0, 1, 2, 2, 2, 0, 3])
    for seed in range(20):
        mask = selective_keep_mask(rank, 0.5, torch.Generator().manual_seed(seed))
        assert mask[[1, 6, 2]].all() and not mask[[0, 7]].any()  # 6 wrong -> 3 kept
        assert int(mask[[3, 4, 5]].sum()) == 2


def test_ties_in_scores_count_for_the_target() -> None:
    scores = torch.tensor([[1.0, 1.0, 0.0], [2.0, 1.0, 2.0]])
    targets = torch.tensor([1, 2])
    assert ground_truth_rank(scores, targets).tolist() == [0, 0]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="ratio"):
        selective_keep_mask(torch.tensor([0, 1]), 1.5)
    with pytest.raises(ValueError, match="rows"):
        ground_truth_rank(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        ground_truth_rank(torch.zeros(3), torch.zeros(3, dtype=torch.long))
