"""The chunked neighbour graph and kNN at scale: chunk sizes never change a result, ties
included, and both equal a brute-force reference (numpy, canonical order: similarity
descending, lower index first)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orchestrator.engine.knn import (
    load_neighbour_graph,
    neighbour_graph,
    save_neighbour_graph,
    top_k,
    weighted_knn,
)


def _features(n: int, d: int, seed: int, levels: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if levels is not None:
        # Few distinct dyadic rows (multiples of 1/4, not normalised): every dot product is
        # exact in float32 whatever the GEMM's summation order, so the ties are exact ties.
        return torch.randint(0, levels, (n, d), generator=gen).float() / 4
    return F.normalize(torch.randn(n, d, generator=gen), dim=1)


def _graph_brute(features: torch.Tensor, k: int) -> np.ndarray:
    sims = (features @ features.T).numpy().astype(np.float64)  # the float32 scores
    np.fill_diagonal(sims, -np.inf)
    cols = np.arange(features.shape[0])
    return np.stack([np.lexsort((cols, -row))[:k] for row in sims])


@pytest.mark.parametrize("levels", [None, 2])
def test_graph_chunked_equals_unchunked_equals_brute_force(levels: int | None) -> None:
    feats = _features(97, 6, seed=levels or 0, levels=levels)
    k = 12
    whole = neighbour_graph(feats, k, chunk=97, bank_chunk=97)
    for chunk, bank_chunk in [(1, 7), (10, 13), (33, 97), (97, 5)]:
        assert torch.equal(neighbour_graph(feats, k, chunk, bank_chunk), whole)
    assert whole.dtype == torch.int32
    expected = _graph_brute(feats, k)
    assert np.array_equal(whole.numpy(), expected)
    if levels is not None:  # the test really has ties at the k-th place
        sims = feats @ feats.T
        sims.fill_diagonal_(float("-inf"))
        kth = sims.gather(1, whole.long()[:, -1:])
        assert int(((sims == kth).sum(1) > 1).sum()) > 10
    assert all(i not in whole[i].tolist() for i in range(97))


def test_top_k_chunked_over_the_bank_equals_one_pass() -> None:
    bank = _features(200, 5, seed=3, levels=3)
    queries = _features(40, 5, seed=4, levels=3)
    v_one, i_one = top_k(queries, bank, 25, bank_chunk=200)
    for bank_chunk in (1, 9, 64):
        v, i = top_k(queries, bank, 25, bank_chunk=bank_chunk)
        assert torch.equal(i, i_one) and torch.equal(v, v_one)
    sims = (queries @ bank.T).numpy().astype(np.float64)
    cols = np.arange(200)
    expected = np.stack([np.lexsort((cols, -row))[:25] for row in sims])
    assert np.array_equal(i_one.numpy(), expected)


def test_weighted_knn_is_the_same_for_every_chunking() -> None:
    gen = torch.Generator().manual_seed(5)
    bank = _features(300, 8, seed=5, levels=3)  # ties between neighbours of different labels
    labels = torch.randint(0, 7, (300,), generator=gen)
    queries = _features(120, 8, seed=6, levels=3)
    truth = torch.randint(0, 7, (120,), generator=gen)
    args = (bank, labels, queries, truth, [1, 5, 20], 0.07, 7)
    whole = weighted_knn(*args, chunk=120, bank_chunk=300)
    for chunk, bank_chunk in [(7, 11), (50, 1), (120, 64)]:
        assert weighted_knn(*args, chunk=chunk, bank_chunk=bank_chunk) == whole
    # brute force: votes of the canonical top-20 (lexsort), weights exp(sim / T)
    sims = (queries @ bank.T).numpy().astype(np.float64)
    cols = np.arange(300)
    hits = 0
    for row, t in zip(sims, truth.tolist(), strict=True):
        top = np.lexsort((cols, -row))[:20]
        scores = np.zeros(7)
        np.add.at(scores, labels.numpy()[top], np.exp(np.float32(row[top]) / np.float32(0.07)))
        hits += int(np.argmax(scores) == t)
    assert whole["top1_k20"] == pytest.approx(100.0 * hits / 120)


def test_stored_graph_is_int32_npy_and_memory_mapped(tmp_path: Path) -> None:
    feats = _features(64, 4, seed=7)
    path = save_neighbour_graph(tmp_path / "g.npy", feats, 9, chunk=10, bank_chunk=17)
    assert [p.name for p in tmp_path.iterdir()] == ["g.npy"]  # no temp file left behind
    graph = load_neighbour_graph(path)
    assert graph.dtype == torch.int32 and graph.shape == (64, 9)
    assert torch.equal(graph, neighbour_graph(feats, 9))
    assert isinstance(np.load(path, mmap_mode="r"), np.memmap)
    raw = np.load(path)
    assert raw.dtype == np.int32
    # a mapped tensor, not a copy: its storage is the file's pages
    assert graph.numpy().base is not None and not graph.numpy().flags.owndata
