import math

import torch
import torch.nn.functional as F

from orchestrator.engine.knn import neighbour_graph, weighted_knn


def _circle(angles: list[float]) -> torch.Tensor:
    a = torch.tensor(angles)
    return torch.stack([a.cos(), a.sin()], dim=1)


def test_weighted_knn_matches_hand_computation() -> None:
    # One close class-0 neighbour against two slightly farther class-1 neighbours: the vote
    # depends on the temperature, which is what exp(sim / T) weighting is for.
    train = _circle([0.0, 0.3, 0.32, 3.0])
    labels = torch.tensor([0, 1, 1, 2])
    test = _circle([0.05])
    sims = [math.cos(0.05), math.cos(0.25), math.cos(0.27)]
    for t in (0.07, 0.01):
        w = [math.exp(s / t) for s in sims]
        expected = 1 if w[1] + w[2] > w[0] else 0
        out = weighted_knn(train, labels, test, torch.tensor([1]), ks=[1, 3], temperature=t,
                           num_classes=3)
        assert out["top1_k1"] == 0.0  # nearest neighbour is class 0
        assert out["top1_k3"] == (100.0 if expected == 1 else 0.0)
        assert out["top5_k3"] == 100.0
    # The two temperatures disagree, so the test really checks the weighting.
    assert weighted_knn(train, labels, test, torch.tensor([1]), [3], 0.07, 3)["top1_k3"] != \
        weighted_knn(train, labels, test, torch.tensor([1]), [3], 0.01, 3)["top1_k3"]


def test_knn_k_larger_than_train_set_is_clamped() -> None:
    train = F.normalize(torch.randn(6, 4), dim=1)
    out = weighted_knn(train, torch.arange(6) % 2, train[:2], torch.tensor([0, 1]),
                       ks=[200], temperature=0.07, num_classes=2)
    assert 0.0 <= out["top1_k200"] <= 100.0


def test_neighbour_graph_excludes_self_and_sorts() -> None:
    feats = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    graph = neighbour_graph(feats, k=2, chunk=3)
    assert graph.shape == (4, 2)
    assert graph[0, 0] == 1 and graph[2, 0] == 3
    assert all(graph[i].tolist().count(i) == 0 for i in range(4))


def test_top5_at_k1_equals_top1() -> None:
    """DINO / solo-learn rank min(5, k) classes: with one neighbour, top-5 is top-1 (ukd
    ranked 5 classes, 4 of them without a vote, and counted those)."""
    gen = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(200, 8, generator=gen), dim=1)
    labels = torch.randint(0, 10, (200,), generator=gen)
    test = F.normalize(torch.randn(300, 8, generator=gen), dim=1)
    truth = torch.randint(0, 10, (300,), generator=gen)
    out = weighted_knn(train, labels, test, truth, ks=[1, 3, 20], temperature=0.07,
                       num_classes=10)
    assert out["top5_k1"] == out["top1_k1"]
    assert 0 < out["top1_k1"] < 100
    assert out["top5_k3"] >= out["top1_k3"] and out["top5_k20"] >= out["top1_k20"]


def test_top5_never_counts_a_class_without_votes() -> None:
    # All 5 neighbours are class 0; the truth (class 3) received no vote: a top-5 miss, where
    # a sort over zero-score classes could place class 3 among the first five.
    train = _circle([0.0, 0.01, 0.02, 0.03, 0.04, 3.0])
    labels = torch.tensor([0, 0, 0, 0, 0, 3])
    test = _circle([0.015])
    out = weighted_knn(train, labels, test, torch.tensor([3]), ks=[5], temperature=0.07,
                       num_classes=4)
    assert out["top1_k5"] == 0.0 and out["top5_k5"] == 0.0
    # with k = 6 class 3 gets a vote, and ranks second: a top-5 hit
    out = weighted_knn(train, labels, test, torch.tensor([3]), ks=[6], temperature=0.07,
                       num_classes=4)
    assert out["top1_k6"] == 0.0 and out["top5_k6"] == 100.0
