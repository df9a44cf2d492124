"""Random streams: every random number a trial draws comes from a generator derived from its
seed, never from torch's global generator.

- The *data stream* is a function of (seed, epoch, step, purpose): the batch order of an
  epoch, the neighbour draws, each view's augmentation and each extra fetch get a generator
  of their own, seeded from that tuple. Trials that share a seed therefore see the same
  batches whichever other trials run beside them, and an epoch can be replayed after a resume
  without saved generator state.
- The *model stream* belongs to one trial: its weight initialisation and the randomness of
  its objective (queues, CutMix boxes, bag draws), saved in its checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

_MASK = (1 << 64) - 1
PURPOSES = {"order": 1, "view": 2, "fetch": 3, "model": 4, "init": 5, "prepare": 6, "probe": 7}


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed mixed from ``seed`` and ``parts`` (splitmix64 chain)."""
    x = _splitmix(seed & _MASK)
    for part in parts:
        x = _splitmix(x ^ (part & _MASK))
    return x & ((1 << 63) - 1)


def _splitmix_array(x: np.ndarray) -> np.ndarray:
    """:func:`_splitmix` of every element of a uint64 array (numpy's uint64 arithmetic wraps
    modulo 2^64, as the masks do)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


def derive_seeds(seed: int, *parts: int, last: int) -> list[int]:
    """``[derive_seed(seed, *parts, i) for i in range(last)]``, the common chain mixed once
    and the last step for all ``i`` at once (a batch's view seeds: thousands per step)."""
    x = _splitmix(seed & _MASK)
    for part in parts:
        x = _splitmix(x ^ (part & _MASK))
    out = _splitmix_array(np.uint64(x) ^ np.arange(last, dtype=np.uint64))
    seeds: list[int] = (out & np.uint64((1 << 63) - 1)).tolist()
    return seeds


def generator(seed: int, purpose: str, *parts: int,
              device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` for one purpose of the stream of ``seed``."""
    return torch.Generator(device=device).manual_seed(
        derive_seed(seed, PURPOSES[purpose], *parts))


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Module construction (``nn.Linear``'s init draws from the global generator) seeded from
    the trial's model stream, leaving the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, PURPOSES["init"]))
        yield
