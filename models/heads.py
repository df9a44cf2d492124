"""Projection and self-supervision heads, built from feature dims alone."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``: the shape every method here uses."""
    if min(in_dim, hidden_dim, out_dim) <= 0:
        raise ValueError(f"head dims must be positive, got {in_dim}, {hidden_dim}, {out_dim}")
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )


def coss_projection(student_dim: int, teacher_dim: int, hidden_dim: int = 2048) -> nn.Module:
    """CoSS student head: ``Linear(D_s, 2048) -> ReLU -> Linear(2048, D_t)``; identity when
    the dims already match (methods.md section 1)."""
    if student_dim == teacher_dim:
        return nn.Identity()
    return mlp_head(student_dim, hidden_dim, teacher_dim)


def ss_head(dim: int) -> nn.Sequential:
    """SSKD self-supervision head on the pooled feature: ``Linear(d, d) -> ReLU -> Linear(d, d)``
    (methods.md section 2; same shape for teacher and student)."""
    return mlp_head(dim, dim, dim)


def mlp_from_dims(dims: Sequence[int]) -> nn.Sequential:
    """``Linear -> ReLU -> ... -> Linear`` through ``dims`` (>= 2 entries); the inverse of
    :func:`mlp_dims`, used to rebuild a saved SSL head."""
    if len(dims) < 2 or min(dims) <= 0:
        raise ValueError(f"need two or more positive dims, got {list(dims)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        if i:
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def mlp_dims(head: nn.Module) -> list[int]:
    """Layer widths of a ``Linear``/``ReLU`` Sequential (``[in, hidden..., out]``).

    Raises ValueError for anything else: such a head cannot be rebuilt from dims alone.
    """
    layers = list(head) if isinstance(head, nn.Sequential) else []
    pattern_ok = len(layers) % 2 == 1 and all(
        isinstance(m, nn.Linear if i % 2 == 0 else nn.ReLU) for i, m in enumerate(layers)
    )
    if not pattern_ok:
        raise ValueError(
            "an SSL head must be an nn.Sequential alternating Linear and ReLU "
            f"(Linear first and last), got {head}"
        )
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    if any(a.out_features != b.in_features for a, b in itertools.pairwise(linears)):
        raise ValueError("SSL head layers do not chain")
    return [linears[0].in_features] + [m.out_features for m in linears]
