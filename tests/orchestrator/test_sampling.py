from pathlib import Path

import pytest
import torch
import yaml

from losses import NeighbourBatches
from orchestrator.data.sampling import epoch_size, neighbour_batches, random_batches
from orchestrator.spec.display import images_per_epoch
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.orchestrator.specs import minimal_spec


def test_random_batches_cover_full_batches_only() -> None:
    batches = random_batches(10, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4]
    assert len(set(torch.cat(batches).tolist())) == 8


def test_neighbour_batches_follow_each_anchor_with_its_neighbours() -> None:
    n, pool = 64, 6
    graph = torch.stack([(torch.arange(1, pool + 1) + i) % n for i in range(n)])
    batches = neighbour_batches(graph, neighbours=3, pool=pool, batch_size=16,
                                gen=torch.Generator().manual_seed(1), anchors=0.25)
    assert batches and all(len(b) == 16 for b in batches)
    for batch in batches:
        for group in batch.view(-1, 4):
            anchor, drawn = int(group[0]), group[1:].tolist()
            assert len(set(drawn)) == 3  # without replacement
            assert set(drawn) <= set(graph[anchor].tolist())
    # anchors = 1 / (1 + neighbours): one epoch shows about N images.
    assert sum(len(b) for b in batches) == 64


def _ring(n: int, pool: int) -> torch.Tensor:
    return torch.stack([(torch.arange(1, pool + 1) + i) % n for i in range(n)])


def test_an_official_epoch_anchors_every_image_exactly_once() -> None:
    """CFBatchSampler (paganpasta/coss-pytorch batch_sampler.py:24-49): every training image
    is an anchor once per epoch, each followed by its neighbours, so an epoch shows
    (1 + neighbours) x N images."""
    n = 64
    batches = neighbour_batches(_ring(n, 6), neighbours=3, pool=6, batch_size=16,
                                gen=torch.Generator().manual_seed(2))
    assert len(batches) == 16 and all(len(b) == 16 for b in batches)
    anchors = torch.cat([b.view(-1, 4)[:, 0] for b in batches])
    assert sorted(anchors.tolist()) == list(range(n))  # each image, exactly once
    assert sum(len(b) for b in batches) == 4 * n
    # A batch-size remainder: the incomplete last batch is dropped, as the official sampler's
    # __len__ = N // anchors_per_batch; every kept anchor is still distinct.
    batches = neighbour_batches(_ring(66, 6), neighbours=3, pool=6, batch_size=16,
                                gen=torch.Generator().manual_seed(2))
    anchors = torch.cat([b.view(-1, 4)[:, 0] for b in batches])
    assert len(batches) == 16 and len(set(anchors.tolist())) == anchors.numel() == 64
    # another epoch, another order
    other = neighbour_batches(_ring(n, 6), neighbours=3, pool=6, batch_size=16,
                              gen=torch.Generator().manual_seed(3))
    assert not torch.equal(torch.cat(other), torch.cat(
        neighbour_batches(_ring(n, 6), 3, 6, 16, torch.Generator().manual_seed(2))))


def _earlier_sampler(graph: torch.Tensor, neighbours: int, pool: int, batch_size: int,
                     gen: torch.Generator) -> list[torch.Tensor]:
    """ukd's sampler before issue 12 (N // (1 + neighbours) anchors an epoch)."""
    n = graph.shape[0]
    group = neighbours + 1
    per_batch = max(1, batch_size // group)
    anchors = torch.randperm(n, generator=gen)[: max(per_batch, n // group)]
    picks = torch.rand(anchors.numel(), pool, generator=gen).argsort(dim=1)[:, :neighbours]
    drawn = graph[anchors][:, :pool].gather(1, picks)
    groups = torch.cat([anchors[:, None], drawn], dim=1)
    usable = (anchors.numel() // per_batch) * per_batch
    return [g.reshape(-1) for g in groups[:usable].split(per_batch)]


@pytest.mark.parametrize("n", [1437, 256, 100])
def test_the_earlier_epoch_is_kept_as_an_option(n: int) -> None:
    """``epoch_anchors = 1 / (1 + neighbours)`` gives the earlier sampler's batches exactly."""
    graph = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(i))[:31]
                         for i in range(n)])
    new = neighbour_batches(graph, 15, 31, 128, torch.Generator().manual_seed(7), 1 / 16)
    old = _earlier_sampler(graph, 15, 31, 128, torch.Generator().manual_seed(7))
    assert len(new) == len(old) and all(torch.equal(a, b) for a, b in zip(new, old, strict=True))


def test_epoch_size_counts_what_the_samplers_build() -> None:
    gen = torch.Generator().manual_seed(0)
    plain = epoch_size(1437, 128)
    assert (plain.steps, plain.images, plain.anchors) == (11, 1408, None)
    assert len(random_batches(1437, 128, gen)) == 11
    official = NeighbourBatches(15, 31)
    size = epoch_size(1437, 128, official)
    assert (size.steps, size.anchors, size.images) == (179, 1432, 1432 * 16)
    graph = torch.zeros(1437, 31, dtype=torch.long)
    assert len(neighbour_batches(graph, 15, 31, 128, gen)) == 179
    earlier = epoch_size(1437, 128, NeighbourBatches(15, 31, 1 / 16))
    assert (earlier.steps, earlier.images) == (11, 1408)
    assert len(neighbour_batches(graph, 15, 31, 128, gen, 1 / 16)) == 11


def test_zero_pool_is_rejected() -> None:
    graph = torch.zeros(4, 2, dtype=torch.long)
    try:
        neighbour_batches(graph, neighbours=1, pool=3, batch_size=4,
                          gen=torch.Generator())
    except ValueError as exc:
        assert "pool" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_images_per_epoch_line_for_the_dry_run(tmp_path: Path) -> None:
    data = minimal_spec(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    data["grid"] = {"teacher": "t", "student": "resnet20", "seed": 0,
                    "loss": [{"name": "coss"}, {"name": "coss", "epoch_anchors": 0.0625},
                             "mse"]}
    data["train"] = {"epochs": 1, "batch_size": 128}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    official, earlier, plain = expand(load_spec(path))
    line = images_per_epoch(official, 1437)
    assert "every training image anchors once" in line and "16 x N images" in line
    assert "179 steps, 22,912 images" in line
    assert "16 x N" in images_per_epoch(official)  # without N: the formula alone
    assert "0.0625 of the training images" in images_per_epoch(earlier, 1437)
    assert "1 x N images" in images_per_epoch(earlier)
    assert images_per_epoch(plain, 1437) == (
        "plain batches of 128: an epoch shows N images (N = 1,437: 11 steps, 1,408 images)")


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 11, -3])
def test_derive_seeds_equals_the_chain_seed_by_seed(seed: int) -> None:
    """The batch form of the view seeds (the common chain once, the last mix vectorised)
    equals the scalar chain for every index, in 63 bits: streams do not change."""
    from orchestrator.data.streams import derive_seed, derive_seeds

    for parts in ((2, 0, 0, 0), (2, 3, 41, 1), (2, 2**40, 7, 5)):
        got = derive_seeds(seed, *parts, last=700)
        assert got == [derive_seed(seed, *parts, i) for i in range(700)]
        assert all(type(s) is int and 0 <= s < 2**63 for s in got)
