"""Linear probe on the frozen backbone (docs/METHODS.md, "Linear probe").

The pooled features of the train and test split (test-time transform, no head) are computed
once (:class:`~orchestrator.engine.evaluators.base.EvalContext` caches them for every evaluator),
standardised with the train split's per-dimension mean and std, and a linear classifier is
trained on them by SGD with momentum and a cosine schedule to zero: zero initialisation and a
batch order drawn from the run's seed, so a seed gives one result. Everything runs on the
run's device; top-1 / top-5 (at most min(5, C) classes) are percentages of the test split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.data.streams import generator
from orchestrator.engine.evaluators.base import EvalContext, register_evaluator
from orchestrator.spec.config import LinearConfig

PREFIX = "linear/"


@torch.no_grad()
def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp(min=1e-6) if train.shape[0] > 1 \
        else torch.ones_like(mean)
    return (train - mean) / std, (test - mean) / std


def train_linear(features: Tensor, labels: Tensor, num_classes: int, cfg: LinearConfig,
                 seed: int = 0) -> tuple[Tensor, Tensor]:
    """Weights (C x D) and bias (C) of a softmax classifier trained on ``features``."""
    n, dim = features.shape
    device = features.device
    weight = torch.zeros(num_classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    batch = n if cfg.batch_size == 0 else min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = cfg.epochs * steps_per_epoch
    step = 0
    with torch.enable_grad():
        for epoch in range(cfg.epochs):
            if batch == n:
                order = torch.arange(n, device=device)
            else:
                order = torch.randperm(n, generator=generator(seed, "probe", epoch)
                                       ).to(device)
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(features[idx] @ weight.T + bias, labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
    return weight.detach(), bias.detach()


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` of logits against labels (top-5 over min(5, C) classes)."""
    if labels.numel() == 0:
        return {"top1": float("nan"), "top5": float("nan")}
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    n = labels.numel()
    return {"top1": 100.0 * int(hits[:, 0].sum()) / n,
            "top5": 100.0 * int(hits.any(dim=1).sum()) / n}


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor,
                 test_labels: Tensor, num_classes: int, cfg: LinearConfig, seed: int = 0
                 ) -> dict[str, float]:
    """Top-1 / top-5 (%) on the test features of a linear classifier trained on the train
    features (raw pooled features, standardised here)."""
    train, test = _standardise(train_features.float(), test_features.float())
    weight, bias = train_linear(train, train_labels, num_classes, cfg, seed)
    return accuracy(test @ weight.T + bias, test_labels)


@register_evaluator("linear")
def linear_evaluator(ctx: EvalContext) -> dict[str, float]:
    cfg = ctx.evaluation.linear
    if cfg is None:
        return {}
    scores = linear_probe(ctx.train_raw_features, ctx.train_labels, ctx.test_raw_features,
                          ctx.test_labels, ctx.bundle.num_classes, cfg, ctx.seed)
    return {PREFIX + k: v for k, v in scores.items()}
