"""FeatureQueue: FIFO order with wrap-around, filled part, state_dict round-trip, errors."""

from __future__ import annotations

import io

import pytest
import torch

from models.queue import FeatureQueue


def _rows(start: int, n: int, dim: int = 2) -> torch.Tensor:
    """Row r is [r, r, ...] so that positions are easy to read."""
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).repeat(1, dim)


def test_starts_empty() -> None:
    q = FeatureQueue(5, 2)
    assert len(q) == 0 and not q.is_full
    assert q.valid().shape == (0, 2)


def test_fill_then_wrap_around() -> None:
    q = FeatureQueue(5, 2)
    q.enqueue(_rows(0, 3))
    assert len(q) == 3 and int(q.ptr) == 3
    assert q.valid()[:, 0].tolist() == [0, 1, 2]
    q.enqueue(_rows(3, 4))  # rows 3, 4 at the end, rows 5, 6 overwrite the two oldest
    assert q.is_full and len(q) == 5 and int(q.ptr) == 2
    assert q.valid()[:, 0].tolist() == [5, 6, 2, 3, 4]
    q.enqueue(_rows(7, 1))
    assert q.valid()[:, 0].tolist() == [5, 6, 7, 3, 4] and int(q.ptr) == 3


def test_batch_longer_than_the_memory_keeps_its_last_rows() -> None:
    q = FeatureQueue(5, 2)
    q.enqueue(_rows(0, 2))
    q.enqueue(_rows(10, 7))  # 10..16: only 12..16 stay, written from position 2
    assert q.valid()[:, 0].tolist() == [15, 16, 12, 13, 14]
    assert int(q.ptr) == 2 and len(q) == 5


def test_rows_are_detached_and_cast() -> None:
    q = FeatureQueue(3, 2)
    x = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    q.enqueue(x * 2)
    assert q.data.dtype == torch.float32 and not q.data.requires_grad
    assert q.valid().tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_state_dict_round_trip() -> None:
    q = FeatureQueue(4, 3)
    q.enqueue(torch.randn(6, 3))
    assert set(q.state_dict()) == {"data", "ptr", "filled"}
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    buffer.seek(0)
    restored = FeatureQueue(4, 3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.valid(), q.valid())
    assert int(restored.ptr) == int(q.ptr) and len(restored) == len(q)
    more = torch.randn(3, 3)
    q.enqueue(more)
    restored.enqueue(more)
    assert torch.equal(restored.data, q.data)


def test_partially_filled_round_trip() -> None:
    q = FeatureQueue(10, 2)
    q.enqueue(_rows(0, 3))
    restored = FeatureQueue(10, 2)
    restored.load_state_dict(q.state_dict())
    assert restored.valid()[:, 0].tolist() == [0, 1, 2]


def test_reset() -> None:
    q = FeatureQueue(3, 2)
    q.enqueue(_rows(0, 3))
    q.reset()
    assert len(q) == 0 and int(q.ptr) == 0


def test_errors() -> None:
    with pytest.raises(ValueError, match="size"):
        FeatureQueue(0, 2)
    with pytest.raises(ValueError, match="dim"):
        FeatureQueue(2, 0)
    with pytest.raises(ValueError, match="shape"):
        FeatureQueue(2, 3).enqueue(torch.ones(2, 4))
