"""Batched tensor augmentations with per-sample randomness (airbench style).

Images live as one uint8 tensor (N x C x H x W), on the GPU when there is one; the ops here
work on a whole batch at once, drawing each sample's random parameters from a
``torch.Generator`` so that a seed reproduces a run. No PIL, no per-pixel Python work.
Shared by the SSL pretraining recipes, the distillation trials and the streaming loader.

Two families of presets (YAML ``augment:``, :data:`AUGMENT_PRESETS`):

- ukd's own low-resolution presets (``none``, ``crop_flip``, ``ssl``, ``ssl_light``): one
  affine resample per sample (crop + translation + flip) and a fixed-order colour jitter.
  Their outputs are kept bit for bit (``crop="affine"``, ``colour="ukd"``, the defaults).
- ``mocov2``: CoSS's ``mocov2_aug`` (paganpasta/coss-pytorch ``tools/utils.py``), i.e.
  MoCo-v2 / SimCLR: RandomResizedCrop(scale (0.2, 1), ratio (3/4, 4/3)), ColorJitter(0.4,
  0.4, 0.4, 0.1) with p 0.8, RandomGrayscale(0.2), Gaussian blur sigma ~ U(0.1, 2) with p 0.5,
  horizontal flip. Every op follows ``torchvision.transforms.v2.functional`` (tested against
  it): ``crop="torchvision"`` uses RandomResizedCrop's sampling rule and an antialiased
  bilinear resize; ``colour="torchvision"`` applies ColorJitter's four ops in a per-sample
  uniformly random order, clamping to [0, 1] after each, with the 0.2989/0.587/0.114 luma.
  The blur is torchvision's ``gaussian_blur`` (reflect padding); the official code blurs with
  PIL's ``ImageFilter.GaussianBlur(radius=sigma)`` (an unbounded box approximation), so the
  kernel size is SimCLR's rule, ``2 * (int(0.1 * side) // 2) + 1``: 23 at 224 px, 3 at 32 px.

The ``mocov2`` pipeline splits in two so a streaming loader can run the geometric part per
image at decode time on CPU and the photometric part batched on the device:

- ``sample_crop(height: int, width: int, scale: tuple[float, float], ratio: tuple[float,
  float], gen: torch.Generator | None = None) -> tuple[int, int, int, int]``: (top, left,
  height, width) by RandomResizedCrop's rule (up to 10 draws of area and log-ratio, then the
  centre-crop fallback), drawing exactly what ``RandomResizedCrop.make_params`` draws, in the
  same order, from ``gen`` (a CPU generator).
- ``crop_resize_flip(image: Tensor, box: tuple[int, int, int, int], size: int, flip: bool)
  -> Tensor``: crop, antialiased bilinear resize to ``size`` x ``size``, optional horizontal
  flip; CHW or NCHW, keeps the dtype (uint8 rounded; native uint8 resize on AVX2 CPUs, as
  torchvision).
- ``resized_crops(images: Sequence[Tensor], owners: Sequence[int], boxes: Sequence[Box],
  flips: Sequence[bool], size: int) -> Tensor``: many ``crop_resize_flip`` calls (view v of
  image ``owners[v]``; uint8 CHW images of any sizes) as a few batched float64 matrix
  products, within one grey level of the per-view resize (the GPU decode's crops).
- ``random_geometric(image: Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None,
  size: int | None = None) -> Tensor``: one CHW image (any size) -> its random resized crop
  at ``size`` (else ``cfg.size``, else the side of a square image), flipped with p 0.5: the
  crop's draws first, then one ``torch.rand(1)`` for the flip, all from ``gen`` (CPU).
- ``geometric(images: Tensor, cfg: AugmentConfig, gen: torch.Generator |
  Sequence[torch.Generator] | None = None, size: int | None = None) -> Tensor``: the same
  for each sample of a same-size NCHW batch; ``gen`` is one generator (drawn from sample by
  sample; a CUDA one seeds a CPU generator with one draw) or one CPU generator per sample, so
  a batch reproduces per-image calls with the same generators, tensor for tensor on the
  same device.
- ``photometric(batch: Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) ->
  Tensor``: uint8 or float [0, 1] NCHW batch (on any device) -> float [0, 1]: colour
  jitter, grayscale, blur. The draws come from ``gen`` on its own device (a CPU generator
  gives a CUDA batch the CPU's parameters, without a host sync). It is
  ``sample_photometric(n, side, cfg, gen, device) -> PhotometricParams`` (all draws, one
  vector per parameter) followed by
  ``apply_photometric(x, params) -> Tensor``.
- The single ops, each with one factor per sample, on float [0, 1] or uint8 (torchvision's
  uint8 rounding): ``adjust_brightness(x, f)``, ``adjust_contrast(x, f)``,
  ``adjust_saturation(x, f)``, ``adjust_hue(x, f)``, ``rgb_to_grayscale(x)``,
  ``gaussian_blur(x, kernel_size, sigma)``, ``colour_jitter(x, factors, order)``;
  ``blur_kernel_size(side)``.

``augment(images, cfg, gen)`` runs the whole preset on a same-size uint8 batch (the in-memory
path); :func:`normalise` comes after.
"""

from __future__ import annotations

import functools
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

CropRule = Literal["affine", "torchvision"]
ColourRule = Literal["ukd", "torchvision"]
Box = tuple[int, int, int, int]  # top, left, height, width

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma, as PIL rounds them).
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """``crop_scale`` is the area range of a random resized crop (``(1, 1)``: none);
    ``pad`` a CIFAR-style random translation in pixels; ``jitter`` the colour-jitter strength
    (brightness/contrast/saturation), applied with probability ``jitter_p``.

    New behaviour only through fields that default off: ``crop="torchvision"`` draws crops
    with RandomResizedCrop's rule (``crop_ratio``) and resizes them antialiased to ``size``
    (``None``: the input's side); ``hue`` is the hue-jitter range ``[-hue, hue]``;
    ``colour="torchvision"`` is ColorJitter's random op order and per-op clamping;
    ``blur_p`` / ``blur_sigma`` / ``blur_kernel`` (0: SimCLR's 10 %-of-side rule) the Gaussian
    blur."""

    crop_scale: tuple[float, float] = (1.0, 1.0)
    pad: int = 0
    flip: bool = True
    jitter: float = 0.0
    jitter_p: float = 0.8
    grayscale_p: float = 0.0
    crop: CropRule = "affine"
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    size: int | None = None
    hue: float = 0.0
    colour: ColourRule = "ukd"
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.pad < 0 or self.jitter < 0:
            raise ValueError("pad and jitter must be >= 0")
        for p in (self.jitter_p, self.grayscale_p, self.blur_p):
            if not 0 <= p <= 1:
                raise ValueError(f"probabilities must be in [0, 1], got {p}")
        if self.crop not in ("affine", "torchvision") or self.colour not in ("ukd", "torchvision"):
            raise ValueError(f"crop must be affine|torchvision and colour ukd|torchvision, "
                             f"got {self.crop!r}, {self.colour!r}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        if self.crop == "affine" and self.size is not None:
            raise ValueError("size needs crop='torchvision' (the affine crop keeps the input size)")
        if self.crop == "torchvision" and self.pad:
            raise ValueError("pad is the affine crop's translation; crop='torchvision' has none")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        if self.blur_kernel < 0 or (self.blur_kernel and self.blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be 0 (auto) or odd, got {self.blur_kernel}")


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
    # CoSS's mocov2_aug (coss-pytorch tools/utils.py), torchvision semantics op for op; the
    # crop's output side is the input's (in memory) or the loader's image_size (streamed).
    "mocov2": AugmentConfig(
        crop="torchvision", crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True,
        colour="torchvision", jitter=0.4, hue=0.1, jitter_p=0.8, grayscale_p=0.2,
        blur_p=0.5, blur_sigma=(0.1, 2.0),
    ),
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
    w = _constant((0.299, 0.587, 0.114), x.device, torch.float32).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def _colour(x: Tensor, cfg: AugmentConfig, gen: torch.Generator | None) -> Tensor:
    n = x.shape[0]
    dev = x.device
    if cfg.jitter > 0 or cfg.hue > 0:
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
        if cfg.hue > 0:  # drawn last, so presets without hue draw what they always drew
            h = _uniform(n, -cfg.hue, cfg.hue, gen, dev)
            y = adjust_hue(y.clamp(0, 1), h)
        x = on * y.clamp(0, 1) + (1 - on) * x
    if cfg.grayscale_p > 0:
        on = (torch.rand(n, generator=gen, device=dev) < cfg.grayscale_p).float().view(-1, 1, 1, 1)
        x = on * _gray(x) + (1 - on) * x
    return x


# ---------------------------------------------------------------------------------------------
# Single photometric ops, torchvision.transforms.v2.functional semantics on NCHW batches, one
# factor per sample (a length-N tensor). Float input is in [0, 1]; uint8 input follows
# torchvision's uint8 kernels (grayscale floored inside contrast/saturation, outputs truncated,
# the blur rounded), so each op equals torchvision's for either dtype.


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor made once per device (a fresh host-to-device copy each call
    would wait for the GPU's queue to drain)."""
    return torch.tensor(values, device=device, dtype=dtype)


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """A CPU tensor on ``device`` without a host sync: through pinned memory,
    ``non_blocking`` (a pageable copy to a GPU waits for its queue to drain)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _per_sample(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def _luma(x: Tensor) -> Tensor:
    """N x 1 x H x W float luma 0.2989 R + 0.587 G + 0.114 B (on the 0-255 scale for uint8)."""
    r, g, b = x.float().unbind(1)
    return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(1)


def _like(y: Tensor, x: Tensor) -> Tensor:
    """Float result back to ``x``'s dtype; uint8 truncates, as torchvision's ``.to(uint8)``."""
    return y if x.is_floating_point() else y.to(x.dtype)


def _bound(x: Tensor) -> float:
    return 1.0 if x.is_floating_point() else 255.0


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma repeated over the channels (``rgb_to_grayscale(..., num_output_channels=3)``);
    1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    return _like(_luma(x), x).expand_as(x)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``factor * x + (1 - factor) * other``, clamped (torchvision's ``_blend``)."""
    f = _per_sample(factor)
    return _like((x * f + other * (1 - f)).clamp(0, _bound(x)), x)


def _gray_for_blend(x: Tensor) -> Tensor:
    g = _luma(x)
    return g if x.is_floating_point() else g.floor()


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(x * factor)``."""
    return _like((x * _per_sample(factor)).clamp(0, _bound(x)), x)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the mean of the image's grayscale (one scalar per sample)."""
    gray = _gray_for_blend(x) if x.shape[1] == 3 else x.float()
    return _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-pixel grayscale; 1-channel input is returned as is (like PIL)."""
    if x.shape[1] == 1:
        return x
    return _blend(x, _gray_for_blend(x), factor)


def _hue_sextant(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pillow's RGB -> HSV as torchvision follows it, kept as (6 h, chroma = v s, v): the hue
    sector by which channel is the maximum (red first, then green, then blue); for grey
    pixels the hue is irrelevant (chroma 0)."""
    r, g, b = x.unbind(1)
    v = x.amax(dim=1)  # amax/amin: max(dim) also computes indices, ten times slower on CPU
    chroma = v - x.amin(dim=1)
    d = torch.where(chroma == 0, 1.0, chroma)
    h6 = torch.where(v == r, g - b, torch.where(v == g, (b - r).add_(d, alpha=2),
                                                 (r - g).add_(d, alpha=4)))
    return h6.div_(d), chroma, v


# k offsets of R, G, B in the closed-form HSV -> RGB below.
_RGB_OFFSETS = (5.0, 3.0, 1.0)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """Shift the hue by ``factor`` (in [-0.5, 0.5], a fraction of the colour wheel) in HSV
    space (torchvision's ``adjust_hue``); 1-channel input is returned as is. HSV -> RGB in
    closed form: channel c is ``v - v s clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n_c + 6 h') mod 6``, n = 5, 3, 1 for R, G, B: the six-sector (v, p, q, t) table."""
    if x.shape[1] == 1:
        return x
    y = x if x.is_floating_point() else x.float() / 255
    h6, chroma, v = _hue_sextant(y)
    offsets = _constant(_RGB_OFFSETS, x.device, y.dtype)
    shift = (factor.to(y.dtype).view(-1, 1) * 6 + offsets).view(-1, 3, 1, 1)
    k = (h6.unsqueeze(1) + shift).remainder_(6)
    w = torch.minimum(k, 4 - k).clamp_(0, 1)
    y = v.unsqueeze(1) - w.mul_(chroma.unsqueeze(1))
    # torchvision's float -> uint8: scale by 256 - 1e-3, then truncate.
    return y if x.is_floating_point() else y.mul(256 - 1e-3).to(x.dtype)


def blur_kernel_size(side: int) -> int:
    """SimCLR's kernel rule, odd and about 10 % of the image side: 23 at 224, 3 at 32."""
    return 2 * (int(0.1 * side) // 2) + 1


def gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """torchvision's ``gaussian_blur``: kernel ``exp(-t^2 / (2 sigma^2))`` over
    ``t = -k//2 .. k//2``, normalised, reflect padding; one sigma per sample, applied as two
    1-D depthwise convolutions (the 2-D kernel is their outer product)."""
    if kernel_size == 1:
        return x
    n, c, h, w = x.shape
    half = kernel_size // 2
    y = x if x.is_floating_point() else x.float()
    t = torch.arange(kernel_size, device=x.device, dtype=y.dtype) - half
    k = torch.softmax(-0.5 * (t / sigma.to(y.dtype).view(-1, 1)) ** 2, dim=1)  # N x K
    k = k.repeat_interleave(c, dim=0)  # (N C) x K, one kernel per channel plane
    y = F.pad(y, (half, half, half, half), mode="reflect").reshape(1, n * c, h + 2 * half, -1)
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, kernel_size, 1), groups=n * c).view(n, c, h, w)
    return y if x.is_floating_point() else y.round_().to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Geometric part (crop="torchvision"): per image, at decode time, or per sample of a batch.


def sample_crop(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                gen: torch.Generator | None = None) -> Box:
    """RandomResizedCrop's rule: up to 10 tries of area ~ U(scale) x image area and
    log aspect ~ U(log ratio), ``w = round(sqrt(area * aspect))``, ``h = round(sqrt(area /
    aspect))``, accepted when it fits, at a uniform position; else a centre crop of the
    largest box whose aspect is clipped into ``ratio``. Draws what torchvision draws, in its
    order, so a generator seeded like torch's global one gives torchvision's boxes."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=gen).item())
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=gen).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _native_uint8_resize(x: Tensor) -> bool:
    # torchvision resizes uint8 natively only on CPUs with the vectorised kernel; elsewhere it
    # resizes in float32 and rounds. Same choice here, so outputs match it bit for bit.
    return x.device.type == "cpu" and (
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        or platform.machine() in ("aarch64", "arm64"))


def crop_resize_flip(image: Tensor, box: Box, size: int, flip: bool) -> Tensor:
    """Crop ``box`` (top, left, height, width; inside the image), resize to ``size`` x
    ``size`` (bilinear, antialiased, align_corners False: ``resized_crop(..., antialias=True)``)
    and flip horizontally when ``flip``. CHW or NCHW; keeps the dtype (uint8: rounded)."""
    top, left, h, w = box
    x = image[..., top:top + h, left:left + w]
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    if (h, w) != (size, size):
        dtype = x.dtype
        native = dtype.is_floating_point or (dtype == torch.uint8 and _native_uint8_resize(x))
        y = x if native else x.float()
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        x = y if native else y.round_().clamp_(0, 255).to(dtype)
    if flip:
        x = x.flip(-1)
    return x.squeeze(0) if squeeze else x


# Pixels (per channel) that one batched resized-crop product may pad its images to (2^25:
# 0.8 GB of float64 for 3 channels): a few outsized images (ImageNet has some of 4000 x
# 3000) go in groups of their own, and a big batch in several groups.
_CROP_GROUP_PIXELS = 2**25


def _aa_weights(starts: Tensor, lengths: Tensor, size: int, extent: int, flip: Tensor
                ) -> Tensor:
    """``n x size x extent`` float64 rows of the antialiased bilinear resize of the segment
    [start, start + length) of an axis of ``extent`` pixels to ``size`` (align_corners False):
    PyTorch's ``_upsample_bilinear2d_aa`` weights (support ``max(scale, 1)``, a triangle
    filter of ``1 / max(scale, 1)`` width, truncated as it truncates, normalised per row),
    rows reversed where ``flip``."""
    dev = starts.device
    scale = (lengths.double() / size).view(-1, 1, 1)
    support = scale.clamp(min=1.0)
    centre = scale * (torch.arange(size, device=dev, dtype=torch.float64).view(1, -1, 1) + 0.5)
    lo = (centre - support + 0.5).floor().clamp(min=0)
    hi = torch.minimum((centre + support + 0.5).floor(), lengths.double().view(-1, 1, 1))
    rel = torch.arange(extent, device=dev, dtype=torch.float64).view(1, 1, -1) \
        - starts.double().view(-1, 1, 1)
    w = (1 - ((rel - centre + 0.5) / support).abs()).clamp(min=0)
    w = torch.where((rel >= lo) & (rel < hi), w, 0.0)
    w = w / w.sum(dim=2, keepdim=True)
    return torch.where(flip.view(-1, 1, 1), w.flip(1), w)


def _crop_groups(shapes: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Image indices in groups of similar size (sorted by size; a group ends where padding
    every member to the group's largest height and width would waste over a quarter of
    the pixels or pass :data:`_CROP_GROUP_PIXELS`)."""
    order = sorted(range(len(shapes)), key=lambda i: shapes[i])
    groups: list[list[int]] = []
    area = top_h = top_w = 0
    for i in order:
        h, w = shapes[i]
        grown_h, grown_w = max(top_h, h), max(top_w, w)
        padded = grown_h * grown_w * (len(groups[-1]) + 1) if groups else 0
        if not groups or padded > 1.25 * (area + h * w) or padded > _CROP_GROUP_PIXELS:
            groups.append([i])
            area, top_h, top_w = h * w, h, w
        else:
            groups[-1].append(i)
            area, top_h, top_w = area + h * w, grown_h, grown_w
    return groups


def resized_crops(images: Sequence[Tensor], owners: Sequence[int], boxes: Sequence[Box],
                  flips: Sequence[bool], size: int) -> Tensor:
    """Many :func:`crop_resize_flip` calls as a few batched matrix products: view v is
    ``crop_resize_flip(images[owners[v]], boxes[v], size, flips[v])`` of uint8 CHW images
    of any sizes (``len(boxes) x C x size x size`` uint8). The separable resize is
    ``W_y @ image @ W_x^T`` with :func:`_aa_weights` (zero outside the box; a flip reverses
    ``W_x``'s rows), in float64 (whatever a trial's TF32 setting, and nothing global to
    switch while other threads run), rounded once: what ``crop_resize_flip`` computes on a
    GPU in float32, to its rounding (within one grey level, tested). On a GPU the products
    are a small share of the view's time (benchmarks/data_throughput.py).
    Kernel launches per batch: a few per size group and per image shape, not a resize's
    several per view; no host sync on CUDA."""
    views = len(boxes)
    channels = images[0].shape[0] if images else 3
    device = images[0].device if images else torch.device("cpu")
    out = torch.empty((views, channels, size, size), dtype=torch.uint8, device=device)
    by_image: list[list[int]] = [[] for _ in images]
    for v, owner in enumerate(owners):
        by_image[owner].append(v)
    groups = _crop_groups([(int(im.shape[-2]), int(im.shape[-1])) for im in images])
    ordered = [[v for i in group for v in by_image[i]] for group in groups]
    # Every view's parameters in one transfer, grouped: top, left, height, width, flip, view.
    table = to_device(torch.tensor([(*boxes[v], int(flips[v]), v)
                                    for members in ordered for v in members],
                                   dtype=torch.int64).view(-1, 6), device)
    first = 0
    for group, members in zip(groups, ordered, strict=True):
        if not members:
            continue
        rows = table[first:first + len(members)]
        first += len(members)
        padded = _padded([images[i] for i in group])
        height, width = padded.shape[1], padded.shape[3]
        # The rows' and the columns' weights in one call: the views' y segments, then x.
        weights = _aa_weights(rows[:, 0:2].t().reshape(-1), rows[:, 2:4].t().reshape(-1),
                              size, max(height, width),
                              torch.cat([torch.zeros_like(rows[:, 4]), rows[:, 4]]).bool())
        wy, wx = weights[:len(members), :, :height], weights[len(members):, :, :width]
        slot = {i: j for j, i in enumerate(group)}
        row_list = [slot[owners[v]] for v in members]
        # One view per image (the usual case) needs no gather of the padded images.
        x = padded if row_list == list(range(len(group))) else \
            padded[to_device(torch.tensor(row_list), device)]
        m = len(members)
        # Rows first: (size x H) @ (H x C W), then columns: (size C x W) @ (W x size); two
        # plain batched products (no weights broadcast over the channels, so no copies).
        y = torch.bmm(wy, x.view(m, height, channels * width))
        y = torch.bmm(y.view(m, size * channels, width), wx.transpose(1, 2))
        y = y.view(m, size, channels, size).permute(0, 2, 1, 3)
        out.index_copy_(0, rows[:, 5], y.round_().clamp_(0, 255).to(torch.uint8))
    return out


def _padded(images: Sequence[Tensor]) -> Tensor:
    """``n x H x C x W`` float64 of CHW images (each row's channels side by side: the
    layout :func:`resized_crops`' row product reads as one matrix), each image at the top
    left, zeros around it (H, W the largest). Images of one shape are stacked in one copy
    (ImageNet's are mostly a few shapes), so the launches grow with the shapes, not the
    images."""
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        shapes.setdefault(tuple(image.shape), []).append(i)
    channels = images[0].shape[0]
    height = max(int(im.shape[-2]) for im in images)
    width = max(int(im.shape[-1]) for im in images)
    make = torch.empty if len(shapes) == 1 else torch.zeros
    out = make((len(images), height, channels, width), dtype=torch.float64,
               device=images[0].device)
    order = 0
    for (_, h, w), members in shapes.items():
        block = torch.stack([images[i] for i in members]).permute(0, 2, 1, 3)
        if members == list(range(order, order + len(members))):
            out[order:order + len(members), :h, :, :w] = block
        else:
            out[to_device(torch.tensor(members), out.device), :h, :, :w] = block.double()
        order += len(members)
    return out


def _output_side(image: Tensor, cfg: AugmentConfig, size: int | None) -> int:
    side = size if size is not None else cfg.size
    if side is not None:
        return side
    h, w = image.shape[-2:]
    if h != w:
        raise ValueError(f"a {h} x {w} image needs an output size (AugmentConfig.size or size=)")
    return int(h)


def random_geometric(image: Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None,
                     size: int | None = None) -> Tensor:
    """One CHW image -> its random resized crop (``cfg.crop_scale``, ``cfg.crop_ratio``) at
    ``size`` (else ``cfg.size``, else the image's side), flipped with p 0.5 when ``cfg.flip``:
    the crop's draws come first, then one ``torch.rand(1)`` for the flip."""
    side = _output_side(image, cfg, size)
    box = sample_crop(image.shape[-2], image.shape[-1], cfg.crop_scale, cfg.crop_ratio, gen)
    flip = cfg.flip and bool(torch.rand(1, generator=gen).item() < 0.5)
    return crop_resize_flip(image, box, side, flip)


def geometric(images: Tensor, cfg: AugmentConfig,
              gen: torch.Generator | Sequence[torch.Generator] | None = None,
              size: int | None = None) -> Tensor:
    """A same-size NCHW batch -> :func:`random_geometric` of each sample, stacked. ``gen``: one
    generator drawn from sample after sample (a CUDA one first seeds a CPU generator with one
    draw, so the per-sample draws do not synchronise the device), or one generator per sample
    (then sample i equals ``random_geometric(images[i], cfg, gen[i], size)``)."""
    n = images.shape[0]
    if isinstance(gen, torch.Generator) and gen.device.type != "cpu":
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())
        gen = torch.Generator().manual_seed(seed)
    if gen is None or isinstance(gen, torch.Generator):
        gens: Sequence[torch.Generator | None] = [gen] * n
    else:
        gens = gen
        if len(gens) != n:
            raise ValueError(f"{len(gens)} generators for {n} images")
    return torch.stack([random_geometric(images[i], cfg, gens[i], size) for i in range(n)])


# ---------------------------------------------------------------------------------------------
# Photometric part: batched on the device.


@dataclass(frozen=True)
class PhotometricParams:
    """One batch's draws for ``colour="torchvision"``: ``jitter_on``/``gray_on``/``blur_on``
    (bool, N, on the CPU); ``factors`` N x 4 (brightness, contrast, saturation, hue; an op
    whose range is empty is skipped, as ColorJitter skips ``None``); ``order`` N x 4, a
    permutation of 0..3 per sample (ColorJitter's ``fn_idx``, on the CPU); ``sigma`` (N) and
    ``kernel`` for the blur."""

    jitter_on: Tensor
    factors: Tensor
    order: Tensor
    gray_on: Tensor
    blur_on: Tensor
    sigma: Tensor
    kernel: int
    active: tuple[bool, bool, bool, bool]


def sample_photometric(n: int, side: int, cfg: AugmentConfig, gen: torch.Generator | None,
                       device: torch.device) -> PhotometricParams:
    """ColorJitter's distributions: brightness, contrast, saturation ~ U(max(0, 1 - j), 1 + j),
    hue ~ U(-hue, hue); the order a uniform permutation (argsort of N x 4 uniforms); then the
    grayscale coin and the blur coin with sigma ~ U(blur_sigma). Drawn on ``gen``'s device
    (else ``device``); the coins and the order are kept on the CPU, where the batched path
    indexes by them (a CPU generator: no host sync for a CUDA batch), the factors and sigmas
    on ``device``."""
    on = gen.device if gen is not None else device
    lo, hi = max(0.0, 1 - cfg.jitter), 1 + cfg.jitter
    jitter_on = torch.rand(n, generator=gen, device=on) < cfg.jitter_p
    factors = torch.stack([_uniform(n, lo, hi, gen, on) for _ in range(3)]
                          + [_uniform(n, -cfg.hue, cfg.hue, gen, on)], dim=1)
    order = torch.rand(n, 4, generator=gen, device=on).argsort(dim=1)
    gray_on = torch.rand(n, generator=gen, device=on) < cfg.grayscale_p
    blur_on = torch.rand(n, generator=gen, device=on) < cfg.blur_p
    sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen, on)
    kernel = cfg.blur_kernel or blur_kernel_size(side)
    active = (cfg.jitter > 0, cfg.jitter > 0, cfg.jitter > 0, cfg.hue > 0)
    return PhotometricParams(jitter_on.cpu(), to_device(factors, device), order.cpu(),
                             gray_on.cpu(), blur_on.cpu(), to_device(sigma, device), kernel,
                             active)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def colour_jitter(x: Tensor, factors: Tensor, order: Tensor,
                  active: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> Tensor:
    """ColorJitter with given parameters: sample i applies op ``order[i, k]`` at step k (0
    brightness, 1 contrast, 2 saturation, 3 hue) with factor ``factors[i, op]``."""
    if x.is_floating_point():
        y = x.clone()
        if y.device.type == "cpu":
            _jitter_cpu_(y, factors, order, active)
        else:
            _jitter_(y, factors, order, active)
        return y
    x = x.clone()
    for step in range(4):
        for op, fn in enumerate(_JITTER_OPS):
            if not active[op]:
                continue
            idx = (order[:, step] == op).nonzero().squeeze(1)
            if idx.numel():
                x[idx] = fn(x[idx], factors[idx, op])
    return x


# ---------------------------------------------------------------------------------------------
# The batched float path, in place on a batch the pipeline owns. Same formulas as the ops
# above (torchvision's), written to touch each pixel as few times as possible: on a CPU the
# photometric half costs about as much as decoding (benchmarks/data_throughput.py), and every
# full-batch pass or fresh allocation (page faults) shows.


# ColorJitter's ops as columns of the order: the three blends, then the hue.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def _jitter_(x: Tensor, factors: Tensor, order: Tensor,
             active: tuple[bool, bool, bool, bool]) -> None:
    """:func:`colour_jitter` in place on a float batch, with the same kernel launches whatever the
    batch's size and mix of op orders. Brightness, contrast and saturation are one formula,
    torchvision's blend ``f x + (1 - f) other`` with ``other`` zero, the grayscale's mean or
    the grayscale: so step k blends every sample at once, with ``other`` and ``1 - f`` chosen
    per sample by its k-th op (a sample whose k-th op is the hue blends with weight 0, which
    leaves it as it is), and the hue shifts the samples whose k-th op it is, one gather for
    them all. (Grouping the samples by op sequence instead costs dozens of runs per step, each
    several launches: on a GPU, where launches cost more than these memory-bound passes, that
    was most of the photometric half's time.)"""
    order = order.cpu()
    blend = (order != _HUE) & torch.tensor([active[op] for op in range(4)])[order]
    if x.shape[1] != 3:  # torchvision leaves a 1-channel image's saturation as it is
        blend &= order != _SATURATION
    # Per sample and step: the blend's weight 1 - f (0: no blend), and which ``other``.
    picks = torch.stack([blend, order == _CONTRAST, order == _SATURATION]).to(x.dtype)
    picks = to_device(picks, x.device)
    f = factors.to(x.dtype).gather(1, to_device(order, x.device))
    weight = picks[0] * (1 - f)
    luma = _constant(_LUMA, x.device, x.dtype).view(1, -1, 1, 1)
    hue_steps = (order == _HUE) if active[_HUE] and x.shape[1] == 3 else None
    for step in range(4):
        if bool(blend[:, step].any()):
            gray = (x * luma).sum(1, keepdim=True) if x.shape[1] == 3 else x.mean(1, True)
            mean = gray.mean(dim=(2, 3), keepdim=True)
            other = torch.addcmul(mean * _per_sample(picks[1, :, step]), gray,
                                  _per_sample(picks[2, :, step]))
            x.lerp_(other, _per_sample(weight[:, step])).clamp_(0, 1)
        if hue_steps is not None:
            idx = hue_steps[:, step].nonzero().squeeze(1)
            if idx.numel():
                sub = to_device(idx, x.device)
                x[sub] = adjust_hue(x[sub], factors[sub, _HUE])


def _where_on(x: Tensor, on: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Apply ``fn(x[idx], idx)`` to the samples whose coin is on (only those are computed)."""
    idx = on.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    x = x.clone()
    x[idx] = fn(x[idx], idx)
    return x


def _on_indices(on: Tensor) -> list[int]:
    return on.nonzero().squeeze(1).tolist()


def _photometric_(x: Tensor, params: PhotometricParams) -> None:
    """:func:`apply_photometric` in place on a float [0, 1] batch: image by image on a CPU
    (:func:`_photometric_cpu_`), op by op over the whole batch elsewhere (few kernel launches)."""
    if x.device.type == "cpu":
        _photometric_cpu_(x, params)
    else:
        _photometric_batched_(x, params)


def _photometric_batched_(x: Tensor, params: PhotometricParams) -> None:
    """Op by op over the batch: the jittered samples, then the grey ones, then the blurred."""
    if any(params.active):
        idx = _on_indices(params.jitter_on)
        if idx:
            sub = to_device(torch.tensor(idx), x.device)
            y = x[sub]
            _jitter_(y, params.factors[sub], params.order[idx], params.active)
            x[sub] = y
    idx = _on_indices(params.gray_on)
    if idx and x.shape[1] == 3:
        sub = to_device(torch.tensor(idx), x.device)
        x[sub] = _luma(x[sub]).expand(-1, 3, -1, -1)
    idx = _on_indices(params.blur_on)
    if idx:
        sub = to_device(torch.tensor(idx), x.device)
        x[sub] = gaussian_blur(x[sub], params.kernel, params.sigma[sub])


# ---------------------------------------------------------------------------------------------
# The CPU path, image by image. Every op above is a memory-bound pass: over a 224 px batch
# (19 MB) each pass goes out to DRAM, while one image (0.6 MB) stays in the L2 cache through
# its whole chain (jitter, grayscale, blur). So a CPU runs each image start to end, with its
# factors as Python scalars, and formulas built from torch's fast elementwise kernels (where,
# eq, remainder and masked ops are 10-40 times slower than arithmetic, min/max, sign, round).
# The results equal the batched formulas up to float rounding, and an image's result does
# not depend on the rest of the batch.

_LUMA_CPU = torch.tensor(_LUMA)
# Hue wheel offsets (n_c - 2) / 6 + 3/2 of R, G, B: see :func:`_hue_image_`.
_HUE_SHIFTS = torch.tensor([(n - 2) / 6 + 1.5 for n in _RGB_OFFSETS])
# Smallest positive normal float32: a chroma floor that keeps 0 / 0 out of the hue.
_TINY = float(torch.finfo(torch.float32).tiny)
# Blur taps lighter than this are dropped: the truncated kernel misses under 1e-8 of its mass,
# far below float32 rounding of a [0, 1] pixel (6e-8), and sigma 1 needs 13 taps, not 23.
_BLUR_TAIL = 2.0**-30
# Rows (columns) of output per block of the banded blur product; 16 measures best at 224 px.
_BLUR_BLOCK = 16


def _luma_plane(x: Tensor) -> Tensor:
    """1 x H x W luma of one 3 x H x W float image, ``0.2989 R + 0.587 G + 0.114 B``, in
    three passes."""
    r, g, b = x.unbind(0)
    return torch.mul(r, _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(0)


def _brightness_image_(x: Tensor, f: float) -> None:
    """``clamp(f x)``; for ``f <= 1`` the clamp is a no-op (see :func:`_clamp_`)."""
    _clamp_(x.mul_(f), f)


def _clamp_(x: Tensor, f: float) -> None:
    """The clamp to [0, 1] after a blend ``f x + (1 - f) y`` of [0, 1] values, skipped when
    ``0 <= f <= 1``: a convex blend lies between its ends, and float rounding is monotonic,
    so it cannot leave [0, 1]."""
    if not 0 <= f <= 1:
        x.clamp_(0, 1)


def _contrast_image_(x: Tensor, f: float) -> None:
    """``clamp(f x + (1 - f) mean(gray))``; the grayscale's mean is the luma-weighted mean of
    the channel means (linear), so it costs one pass."""
    means = x.mean(dim=(1, 2))
    mean = torch.dot(means, _LUMA_CPU.to(x.dtype)) if x.shape[0] == 3 else means.mean()
    _clamp_(x.lerp_(mean, 1.0 - f), f)


def _saturation_image_(x: Tensor, f: float) -> None:
    """``clamp(f x + (1 - f) gray)`` with the per-pixel luma; 1-channel input stays as is."""
    if x.shape[0] == 3:
        _clamp_(x.lerp_(_luma_plane(x), 1.0 - f), f)


def _hue_image_(x: Tensor, shifts: Tensor) -> None:
    """:func:`adjust_hue` of one 3 x H x W float image, in place, in about 20 passes of fast
    kernels. ``h6 = num / chroma``, numerator picked by which channel is the maximum (red,
    then green, then blue) via ``lerp`` with the 0/1 weights ``sign(v - r)``, ``sign(v - g)``
    (no ``where``). Channel c is ``v - chroma w_c``, where the closed form's periodic
    trapezoid ``w_c = clamp(min(k, 4 - k), 0, 1)``, ``k = (6 h' + n_c) mod 6``, is
    ``clamp(2 - 6 u, 0, 1)`` with u the distance from ``t = (k - 2) / 6`` to the nearest
    integer, ``u = |frac(t + 1/2) - 1/2|`` (no ``remainder``; the argument gets a further
    +1, so it is positive for |f| <= 1/2 and ``frac`` is the fractional part). ``shifts``:
    3 x 1 x 1, ``(n_c - 2) / 6 + f + 3/2`` (the factor is in them); 1-channel input stays
    as is."""
    if x.shape[0] != 3:
        return
    r, g, b = x.unbind(0)
    v = x.amax(dim=0, keepdim=True)
    chroma = v - x.amin(dim=0, keepdim=True)
    d = chroma.clamp_min(_TINY)[0]
    not_max = torch.sub(v, x[:2]).sign_()  # 0 where r (g) is the maximum, else 1
    num_g = torch.sub(b, r).add_(d, alpha=2)
    num_b = torch.sub(r, g).add_(d, alpha=4)
    num = torch.sub(g, b).lerp_(num_g.lerp_(num_b, not_max[1]), not_max[0])
    t = torch.add(shifts, num.div_(d), alpha=1 / 6)  # t + 1/2 + 1, 3 x H x W
    u = t.frac_().sub_(0.5).abs_().clamp_(1 / 6, 1 / 3)
    # v - chroma clamp(2 - 6 u, 0, 1) = (v - 2 chroma) + 6 chroma clamp(u, 1/6, 1/3)
    torch.addcmul(torch.add(v, chroma, alpha=-2), chroma, u, value=6, out=x)


# One image's jitter ops by ColorJitter's index (0 brightness, 1 contrast, 2 saturation, 3 hue),
# each called with the image, its factor and its hue offsets.
_IMAGE_JITTER_OPS: tuple[Callable[[Tensor, float, Tensor], None], ...] = (
    lambda x, f, _shifts: _brightness_image_(x, f),
    lambda x, f, _shifts: _contrast_image_(x, f),
    lambda x, f, _shifts: _saturation_image_(x, f),
    lambda x, _f, shifts: _hue_image_(x, shifts),
)


def _jitter_image_(x: Tensor, factors: list[float], order: list[int], shifts: Tensor,
                   active: tuple[bool, bool, bool, bool]) -> None:
    """One image's ColorJitter: its ops in its order, each with its factor."""
    for op in order:
        if active[op]:
            _IMAGE_JITTER_OPS[op](x, factors[op], shifts)


def _hue_shifts(factors: Tensor) -> Tensor:
    """N x 3 x 1 x 1 per-channel hue offsets ``(n_c - 2) / 6 + f + 3/2`` (:func:`_hue_image_`)."""
    return (factors[:, 3:4].float() + _HUE_SHIFTS).view(-1, 3, 1, 1)


def _jitter_cpu_(x: Tensor, factors: Tensor, order: Tensor,
                 active: tuple[bool, bool, bool, bool]) -> None:
    """:func:`_jitter_` on a CPU float batch, image by image."""
    shifts = _hue_shifts(factors)
    for i, (f, o) in enumerate(zip(factors.tolist(), order.tolist(), strict=True)):
        _jitter_image_(x[i], f, o, shifts[i], active)


def _blur_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """N x K normalised Gaussian kernels, the formula of :func:`gaussian_blur`."""
    t = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
    return torch.softmax(-0.5 * (t / sigma.float().view(-1, 1)) ** 2, dim=1)


def _band(k: Tensor, block: int) -> Tensor:
    """``block x (block + K - 1)`` matrix whose row o holds ``k`` at columns o .. o + K - 1:
    ``block`` outputs of a 1-D convolution as one matrix product. Built by writing ``k`` at
    the start of rows one longer and reading them back one shorter (each row shifts by 1)."""
    size = k.numel()
    width = block + size - 1
    rows = k.new_zeros(block, width + 1)
    rows[:, :size] = k
    return rows.view(-1)[: block * width].view(block, width)


def _blur_image(x: Tensor, k: Tensor, out: Tensor) -> None:
    """Separable blur of a C x H x W float image with the odd kernel ``k`` (reflect padding,
    as :func:`gaussian_blur`) into ``out``, which may be ``x`` (the passes read a padded
    copy). Each pass is a banded matrix product over overlapping strided windows (no
    copies): the vertical one ``(B x L) @ (L x W')`` per block of B output rows, the
    horizontal one ``(C H x L) @ (L x B)`` per block of B output columns, L = B + K - 1;
    on one 224 px image about 3x faster than conv2d's depthwise kernel and 1.5x faster than
    shifted adds. Sides that are no multiple of B get zero rows/columns past the padding,
    cropped at the end."""
    c, h, w = x.shape
    half = k.numel() // 2
    block = _BLUR_BLOCK
    nh, nw = -(-h // block), -(-w // block)
    xp = F.pad(x.unsqueeze(0), (half, half, half, half), mode="reflect")
    if nh * block > h or nw * block > w:
        xp = F.pad(xp, (0, nw * block - w, 0, nh * block - h))
    xp = xp[0]
    hp, wp = xp.shape[1:]
    band = _band(k, block)
    length = band.shape[1]
    rows = xp.as_strided((c, nh, length, wp), (hp * wp, block * wp, wp, 1))
    y = torch.matmul(band, rows).view(c * nh * block, wp)  # vertical pass: C x H' x W'
    cols = y.as_strided((nw, c * nh * block, length), (block, wp, 1))
    z = torch.matmul(cols, band.t()).view(nw, c, nh * block, block)  # horizontal pass
    z = z.permute(1, 2, 0, 3)  # C x H' x (column block) x B
    if nh * block == h and nw * block == w and out.is_contiguous():
        out.view(c, h, nw, block).copy_(z)
    else:
        out.copy_(z.reshape(c, nh * block, nw * block)[:, :h, :w])


def _photometric_cpu_(x: Tensor, params: PhotometricParams, src: Tensor | None = None) -> None:
    """:func:`_photometric_batched_` image by image on a CPU, in place on ``x``; with ``src``
    (uint8, same shape) image i is first ``src[i] / 255``. A grey image is blurred as one
    plane. The blur drops kernel taps under ``_BLUR_TAIL`` (no tap when sigma is tiny)."""
    n, c = x.shape[:2]
    jitter_on, gray_on = params.jitter_on.tolist(), params.gray_on.tolist()
    blur_on = params.blur_on.tolist()
    factors, order = params.factors.tolist(), params.order.tolist()
    shifts = _hue_shifts(params.factors)
    kernels = _blur_kernels(params.sigma, params.kernel).to(x.dtype)
    half = params.kernel // 2
    radii = (((kernels >= _BLUR_TAIL).sum(dim=1) - 1) // 2).tolist()  # taps kept each side
    for i in range(n):
        image = x[i]
        if src is not None:
            torch.div(src[i], 255.0, out=image)
        if jitter_on[i] and any(params.active):
            _jitter_image_(image, factors[i], order[i], shifts[i], params.active)
        r = radii[i]
        k = kernels[i, half - r:half + r + 1] if blur_on[i] and r > 0 else None
        if gray_on[i] and c == 3:
            plane = _luma_plane(image)
            if k is not None:
                _blur_image(plane, k, plane)
            image.copy_(plane.expand_as(image))
        elif k is not None:
            _blur_image(image, k, image)  # reads a padded copy, so it may write in place


def apply_photometric(x: Tensor, params: PhotometricParams) -> Tensor:
    """Float [0, 1] batch -> jitter (where on) -> grayscale (where on) -> blur (where on)."""
    y = x.clone()
    _photometric_(y, params)
    return y


def _to_float(images: Tensor) -> Tensor:
    """A new float batch (the caller's is never written to)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float().clone()


def photometric(batch: Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> Tensor:
    """uint8 (or float [0, 1]) NCHW batch -> float [0, 1]: colour jitter with p ``jitter_p``,
    grayscale with p ``grayscale_p``, blur with p ``blur_p`` (``colour="ukd"``: the fixed-order
    jitter of the low-resolution presets, then the blur). On a CPU, ``colour="torchvision"``
    runs image by image (:func:`_photometric_cpu_`)."""
    if cfg.colour == "torchvision":
        params = sample_photometric(batch.shape[0], batch.shape[-1], cfg, gen, batch.device)
        if batch.device.type == "cpu" and batch.dtype == torch.uint8:
            # Each image converted just before its ops, while it is in cache.
            x = torch.empty(batch.shape, dtype=torch.float32)
            _photometric_cpu_(x, params, src=batch)
        else:
            x = _to_float(batch)
            _photometric_(x, params)
        return x
    x = _to_float(batch)
    if cfg.jitter > 0 or cfg.hue > 0 or cfg.grayscale_p > 0:
        x = _colour(x, cfg, gen)
    if cfg.blur_p > 0:
        n = x.shape[0]
        on = torch.rand(n, generator=gen, device=x.device) < cfg.blur_p
        sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], gen, x.device)
        kernel = cfg.blur_kernel or blur_kernel_size(x.shape[-1])
        x = _where_on(x, on, lambda y, i: gaussian_blur(y, kernel, sigma[i]))
    return x


def augment(images: Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> Tensor:
    """uint8 batch -> augmented float batch in [0, 1]; :func:`normalise` comes after.
    ``crop="torchvision"``: :func:`geometric` then :func:`photometric`; else the affine crop."""
    if cfg.crop == "torchvision":
        return photometric(geometric(images, cfg, gen), cfg, gen)
    x = images.float().div(255.0)
    if cfg.crop_scale != (1.0, 1.0) or cfg.pad or cfg.flip:
        x = _geometric(x, cfg, gen)
    return photometric(x, cfg, gen)


def normalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    mean, std = to_device(mean, x.device), to_device(std, x.device)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
