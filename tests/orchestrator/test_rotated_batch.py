"""SSKD's rotated batch (issue 12, item 4): the official pipeline flips each image once, then
crops each of its 4 rotated copies independently (xuguodong03/SSKD cifar.py:140-165), so the
copies are not rotations of one crop."""

from __future__ import annotations

import numpy as np
import torch

from losses.sskd import rotate_batch
from models.augment import AUGMENT_PRESETS, AugmentConfig, normalise
from orchestrator.data.batches import BatchStream, rotated_copies

MEAN, STD = torch.tensor([0.5]), torch.tensor([0.25])


def _images(n: int = 6, size: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, size, size), generator=gen, dtype=torch.uint8)


def _unrotated(x4: torch.Tensor) -> torch.Tensor:
    """Each copy rotated back by its own k: B x 4 x C x H x W, all equal to copy 0 when the
    four copies are rotations of each other."""
    grouped = x4.reshape(-1, 4, *x4.shape[1:])
    return torch.stack([torch.rot90(grouped[:, k], -k, dims=(2, 3)) for k in range(4)], dim=1)


def test_without_crops_the_copies_are_np_rot90_rotations() -> None:
    images = _images()
    x4 = rotated_copies(images, AugmentConfig(flip=False), MEAN, STD,
                        torch.Generator().manual_seed(1))
    assert x4.shape == (24, 1, 12, 12)
    plain = normalise(images.float() / 255.0, MEAN, STD)
    for i in range(images.shape[0]):
        for k in range(4):  # row 4i + k is image i rotated k times, np.rot90's direction
            expected = torch.from_numpy(np.rot90(plain[i].numpy(), k, axes=(1, 2)).copy())
            assert torch.allclose(x4[4 * i + k], expected, atol=1e-5)


def test_the_flip_is_drawn_once_per_image() -> None:
    """Flip only (no crop): every copy of an image shares the flip, so the copies are exact
    rotations of copy 0, and copy 0 is the image or its mirror image."""
    images = _images(n=32)
    x4 = rotated_copies(images, AugmentConfig(flip=True), MEAN, STD,
                        torch.Generator().manual_seed(2))
    back = _unrotated(x4)
    assert torch.allclose(back, back[:, :1].expand_as(back), atol=1e-5)
    plain = normalise(images.float() / 255.0, MEAN, STD)
    flipped = [bool(torch.allclose(back[i, 0], plain[i].flip(-1), atol=1e-5))
               and not torch.allclose(back[i, 0], plain[i], atol=1e-5) for i in range(32)]
    same = [bool(torch.allclose(back[i, 0], plain[i], atol=1e-5)) for i in range(32)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 4 <= sum(flipped) <= 28  # p = 0.5


def test_each_rotated_copy_is_cropped_on_its_own() -> None:
    """The official crop (RandomCrop(32, padding=4), ukd's crop_flip preset): the four copies
    of an image are not rotations of each other."""
    images = _images()
    x4 = rotated_copies(images, AUGMENT_PRESETS["crop_flip"], MEAN, STD,
                        torch.Generator().manual_seed(3))
    back = _unrotated(x4)
    for i in range(images.shape[0]):
        differs = [not torch.allclose(back[i, k], back[i, 0], atol=1e-4) for k in (1, 2, 3)]
        assert sum(differs) >= 2, i  # two equal random shifts in a row are possible, not three


def test_batch_rotated_comes_from_the_data_stream() -> None:
    images = _images(n=16)

    def stream() -> BatchStream:
        return BatchStream(images, None, MEAN, STD, AUGMENT_PRESETS["crop_flip"], seed=5,
                           batch_size=4)

    batch = next(stream().epoch(0))
    first = batch.rotated()
    assert first is batch.rotated()  # made once per step, shared by fused members
    assert first.shape == (16, 1, 12, 12)
    again = next(stream().epoch(0)).rotated()
    assert torch.equal(first, again)  # seeded by (seed, epoch, step)
    assert not torch.equal(first, next(stream().epoch(1)).rotated())
    # not the rotations of the step's first view
    view = batch.view(0)
    assert not torch.allclose(first, rotate_batch(view), atol=1e-4)
