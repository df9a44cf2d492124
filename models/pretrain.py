"""Teacher pretraining recipes (SimCLR, MoCo-v2, supervised) on an in-memory uint8 dataset.

No DataLoader: each step indexes the uint8 tensor with a seeded permutation, augments the batch
on the device (:mod:`models.augment`) and normalises it. SGD with momentum and a per-step
cosine schedule to zero. On CPU a seed reproduces a run exactly.

- ``simclr``: NT-Xent over two views, projection ``mlp_head(d, d, proj_dim)``.
- ``mocov2``: query / momentum-key encoders (backbone + ``mlp_head(d, d, proj_dim)``), a queue
  of past keys, InfoNCE at ``temperature``. Shuffle-BN is emulated on one device by encoding
  the keys as two shuffled halves, so a query and its key never share BatchNorm statistics.
- ``supervised``: cross-entropy through the backbone's own classifier.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.fields import Bounds, Choice, Config
from common.hashing import content_hash
from common.schedules import cosine_factor
from models.augment import AUGMENT_PRESETS, augment, normalise
from models.base import Backbone, build_model, model_names
from models.heads import mlp_head
from models.momentum import ema_update_, frozen_copy
from models.queue import FeatureQueue

# Bump when a recipe's computation changes, so that cached teachers are not reused.
RECIPE_VERSION = 1
_AUTO = "auto"
_MIN_SIZE = 8


def recipe_names() -> tuple[str, ...]:
    return tuple(RECIPES)


def _augment_names() -> tuple[str, ...]:
    return (_AUTO, *AUGMENT_PRESETS)


@dataclass(frozen=True)
class PretrainConfig(Config):
    """Everything that determines a pretrained teacher (:meth:`content_hash` is its cache key).

    ``augment`` is a preset name from ``AUGMENT_PRESETS`` or ``"auto"`` (the recipe's default:
    ``ssl`` for SimCLR / MoCo-v2, ``crop_flip`` for supervised), resolved at construction, so
    two spellings of one recipe resolve to one config. ``temperature``, ``proj_dim``,
    ``queue_size`` and ``key_momentum`` only matter to the recipes that use them.
    """

    recipe: Annotated[str, Choice(recipe_names)] = "simclr"
    arch: Annotated[str, Choice(model_names)] = "resnet8x4"
    epochs: Annotated[int, Bounds(ge=1)] = 50
    batch_size: Annotated[int, Bounds(ge=2)] = 256  # contrastive losses need two samples
    lr: Annotated[float, Bounds(gt=0)] = 0.06
    weight_decay: Annotated[float, Bounds(ge=0)] = 5e-4
    momentum: Annotated[float, Bounds(ge=0, lt=1)] = 0.9
    temperature: Annotated[float, Bounds(gt=0)] = 0.2
    proj_dim: Annotated[int, Bounds(ge=1)] = 128
    augment: Annotated[str, Choice(_augment_names)] = _AUTO
    seed: Annotated[int, Bounds(ge=0)] = 0
    queue_size: Annotated[int, Bounds(ge=1)] = 4096
    key_momentum: Annotated[float, Bounds(ge=0, lt=1)] = 0.99
    in_channels: Annotated[int, Bounds(ge=1)] = 3

    def check(self) -> None:
        if self.augment == _AUTO:
            object.__setattr__(self, "augment", RECIPES[self.recipe].default_augment)

    def content_hash(self) -> str:
        """16 hex chars of the sha256 of the resolved config and :data:`RECIPE_VERSION`."""
        return content_hash({"recipe_version": RECIPE_VERSION, **self.to_dict()}, 16)


# ----------------------------------------------------------------------------- methods


class _Method(nn.Module):
    """A recipe's trainable state: the backbone plus whatever the loss needs."""

    num_views = 1

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def loss(self, views: list[Tensor], labels: Tensor | None, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (momentum encoders, queues)."""

    @property
    def ssl_head(self) -> nn.Module | None:
        return None


def nt_xent(z: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent: ``z`` holds both views' projections stacked (2B x d); each row's
    positive is the other view of the same image, the other 2B - 2 rows are negatives."""
    n = z.shape[0] // 2
    z = F.normalize(z, dim=1)
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


class _SimCLR(_Method):
    num_views = 2

    def __init__(self, backbone: Backbone, cfg: PretrainConfig, dataset_size: int) -> None:
        super().__init__(backbone)
        d = backbone.feature_dim
        self.head = mlp_head(d, d, cfg.proj_dim)
        self.temperature = cfg.temperature

    def loss(self, views: list[Tensor], labels: Tensor | None, gen: torch.Generator) -> Tensor:
        # One forward pass for both views: BatchNorm sees the whole 2B batch, as in SimCLR.
        return nt_xent(self.head(self.backbone(torch.cat(views))), self.temperature)

    @property
    def ssl_head(self) -> nn.Module | None:
        return self.head


class _MoCoV2(_Method):
    num_views = 2

    def __init__(self, backbone: Backbone, cfg: PretrainConfig, dataset_size: int) -> None:
        super().__init__(backbone)
        d = backbone.feature_dim
        self.head = mlp_head(d, d, cfg.proj_dim)
        self.key_backbone = frozen_copy(backbone)
        self.key_head = frozen_copy(self.head)
        size = cfg.queue_size
        # A queue longer than half the data mostly holds stale keys of the very images in the
        # batch (their own positives as negatives); shrink it for tiny datasets.
        cap = max(dataset_size // 2, min(cfg.batch_size, dataset_size))
        if size > cap:
            warnings.warn(
                f"mocov2 queue_size {size} > half the dataset ({dataset_size}); using {cap}",
                stacklevel=3,
            )
            size = cap
        self.queue = FeatureQueue(size, cfg.proj_dim).fill_random_()
        self.temperature = cfg.temperature
        self.key_momentum = cfg.key_momentum
        self._pending: Tensor | None = None

    @torch.no_grad()
    def _keys(self, x: Tensor, gen: torch.Generator) -> Tensor:
        n = x.shape[0]
        perm = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
        chunks = 2 if n >= 4 else 1
        k = torch.cat([self.key_head(self.key_backbone(c)) for c in x[perm].chunk(chunks)])
        out = torch.empty_like(k)
        out[perm] = k
        return F.normalize(out, dim=1)

    def loss(self, views: list[Tensor], labels: Tensor | None, gen: torch.Generator) -> Tensor:
        q = F.normalize(self.head(self.backbone(views[0])), dim=1)
        k = self._keys(views[1], gen)
        pos = (q * k).sum(dim=1, keepdim=True)
        neg = q @ self.queue.data.T
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        self._pending = k
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))

    @torch.no_grad()
    def after_step(self) -> None:
        ema_update_([*self.key_backbone.parameters(), *self.key_head.parameters()],
                    [*self.backbone.parameters(), *self.head.parameters()], self.key_momentum)
        if self._pending is not None:
            self.queue.enqueue(self._pending)
            self._pending = None

    @property
    def ssl_head(self) -> nn.Module | None:
        return self.head


class _Supervised(_Method):
    def __init__(self, backbone: Backbone, cfg: PretrainConfig, dataset_size: int) -> None:
        super().__init__(backbone)
        if backbone.classifier is None:
            raise ValueError("the supervised recipe needs a backbone with a classifier")

    def loss(self, views: list[Tensor], labels: Tensor | None, gen: torch.Generator) -> Tensor:
        if labels is None:
            raise ValueError("the supervised recipe needs labels")
        return F.cross_entropy(self.backbone.forward_logits(self.backbone(views[0])), labels)


@dataclass(frozen=True)
class Recipe:
    name: str
    needs_labels: bool  # also: the backbone gets a classifier
    default_augment: str
    build: Callable[[Backbone, PretrainConfig, int], _Method]  # (backbone, cfg, dataset size)
    description: str


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("simclr", False, "ssl", _SimCLR, "SimCLR: NT-Xent over two views"),
        Recipe("mocov2", False, "ssl", _MoCoV2, "MoCo-v2: momentum key encoder + queue, InfoNCE"),
        Recipe("supervised", True, "crop_flip", _Supervised, "cross-entropy on labels"),
    )
}


# ----------------------------------------------------------------------------- training


def _check_inputs(
    cfg: PretrainConfig, images: Tensor, labels: Tensor | None, num_classes: int | None
) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    if c != cfg.in_channels:
        raise ValueError(f"images have {c} channels but in_channels={cfg.in_channels}")
    if min(h, w) < _MIN_SIZE or n < 2:
        raise ValueError(
            f"need >= 2 images of at least {_MIN_SIZE}x{_MIN_SIZE}, got {tuple(images.shape)}"
        )
    if not RECIPES[cfg.recipe].needs_labels:
        return
    if labels is None or num_classes is None:
        raise ValueError(f"recipe {cfg.recipe!r} needs labels and num_classes")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")


def pretrain_teacher(
    cfg: PretrainConfig,
    images: Tensor,
    labels: Tensor | None,
    mean: Tensor,
    std: Tensor,
    num_classes: int | None,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[Backbone, nn.Module | None]:
    """Train a teacher from scratch; returns ``(backbone, ssl_head)`` in eval mode.

    The backbone has a classifier only for ``supervised`` (whose head is None). ``on_epoch``
    gets ``(epoch from 1, {"loss", "lr", "epoch_time_s"})``.
    """
    _check_inputs(cfg, images, labels, num_classes)
    recipe = RECIPES[cfg.recipe]
    n = int(images.shape[0])
    # Seed the weight init without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backbone = build_model(
            cfg.arch, num_classes if recipe.needs_labels else None, cfg.in_channels
        )
        method = recipe.build(backbone, cfg, n)
    method.to(device).train()

    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, n)
    steps = n // batch  # drop the ragged last batch: tiny batches upset BN and contrastive losses
    total = cfg.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, total))

    aug_cfg = AUGMENT_PRESETS[cfg.augment]
    data = images.to(device)
    targets = None if labels is None or not recipe.needs_labels else labels.to(device)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        perm = torch.randperm(n, generator=order_gen).to(device)
        running = torch.zeros((), device=device)
        for i in range(steps):
            idx = perm[i * batch : (i + 1) * batch]
            x = data[idx]
            views = [
                normalise(augment(x, aug_cfg, aug_gen), mean, std) for _ in range(method.num_views)
            ]
            loss = method.loss(views, None if targets is None else targets[idx], aug_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            method.after_step()
            running += loss.detach()
        mean_loss = float(running) / steps
        if not math.isfinite(mean_loss):
            raise RuntimeError(
                f"{cfg.recipe} pretraining diverged at epoch {epoch} "
                f"(loss {mean_loss}); lower lr (now {cfg.lr})"
            )
        if on_epoch is not None:
            on_epoch(
                epoch, {"loss": mean_loss, "lr": lr, "epoch_time_s": time.perf_counter() - start}
            )
    head = method.ssl_head
    backbone.eval()
    if head is not None:
        head.eval()
    return backbone, head
