"""A FIFO memory of past feature vectors (MoCo / SEED / CompRess style), as a module.

The memory is three registered buffers, so it follows ``.to(device)`` and is saved in
``state_dict()`` (and therefore in a trial checkpoint):

- ``data``   (size x dim): the rows; row order is not meaningful to the losses here;
- ``ptr``    (long scalar): where the next row is written;
- ``filled`` (long scalar): how many rows hold real entries (``min(enqueued, size)``).

A memory starts empty (:meth:`valid` returns only the rows written so far) or full of random
rows, as in the official code: random unit vectors (:meth:`fill_random_`; MoCo, SEED, DisCo,
BINGO) or uniform values in ``(-a, a)`` (:meth:`fill_uniform_`; CompRess). Two queues that
always receive batches of the same length stay aligned row by row (CompRess's teacher and
student memories rely on this). One home for the MoCo-style memory: the pretraining recipes
and the objectives both use it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """First-in first-out memory of ``size`` rows of ``dim`` features."""

    data: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be > 0, got {size}")
        if dim <= 0:
            raise ValueError(f"queue dim must be > 0, got {dim}")
        self.size = size
        self.dim = dim
        self.register_buffer("data", torch.zeros(size, dim, dtype=dtype))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled)

    @property
    def is_full(self) -> bool:
        return int(self.filled) == self.size

    def valid(self) -> Tensor:
        """The rows written so far (a view, ``filled x dim``; all rows once full)."""
        n = int(self.filled)
        return self.data if n == self.size else self.data[:n]

    @torch.no_grad()
    def enqueue(self, rows: Tensor) -> None:
        """Write ``rows`` (n x dim) at the pointer, overwriting the oldest rows (wrap-around).

        A batch longer than the memory keeps only its last ``size`` rows.
        """
        if rows.dim() != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape (n, {self.dim}), got {tuple(rows.shape)}")
        rows = rows.detach()
        if rows.shape[0] > self.size:
            rows = rows[-self.size :]
        n = rows.shape[0]
        if n == 0:
            return
        start = int(self.ptr)
        idx = (torch.arange(n, device=self.data.device) + start) % self.size
        self.data.index_copy_(0, idx, rows.to(device=self.data.device, dtype=self.data.dtype))
        self.ptr.fill_((start + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    @torch.no_grad()
    def fill_random_(self, generator: torch.Generator | None = None) -> FeatureQueue:
        """Fill every row with a random unit vector (normalised Gaussian) and mark the memory
        full, as MoCo's ``F.normalize(torch.randn(dim, K), dim=0)``."""
        rows = torch.randn(self.size, self.dim, generator=generator,
                           device=generator.device if generator is not None else None)
        self.data.copy_(torch.nn.functional.normalize(rows, dim=1))
        self.ptr.zero_()
        self.filled.fill_(self.size)
        return self

    @torch.no_grad()
    def fill_uniform_(self, bound: float | None = None,
                      generator: torch.Generator | None = None) -> FeatureQueue:
        """Fill every row with values drawn uniformly from ``(-a, a)``, not normalised, and mark
        the memory full: CompRess's memory start (``torch.rand(K, D) * 2a - a`` with
        ``a = 1 / sqrt(D / 3)``, the default ``bound``, so that ``E ||row||^2 = 1``)."""
        a = 1.0 / (self.dim / 3.0) ** 0.5 if bound is None else float(bound)
        if a <= 0:
            raise ValueError(f"bound must be > 0, got {a}")
        rows = torch.rand(self.size, self.dim, generator=generator,
                          device=generator.device if generator is not None else None)
        self.data.copy_(rows.mul_(2.0 * a).sub_(a))
        self.ptr.zero_()
        self.filled.fill_(self.size)
        return self

    @torch.no_grad()
    def reset(self) -> None:
        self.data.zero_()
        self.ptr.zero_()
        self.filled.zero_()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
