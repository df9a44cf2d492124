"""Third-party backbone weights: user checkpoints from other code bases (DDP ``module.``, MoCo
``encoder_q.``, ``{"state_dict": ...}`` wrappers, RepDistiller ``{"model": ...}``, torchvision
``fc``...). Prefixes are found by trying the known ones and keeping the variant that matches
most model keys; SSL extras are set aside (an SSL head can be rebuilt from them); anything else
that does not fit is a :class:`CheckpointError` listing the missing and unexpected keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from models.base import Backbone, build_model
from models.checkpoint_format import (
    SHOWN_KEYS,
    CheckpointError,
    is_teacher_file,
    load_teacher,
    mismatch_message,
    read_checkpoint,
    shape_lines,
)
from models.heads import SSL_HEAD_PREFIXES, mlp_dims, ssl_head_from_state
from models.teacher import FrozenTeacher

# Wrapper keys under which training scripts nest the state dict, tried in this order.
NEST_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Key prefixes added by wrappers: DDP / DataParallel, torch.compile, MoCo (v1-2 / v3),
# solo-learn / lightly style ``backbone.``, and generic ``encoder.`` / ``model.`` / ``student.``.
STRIP_PREFIXES = (
    "module.",
    "_orig_mod.",
    "backbone.",
    "encoder_q.",
    "base_encoder.",
    "encoder.",
    "model.",
    "student.",
    "net.",
)
_MAX_STRIP_DEPTH = 4
# First key components of SSL / classifier extras that a backbone does not own.
EXTRA_HEADS = frozenset(
    {
        "fc",
        "head",
        "heads",
        "projector",
        "projection",
        "projection_head",
        "proj",
        "predictor",
        "prototypes",
        "classifier",
        "linear",
        "mlp",
        "ssl_head",
        "queue",
        "queue_ptr",
        "queue_idx",
        "memory",
    }
)



@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did."""

    stripped_prefixes: tuple[str, ...]
    loaded: int
    classifier_loaded: bool
    dropped: tuple[str, ...]  # checkpoint keys (after prefix stripping) not used
    extras: dict[str, Tensor] = field(default_factory=dict, repr=False)  # dropped tensors


def _unwrap(obj: Any, where: str) -> dict[str, Tensor]:
    """Descend through wrapper dicts (``{"state_dict": {...}}``...) to the tensors."""
    while isinstance(obj, Mapping):
        nested = next((k for k in NEST_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a state dict, got {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        keys = ", ".join(map(str, list(obj)[:SHOWN_KEYS]))
        raise CheckpointError(f"{where}: no tensors found (top-level keys: {keys})")
    return state


def _strip_variants(
    state: dict[str, Tensor], stripped: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Tensor]]]:
    """The state itself and every variant with known prefixes removed (keys without the
    prefix are left out of that variant: e.g. MoCo's ``encoder_k.`` and ``queue``)."""
    yield stripped, state
    if len(stripped) >= _MAX_STRIP_DEPTH:
        return
    for p in STRIP_PREFIXES:
        sub = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
        if sub:
            yield from _strip_variants(sub, (*stripped, p))


def _apply_aliases(
    state: Mapping[str, Tensor], aliases: Mapping[str, str | None]
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Rename reference-code classifier keys onto ours; returns (state, new->old, dropped)."""
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    for k, v in state.items():
        src = next((a for a in aliases if k.startswith(a)), None)
        if src is None:
            new: str | None = k
        else:
            target = aliases[src]
            new = None if target is None else target + k[len(src) :]
        if new is None:
            dropped.append(k)
        else:
            out[new] = v
            origin[new] = k
    return out, origin, dropped


def _score(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> int:
    return sum(1 for k, v in state.items() if k in own and v.shape == own[k].shape)


def _is_buffer_counter(key: str) -> bool:
    # BatchNorm's num_batches_tracked is absent from older checkpoints and unused in eval.
    return key.endswith("num_batches_tracked")


def load_backbone_weights(
    model: Backbone,
    path_or_state: str | os.PathLike[str] | Mapping[str, Any],
    *,
    allow_missing_classifier: bool = False,
) -> LoadReport:
    """Load third-party weights into ``model`` (see the module docstring).

    The classifier is loaded when the checkpoint has one of the right shape; otherwise the
    model's classifier (if any) is reported as missing unless ``allow_missing_classifier``.
    Raises CheckpointError with the missing / unexpected / mis-shaped keys.
    """
    if isinstance(path_or_state, Mapping):
        return _load_into(model, path_or_state, "state dict", allow_missing_classifier)
    raw = read_checkpoint(path_or_state)
    return _load_into(model, raw, str(path_or_state), allow_missing_classifier)


def _is_classifier(key: str) -> bool:
    return key.startswith("classifier.")


def _load_into(model: Backbone, raw: Any, where: str, allow_missing_classifier: bool) -> LoadReport:
    state = _unwrap(raw, where)
    own = model.state_dict()
    aliases = type(model).checkpoint_aliases

    # Keep the prefix-stripped variant that explains most model keys (fewest strips on ties).
    best: tuple[int, int] | None = None
    chosen: tuple[tuple[str, ...], dict[str, Tensor]] = ((), state)
    for stripped, variant in _strip_variants(state):
        renamed, _, _ = _apply_aliases(variant, aliases)
        key = (_score(renamed, own), -len(stripped))
        if best is None or key > best:
            best, chosen = key, (stripped, variant)
    stripped, variant = chosen
    renamed, origin, dropped = _apply_aliases(variant, aliases)

    shape_bad = [k for k in renamed if k in own and renamed[k].shape != own[k].shape]
    # A classifier for another number of classes is not an error of the backbone.
    dropped += [origin[k] for k in shape_bad if _is_classifier(k)]
    shape_bad = [k for k in shape_bad if not _is_classifier(k)]
    unexpected = [k for k in renamed if k not in own]
    dropped += [origin[k] for k in unexpected if k.split(".", 1)[0] in EXTRA_HEADS]
    unexpected = [k for k in unexpected if k.split(".", 1)[0] not in EXTRA_HEADS]
    usable = {k: v for k, v in renamed.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in usable and not _is_buffer_counter(k)]
    classifier_missing = any(_is_classifier(k) for k in missing)
    if allow_missing_classifier:
        missing = [k for k in missing if not _is_classifier(k)]
    if missing or unexpected or shape_bad:
        raise CheckpointError(
            mismatch_message(
                where,
                model.arch or type(model).__name__,
                missing,
                [origin[k] for k in unexpected],
                shape_lines(shape_bad, renamed, own),
                stripped,
            )
        )

    model.load_state_dict(usable, strict=False)
    prefix = "".join(stripped)
    outside = [k for k in state if not k.startswith(prefix)] if prefix else []
    return LoadReport(
        stripped_prefixes=stripped,
        loaded=len(usable),
        classifier_loaded=model.classifier is not None and not classifier_missing,
        dropped=tuple(outside + [prefix + k for k in dropped]),
        extras={k: variant[k] for k in dropped},
    )


# ----------------------------------------------------------------------------- teachers


def build_teacher_from_checkpoint(
    arch: str,
    path: str | os.PathLike[str],
    num_classes: int | None,
    in_channels: int = 3,
    *,
    with_ssl_head: bool = False,
    device: torch.device | str = "cpu",
) -> FrozenTeacher:
    """A frozen teacher from any checkpoint: a ukd teacher file or third-party weights.

    With ``num_classes`` the checkpoint must contain a matching classifier (KD-style methods
    need real logits). ``with_ssl_head`` also rebuilds a Linear/ReLU projection head found in
    the checkpoint (SEED / DisCo keep the teacher's head); its absence is an error.
    """
    obj = read_checkpoint(path)
    if is_teacher_file(obj):
        teacher, meta = load_teacher(path, device)
        if meta["arch"] != arch or meta["in_channels"] != in_channels:
            raise CheckpointError(
                f"{path} holds a {meta['arch']} teacher with "
                f"{meta['in_channels']} input channels; expected {arch} "
                f"with {in_channels}"
            )
        if num_classes is not None and meta["num_classes"] != num_classes:
            raise CheckpointError(
                f"{path} has {meta['num_classes']} classes, expected {num_classes}"
            )
        if with_ssl_head and teacher.ssl_head is None:
            raise CheckpointError(f"{path} has no SSL head")
        return teacher
    model = build_model(arch, num_classes, in_channels)
    report = _load_into(model, obj, str(path), allow_missing_classifier=False)
    head = None
    if with_ssl_head:
        head = ssl_head_from_state(report.extras)
        if head is None or mlp_dims(head)[0] != model.feature_dim:
            raise CheckpointError(
                f"{path}: no Linear/ReLU projection head with input dim "
                f"{model.feature_dim} under {', '.join(SSL_HEAD_PREFIXES)}"
            )
    return FrozenTeacher(model, head).to(device)
