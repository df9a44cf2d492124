"""Teacher checkpoints (our own format) and loading of third-party backbone weights.

- :func:`save_teacher` / :func:`load_teacher`: a self-describing file (arch, classes, input
  channels, backbone and SSL-head state dicts, head dims, JSON metadata) written atomically
  and read back with ``torch.load(weights_only=True)``.
- :func:`load_backbone_weights`: user checkpoints from other code bases (DDP ``module.``,
  MoCo ``encoder_q.``, ``{"state_dict": ...}`` wrappers, RepDistiller ``{"model": ...}``,
  torchvision ``fc``...). Prefixes are found by trying the known ones and keeping the variant
  that matches most model keys; SSL extras are dropped; anything else that does not fit is a
  :class:`CheckpointError` listing the missing and unexpected keys.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.base import MODELS, Backbone, build_model
from models.heads import mlp_dims, mlp_from_dims
from models.teacher import FrozenTeacher

TEACHER_FORMAT = "ukd.teacher/1"

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
# Where SSL projection MLPs usually live (MoCo-v2 replaces ``fc`` with its MLP).
SSL_HEAD_PREFIXES = ("fc.", "head.", "projector.", "projection_head.", "mlp.", "ssl_head.")
_SHOW = 10


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did."""

    stripped_prefixes: tuple[str, ...]
    loaded: int
    classifier_loaded: bool
    dropped: tuple[str, ...]  # checkpoint keys (after prefix stripping) not used
    extras: dict[str, Tensor] = field(default_factory=dict, repr=False)  # dropped tensors


# ----------------------------------------------------------------------------- reading


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


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the target directory, then rename over the target, so a crash
    never leaves a half-written checkpoint under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    _atomic_save(payload, out)
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
            _mismatch_message(
                where,
                type(module).__name__,
                missing,
                unexpected,
                _shape_lines(shapes, state, own),
                (),
            )
        )
    module.load_state_dict(dict(state))


# ----------------------------------------------------------------------------- user checkpoints


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
        keys = ", ".join(map(str, list(obj)[:_SHOW]))
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
            _mismatch_message(
                where,
                model.arch or type(model).__name__,
                missing,
                [origin[k] for k in unexpected],
                _shape_lines(shape_bad, renamed, own),
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


def _shape_lines(
    keys: list[str], state: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> list[str]:
    return [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}" for k in keys]


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f" ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


def _mismatch_message(
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


# ----------------------------------------------------------------------------- SSL heads


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
