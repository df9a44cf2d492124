"""Shared fixtures for the model-zoo tests: the sklearn digits as a small uint8 image set."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny CPU convolutions are many times slower with 2+ threads on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Digits:
    train_x: Tensor  # uint8 N x 3 x 16 x 16
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: Tensor
    std: Tensor


@pytest.fixture(scope="session")
def digits() -> Digits:
    """sklearn digits: 8x8 values 0..16 -> uint8 0..255, upsampled to 16x16, three channels;
    a fixed random 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32))[:, None] / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    y = torch.from_numpy(data.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    scaled = x[tr].float() / 255
    return Digits(x[tr], y[tr], x[te], y[te], scaled.mean((0, 2, 3)), scaled.std((0, 2, 3)))
