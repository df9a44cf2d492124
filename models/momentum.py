"""The exponential moving average (momentum) update of MoCo-style key encoders, in one place.

``theta_k <- m * theta_k + (1 - m) * theta_q`` over every parameter, as two foreach kernels
instead of two kernels per tensor. Buffers (BatchNorm statistics) are not averaged: a key
encoder's statistics come from its own forward passes in train mode (MoCo, CompRess).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TypeVar

import torch
from torch import Tensor, nn


@torch.no_grad()
def ema_update_(targets: Iterable[Tensor], sources: Iterable[Tensor], momentum: float) -> None:
    """In place: ``t = momentum * t + (1 - momentum) * s`` for each pair."""
    t_list = list(targets)
    s_list = [s.detach().to(t.dtype) for s, t in zip(sources, t_list, strict=True)]
    if not t_list:
        return
    torch._foreach_mul_(t_list, momentum)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)


M = TypeVar("M", bound=nn.Module)


def frozen_copy(module: M) -> M:
    """A deep copy with gradients switched off (the starting point of a key encoder)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
        p.grad = None
    return twin
