"""The numeric side of a step on each device: bf16 autocast for the forwards on CUDA (the
losses compute in float32 themselves), fp32 on CPU."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``train.precision``: ``auto`` and ``bf16`` autocast to bf16 on CUDA; CPU runs fp32."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (cuDNN's fast layout for these convnets), contiguous on CPU."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format
