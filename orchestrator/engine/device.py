"""Where a group runs: the torch device of ``resources.device`` and, on a shared GPU, this
process's CUDA memory cap.

``resources.gpu: 0.25`` lets Ray place four trials (or fused groups) on one GPU; Ray only
counts, so each group caps its process's CUDA caching allocator at its share
(``torch.cuda.set_per_process_memory_fraction``), less room for the CUDA context every
process holds outside the allocator (an allocation past the cap raises CUDA's out-of-memory
error in that trial only). CUDA is never initialised without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CONTEXT_RESERVE_BYTES = 768 * 2**20  # per process, outside the allocator (CUDA context, cuDNN)
MIN_CAP_SHARE = 0.5  # the cap never goes below half the trial's share

MemInfo = Callable[[int], tuple[int, int]]  # device index -> (free, total) bytes


def resolve_device(name: str) -> torch.device:
    """``resources.device``: ``auto`` is CUDA when a GPU is visible, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("resources.device is cuda but no CUDA device is visible")
    return torch.device(name)


def memory_cap(gpu: float, total_bytes: int) -> float | None:
    """The fraction of a GPU's memory one trial's allocator may use, or None for no cap.

    ``gpu`` is ``resources.gpu``: below 1 the trial shares the GPU, and gets its share minus
    :data:`CONTEXT_RESERVE_BYTES` (so the shares and the contexts together fit), never below
    half its share; 0 (CPU) or whole GPUs (>= 1): no cap.
    """
    if not 0 < gpu < 1:
        return None
    reserve = CONTEXT_RESERVE_BYTES / total_bytes if total_bytes > 0 else 0.0
    return max(gpu - reserve, gpu * MIN_CAP_SHARE)


def cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def cap_memory(device: torch.device, gpu: float, *, mem_info: MemInfo | None = None,
               set_fraction: Callable[[float, int], None] | None = None) -> float | None:
    """Cap this process's CUDA allocator on ``device`` at the trial's share (see
    :func:`memory_cap`); returns the fraction set, None when nothing was capped (CPU, whole
    GPUs). ``mem_info`` / ``set_fraction`` stand in for torch.cuda in tests."""
    if device.type != "cuda" or not 0 < gpu < 1:
        return None
    index = cuda_index(device)
    info = mem_info or (lambda i: torch.cuda.mem_get_info(i))
    _, total = info(index)
    fraction = memory_cap(gpu, total)
    if fraction is None:
        return None
    (set_fraction or (lambda f, i: torch.cuda.set_per_process_memory_fraction(f, i)))(
        fraction, index)
    return fraction
