"""A frozen teacher: backbone (+ optional SSL projection head, + optional classifier).

The teacher never trains during distillation: parameters have ``requires_grad=False`` and
the module stays in eval mode (BatchNorm statistics frozen) whatever ``train()`` is called with.
:meth:`FrozenTeacher.batch_features` is the one other forward: BatchNorm normalises with the
batch's own statistics, as the official DisCo and BINGO code (teacher in train mode) does,
without touching the running statistics or any weight.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from models.base import Backbone


class TeacherOutputs(Protocol):
    """What objectives call on a teacher: a :class:`FrozenTeacher`, or the shared pass of a
    fused group that computes each output once per batch."""

    @property
    def feature_dim(self) -> int: ...

    @property
    def embedding_dim(self) -> int: ...

    @property
    def has_classifier(self) -> bool: ...

    def features(self, x: Tensor) -> Tensor: ...

    def batch_features(self, x: Tensor) -> Tensor: ...

    def embedding(self, features: Tensor) -> Tensor: ...

    def logits(self, features: Tensor) -> Tensor: ...


class FrozenTeacher(nn.Module):
    def __init__(self, backbone: Backbone, ssl_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.ssl_head = ssl_head
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        # Distillation loops call model.train(); the teacher must stay in eval mode.
        return super().train(False)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    @property
    def has_classifier(self) -> bool:
        return self.backbone.has_classifier

    @property
    def embedding_dim(self) -> int:
        """Dim of :meth:`embedding` (SSL head output, or raw features without a head)."""
        if self.ssl_head is None:
            return self.feature_dim
        with torch.no_grad():
            dev = next(self.backbone.parameters()).device
            return int(self.ssl_head(torch.zeros(2, self.feature_dim, device=dev)).shape[1])

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Raw pooled backbone features (CoSS uses these: the SSL head is not used)."""
        return self.backbone.forward_features(x)

    @torch.no_grad()
    def batch_features(self, x: Tensor) -> Tensor:
        """Pooled features with every BatchNorm layer normalising by the statistics of ``x``
        itself (train-mode BatchNorm, the official DisCo / BINGO teacher forward), under
        ``no_grad``. The running statistics and ``num_batches_tracked`` are not updated:
        the layers run with ``track_running_stats=False`` for this call and are restored
        afterwards, so the teacher's ``state_dict`` is bit-identical after it."""
        layers = [m for m in self.backbone.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.training, m.track_running_stats) for m in layers]
        try:
            for m in layers:
                m.training = True
                m.track_running_stats = False
            return self.backbone.forward_features(x)
        finally:
            for m, (training, tracking) in zip(layers, saved, strict=True):
                m.training = training
                m.track_running_stats = tracking

    @torch.no_grad()
    def embedding(self, features: Tensor) -> Tensor:
        """SSL-head output for methods that keep the teacher's head (SEED, DisCo)."""
        return features if self.ssl_head is None else self.ssl_head(features)

    @torch.no_grad()
    def logits(self, features: Tensor) -> Tensor:
        return self.backbone.forward_logits(features)
