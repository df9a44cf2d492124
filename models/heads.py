"""Projection and self-supervision heads, built from feature dims alone."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

# Where SSL projection MLPs usually live (MoCo-v2 replaces ``fc`` with its MLP).
SSL_HEAD_PREFIXES = ("fc.", "head.", "projector.", "projection_head.", "mlp.", "ssl_head.")


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``: the shape every method here uses."""
    if min(in_dim, hidden_dim, out_dim) <= 0:
        raise ValueError(f"head dims must be positive, got {in_dim}, {hidden_dim}, {out_dim}")
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )


def coss_projection(student_dim: int, teacher_dim: int, hidden_dim: int = 2048) -> nn.Module:
    """CoSS student head: ``Linear(D_s, 2048) -> ReLU -> Linear(2048, D_t)``; identity when
    the dims already match (docs/METHODS.md, "CoSS")."""
    if student_dim == teacher_dim:
        return nn.Identity()
    return mlp_head(student_dim, hidden_dim, teacher_dim)


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


# ----------------------------------------------------------------------------- rebuilding


def _mlp_layers(sub: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor | None]] | None:
    """``{"0.weight", "0.bias", "2.weight", ...}`` (or one ``weight``/``bias``) -> the Linear
    layers in order; None when the keys are not a plain chain of Linear layers."""
    if set(sub) <= {"weight", "bias"}:
        groups: dict[int, dict[str, Tensor]] = {0: dict(sub)}
    else:
        groups = {}
        for k, v in sub.items():
            idx, _, name = k.partition(".")
            if not idx.isdigit() or name not in ("weight", "bias"):
                return None  # BatchNorm or other layers: not rebuildable from dims
            groups.setdefault(int(idx), {})[name] = v
    layers = [(g.get("weight"), g.get("bias")) for _, g in sorted(groups.items())]
    out: list[tuple[Tensor, Tensor | None]] = []
    for w, b in layers:
        if w is None or w.dim() != 2 or (out and out[-1][0].shape[0] != w.shape[1]):
            return None
        out.append((w, b))
    return out


def ssl_head_from_state(
    extras: Mapping[str, Tensor], prefixes: tuple[str, ...] = SSL_HEAD_PREFIXES
) -> nn.Sequential | None:
    """Rebuild a Linear/ReLU projection MLP stored under one of ``prefixes`` (e.g. MoCo-v2's
    ``fc.0`` / ``fc.2``, or a single ``head.weight``); None when there is none.

    Heads with other layers (BatchNorm: SimSiam, BYOL) are not supported and give None.
    """
    for p in prefixes:
        layers = _mlp_layers({k[len(p) :]: v for k, v in extras.items() if k.startswith(p)})
        if not layers:
            continue
        head = mlp_from_dims([int(layers[0][0].shape[1])] + [int(w.shape[0]) for w, _ in layers])
        linears = [m for m in head if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, (w, b) in zip(linears, layers, strict=True):
                lin.weight.copy_(w)
                lin.bias.copy_(b if b is not None else torch.zeros_like(lin.bias))
        return head
    return None
