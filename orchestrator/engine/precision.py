"""The numeric side of a step on each device: bf16 autocast for the forwards (the losses
compute in float32 themselves), channels_last memory layout.

``train.precision``: ``auto`` autocasts to bf16 on CUDA and runs fp32 on CPU (CPU results
stay bit-identical to a plain fp32 run); ``bf16`` autocasts on either device (on CPU through
oneDNN's bf16 kernels: slower on CPUs without native bf16, but the same mixed-precision code
path a GPU runs, so the CPU tests exercise it); ``fp32`` never autocasts.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

# (precision, device type) -> autocast dtype; absent: fp32 (no autocast).
AUTOCAST: dict[tuple[str, str], torch.dtype] = {
    ("auto", "cuda"): torch.bfloat16,
    ("bf16", "cuda"): torch.bfloat16,
    ("bf16", "cpu"): torch.bfloat16,
}


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype ``precision`` autocasts the forwards to on ``device``; None: fp32."""
    return AUTOCAST.get((precision, device.type))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``train.precision`` on ``device`` (see :data:`AUTOCAST`)."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def memory_format(device: torch.device, stacked: bool = False) -> torch.memory_format:
    """channels_last: cuDNN's fast layout for these convnets, and oneDNN's on CPU too
    (measured on the 2-core machine, 1 thread, batch 128 at 16x16: a resnet20 step 172 ->
    145 ms, wrn_40_1 340 -> 284 ms, wrn_16_2 303 -> 257 ms). Stacked members on CPU stay
    contiguous: vmapped convolutions in channels_last round differently enough from the
    member path to leave the 1e-4 agreement within 20 steps (tests/orchestrator/test_fusion.py),
    and stacking buys nothing on CPU anyway."""
    if stacked and device.type != "cuda":
        return torch.contiguous_format
    return torch.channels_last
