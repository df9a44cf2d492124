"""Pretrained torchvision weights by name, cache first, with an actionable offline error.

A weights spec is ``torchvision:<arch>[:<WEIGHTS>]`` (``WEIGHTS`` an enum member name of
``torchvision.models.get_model_weights(arch)``, default ``DEFAULT``), e.g.
``torchvision:resnet50:IMAGENET1K_V2``. The file is looked up in torch hub's cache
(``torch.hub.get_dir()/checkpoints``, honours ``TORCH_HOME``) before anything is downloaded;
without a network the error names the file and the folder to put it in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torchvision.models import get_model_weights

from models.base import Backbone, build_model, get_model_spec
from models.checkpoint_format import CheckpointError, read_checkpoint
from models.teacher import FrozenTeacher
from models.weights import load_backbone_weights

HUB_SCHEME = "torchvision"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class HubWeights:
    """One torchvision weights entry, resolved without downloading."""

    arch: str
    weights: str  # enum member name, e.g. IMAGENET1K_V2 (DEFAULT resolved)
    url: str
    num_classes: int

    @property
    def file_name(self) -> str:
        return os.path.basename(urlparse(self.url).path)

    @property
    def path(self) -> Path:
        return cache_dir() / self.file_name


def cache_dir() -> Path:
    """Where torch hub keeps downloaded checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def parse_hub_spec(spec: str) -> tuple[str, str]:
    """``torchvision:resnet50:IMAGENET1K_V2`` -> ``("resnet50", "IMAGENET1K_V2")``."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != HUB_SCHEME or not parts[1]:
        raise ValueError(
            f"bad weights spec {spec!r}; expected "
            f"'{HUB_SCHEME}:<arch>[:<WEIGHTS>]', e.g. torchvision:resnet50:DEFAULT"
        )
    return parts[1], parts[2] if len(parts) == 3 and parts[2] else "DEFAULT"


def resolve_weights(arch: str, weights: str = "DEFAULT") -> HubWeights:
    """Look up a torchvision weights enum member (no network)."""
    spec = get_model_spec(arch)
    if spec.family != "imagenet":
        raise ValueError(
            f"no torchvision weights for {arch!r} (family {spec.family!r}); "
            "pretrained weights exist for the imagenet family only"
        )
    enum = get_model_weights(arch)
    try:
        entry = enum[weights]
    except KeyError:
        names = ", ".join(["DEFAULT", *enum.__members__])
        raise ValueError(f"unknown weights {weights!r} for {arch}; allowed: {names}") from None
    return HubWeights(arch, entry.name, entry.url, len(entry.meta["categories"]))


def _download(url: str, dst: Path) -> None:
    """Network fetch (tests replace this). torch writes a temp file and renames it, and
    checks the sha256 prefix that torchvision puts in its file names."""
    match = torch.hub.HASH_REGEX.search(dst.name)
    torch.hub.download_url_to_file(url, str(dst), match.group(1) if match else None, progress=False)


def fetch_weights(arch: str, weights: str = "DEFAULT") -> Path:
    """Path of the weights file: from the hub cache, else downloaded into it."""
    hw = resolve_weights(arch, weights)
    target = hw.path
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _download(hw.url, target)
    except (URLError, OSError, RuntimeError) as exc:  # offline, DNS, timeout, hash mismatch
        raise WeightsUnavailableError(
            f"cannot download {HUB_SCHEME}:{arch}:{hw.weights} ({type(exc).__name__}: {exc}). "
            f"Without network access, download {hw.url} elsewhere and put the file "
            f"'{hw.file_name}' in '{target.parent}' (torch.hub.get_dir()/checkpoints; set "
            "TORCH_HOME to move it)"
        ) from exc
    return target


def pretrained_backbone(
    arch: str, weights: str = "DEFAULT", num_classes: int | None = None
) -> Backbone:
    """An ImageNet-pretrained backbone. ``num_classes`` is None (features only) or the
    weights' own class count (then the classifier is loaded too)."""
    hw = resolve_weights(arch, weights)
    if num_classes is not None and num_classes != hw.num_classes:
        raise ValueError(
            f"{arch}:{hw.weights} classifies {hw.num_classes} classes; use "
            f"num_classes=None (no classifier) or {hw.num_classes}"
        )
    path = fetch_weights(arch, weights)
    try:
        state = read_checkpoint(path)
    except CheckpointError as exc:
        raise WeightsUnavailableError(
            f"{exc}; delete '{path}' and retry, or replace it with a good copy of {hw.url}"
        ) from exc
    model = build_model(arch, num_classes, 3)
    load_backbone_weights(model, state)
    return model


def pretrained_teacher(
    spec: str, num_classes: int | None = None, device: torch.device | str = "cpu"
) -> FrozenTeacher:
    """A frozen teacher from a ``torchvision:<arch>[:<WEIGHTS>]`` spec."""
    arch, weights = parse_hub_spec(spec)
    return FrozenTeacher(pretrained_backbone(arch, weights, num_classes)).to(device)
