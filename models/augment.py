"""Batched tensor augmentations with per-sample randomness (airbench style).

Images live as one uint8 tensor (N x C x H x W), on the GPU when there is one; every op here
works on a whole batch at once, drawing each sample's random parameters from a
``torch.Generator`` so that a seed reproduces a run. No PIL, no per-sample Python loop.
Shared by the SSL pretraining recipes and the distillation trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """``crop_scale`` is the area range of a random resized crop (``(1, 1)``: none);
    ``pad`` a CIFAR-style random translation in pixels; ``jitter`` the colour-jitter strength
    (brightness/contrast/saturation), applied with probability ``jitter_p``."""

    crop_scale: tuple[float, float] = (1.0, 1.0)
    pad: int = 0
    flip: bool = True
    jitter: float = 0.0
    jitter_p: float = 0.8
    grayscale_p: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.pad < 0 or self.jitter < 0:
            raise ValueError("pad and jitter must be >= 0")
        for p in (self.jitter_p, self.grayscale_p):
            if not 0 <= p <= 1:
                raise ValueError(f"probabilities must be in [0, 1], got {p}")


# Presets used by recipes and trials, by name (YAML `augment:`).
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(flip=False),
    "crop_flip": AugmentConfig(pad=4, flip=True),  # CIFAR supervised / KD recipe
    "ssl": AugmentConfig(
        crop_scale=(0.2, 1.0), flip=True, jitter=0.4, jitter_p=0.8, grayscale_p=0.2
    ),  # SimCLR / MoCo-v2 style, no blur at low res
    "ssl_light": AugmentConfig(
        crop_scale=(0.5, 1.0), pad=0, flip=False, jitter=0.3, jitter_p=0.5
    ),  # digits: flips change a digit's meaning
}


def _uniform(
    n: int, lo: float, hi: float, gen: torch.Generator | None, device: torch.device
) -> Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def _geometric(x: Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    """Random resized crop + translation + flip as one affine resample per sample."""
    n, _, h, w = x.shape
    dev = x.device
    area = _uniform(n, cfg.crop_scale[0], cfg.crop_scale[1], gen, dev)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), gen, dev)
    if cfg.crop_scale == (1.0, 1.0):
        log_ratio = torch.zeros_like(log_ratio)
    ratio = torch.exp(log_ratio)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width as a fraction of the image
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    # Centre anywhere that keeps the crop inside the image, plus integer-pixel translation.
    tx = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - sy)
    if cfg.pad:
        shift = torch.randint(-cfg.pad, cfg.pad + 1, (2, n), generator=gen, device=dev).float()
        tx = tx + shift[0] * 2 / w
        ty = ty + shift[1] * 2 / h
    flip = torch.ones(n, device=dev)
    if cfg.flip:
        flip = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = sx * flip
    theta[:, 1, 1] = sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Zero padding outside the image, like torchvision's RandomCrop(padding=4).
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def _colour(x: Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    n = x.shape[0]
    dev = x.device
    if cfg.jitter > 0:
        on = (torch.rand(n, generator=gen, device=dev) < cfg.jitter_p).float().view(-1, 1, 1, 1)
        lo, hi = 1 - cfg.jitter, 1 + cfg.jitter
        b = _uniform(n, lo, hi, gen, dev).view(-1, 1, 1, 1)
        c = _uniform(n, lo, hi, gen, dev).view(-1, 1, 1, 1)
        s = _uniform(n, lo, hi, gen, dev).view(-1, 1, 1, 1)
        y = x * b
        mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * c + mean
        g = _gray(y)
        y = (y - g) * s + g
        x = on * y.clamp(0, 1) + (1 - on) * x
    if cfg.grayscale_p > 0:
        on = (torch.rand(n, generator=gen, device=dev) < cfg.grayscale_p).float().view(-1, 1, 1, 1)
        x = on * _gray(x) + (1 - on) * x
    return x


def augment(images: Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> Tensor:
    """uint8 batch -> augmented float batch in [0, 1]; :func:`normalise` comes after."""
    x = images.float().div(255.0)
    if cfg.crop_scale != (1.0, 1.0) or cfg.pad or cfg.flip:
        x = _geometric(x, cfg, gen)
    if cfg.jitter > 0 or cfg.grayscale_p > 0:
        x = _colour(x, cfg, gen)
    return x


def normalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (x - mean.view(1, -1, 1, 1).to(x.device)) / std.view(1, -1, 1, 1).to(x.device)
