"""ukd's own teacher file: a self-describing checkpoint (arch, classes, input channels, backbone
and SSL-head state dicts, head dims, JSON metadata), written atomically and read back with
``torch.load(weights_only=True)``; every failure to read a checkpoint is a :class:`CheckpointError`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.atomic import torch_save
from models.base import MODELS, Backbone, build_model
from models.heads import mlp_dims, mlp_from_dims
from models.teacher import FrozenTeacher

TEACHER_FORMAT = "ukd.teacher/1"
SHOWN_KEYS = 10  # keys listed in an error message


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU; every failure is a CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        # argparse.Namespace is common in training scripts' checkpoints and safe to rebuild.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, disallowed globals, I/O errors
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = ""
        if "weights_only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            hint = (
                " (the file holds Python objects besides tensors and plain containers; "
                "re-save it with torch.save(model.state_dict(), path))"
            )
        raise CheckpointError(
            f"cannot read checkpoint {p}: {type(exc).__name__}: {first_line}{hint}"
        ) from exc


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- teacher files


def save_teacher(
    path: str | os.PathLike[str],
    backbone: Backbone,
    ssl_head: nn.Module | None,
    meta: Mapping[str, Any],
) -> Path:
    """Save a teacher so that :func:`load_teacher` can rebuild it without other information.

    ``backbone`` must come from :func:`models.base.build_model` (its ``arch`` is recorded);
    ``ssl_head`` must be a Linear/ReLU MLP (its dims are recorded); ``meta`` must be
    JSON-serialisable (it is stored as JSON so the file stays loadable with weights_only).
    """
    if backbone.arch is None or backbone.arch not in MODELS:
        raise ValueError("backbone has no registered arch name; build it with build_model()")
    try:
        meta_json = json.dumps(dict(meta), sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"teacher meta must be JSON-serialisable: {exc}") from None
    payload = {
        "format": TEACHER_FORMAT,
        "arch": backbone.arch,
        "num_classes": backbone.num_classes,
        "in_channels": backbone.in_channels,
        "feature_dim": backbone.feature_dim,
        "backbone": _cpu_state(backbone),
        "ssl_head_dims": None if ssl_head is None else mlp_dims(ssl_head),
        "ssl_head": None if ssl_head is None else _cpu_state(ssl_head),
        "meta_json": meta_json,
    }
    out = Path(path)
    torch_save(out, payload)
    return out


def is_teacher_file(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == TEACHER_FORMAT


def load_teacher(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[FrozenTeacher, dict[str, Any]]:
    """Rebuild a teacher saved by :func:`save_teacher`.

    Returns the frozen teacher and its metadata: the saved ``meta`` plus ``arch``,
    ``num_classes``, ``in_channels``, ``feature_dim`` and ``ssl_head_dims`` (saved meta wins
    on a name clash).
    """
    obj = read_checkpoint(path)
    if not is_teacher_file(obj):
        raise CheckpointError(
            f"{path} is not a ukd teacher file (format {TEACHER_FORMAT!r}); "
            "use build_teacher_from_checkpoint for other checkpoints"
        )
    try:
        arch, num_classes, in_channels = obj["arch"], obj["num_classes"], obj["in_channels"]
        backbone = build_model(arch, num_classes, in_channels)
        _load_exact(backbone, obj["backbone"], f"{path} (backbone)")
        head: nn.Module | None = None
        if obj["ssl_head"] is not None:
            head = mlp_from_dims(obj["ssl_head_dims"])
            _load_exact(head, obj["ssl_head"], f"{path} (ssl head)")
        meta = json.loads(obj["meta_json"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"malformed teacher file {path}: {exc!r}") from exc
    info = {
        "arch": arch,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "feature_dim": obj["feature_dim"],
        "ssl_head_dims": obj["ssl_head_dims"],
    }
    teacher = FrozenTeacher(backbone, head).to(device)
    return teacher, {**info, **meta}


def _load_exact(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            mismatch_message(
                where,
                type(module).__name__,
                missing,
                unexpected,
                shape_lines(shapes, state, own),
                (),
            )
        )
    module.load_state_dict(dict(state))


def shape_lines(
    keys: list[str], state: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> list[str]:
    return [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}" for k in keys]


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_KEYS])
    more = f" ... (+{len(items) - SHOWN_KEYS} more)" if len(items) > SHOWN_KEYS else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


def mismatch_message(
    where: str,
    model_name: str,
    missing: list[str],
    unexpected: list[str],
    shapes: list[str],
    stripped: tuple[str, ...],
) -> str:
    msg = f"checkpoint {where} does not fit model {model_name!r}"
    if stripped:
        msg += f" (after stripping prefixes {' + '.join(stripped)})"
    msg += ":"
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            msg += _listing(title, items)
    return msg
