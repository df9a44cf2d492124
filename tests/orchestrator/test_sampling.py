import torch

from orchestrator.sampling import neighbour_batches, random_batches


def test_random_batches_cover_full_batches_only() -> None:
    batches = random_batches(10, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4]
    assert len(set(torch.cat(batches).tolist())) == 8


def test_neighbour_batches_follow_each_anchor_with_its_neighbours() -> None:
    n, pool = 64, 6
    graph = torch.stack([(torch.arange(1, pool + 1) + i) % n for i in range(n)])
    batches = neighbour_batches(graph, neighbours=3, pool=pool, batch_size=16,
                                gen=torch.Generator().manual_seed(1))
    assert batches and all(len(b) == 16 for b in batches)
    for batch in batches:
        for group in batch.view(-1, 4):
            anchor, drawn = int(group[0]), group[1:].tolist()
            assert len(set(drawn)) == 3  # without replacement
            assert set(drawn) <= set(graph[anchor].tolist())
    # One epoch shows about N images: N // (1 + neighbours) anchors.
    assert sum(len(b) for b in batches) == 64


def test_zero_pool_is_rejected() -> None:
    graph = torch.zeros(4, 2, dtype=torch.long)
    try:
        neighbour_batches(graph, neighbours=1, pool=3, batch_size=4,
                          gen=torch.Generator())
    except ValueError as exc:
        assert "pool" in str(exc)
    else:
        raise AssertionError("expected a ValueError")
