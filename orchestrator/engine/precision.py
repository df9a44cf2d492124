"""The numeric side of a step on each device: bf16 autocast for the forwards on CUDA (the
losses compute in float32 themselves), fp32 on CPU; channels_last memory layout."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``train.precision``: ``auto`` and ``bf16`` autocast to bf16 on CUDA; CPU runs fp32."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
