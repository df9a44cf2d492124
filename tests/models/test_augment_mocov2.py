"""The `mocov2` preset and its ops against torchvision.transforms.v2 (the official pipeline's
semantics): each op for the same parameters, each random parameter's distribution, the crop
rule draw for draw, and the per-image / batched geometric paths against each other."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors

import models.augment as augment_module
from common.opcount import OpCount
from models.augment import (
    AUGMENT_PRESETS,
    AugmentConfig,
    PhotometricParams,
    _photometric_batched_,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_photometric,
    augment,
    blur_kernel_size,
    colour_jitter,
    crop_resize_flip,
    gaussian_blur,
    geometric,
    photometric,
    random_geometric,
    resized_crops,
    rgb_to_grayscale,
    sample_crop,
    sample_photometric,
)

MOCO = AUGMENT_PRESETS["mocov2"]


def _images(n: int = 6, h: int = 30, w: int = 26, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    x[0, :, :4] = 128  # grey pixels: the hue of r = g = b
    if n > 1:
        x[1, 1] = x[1, 0]  # r = g ties
    return x


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    ca = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(ca - cb).max())


def _ks_crit(n: int, m: int) -> float:
    return 1.95 * math.sqrt((n + m) / (n * m))  # alpha = 0.001


OPS = [
    (adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4]),
    (adjust_contrast, TF.adjust_contrast, [0.6, 0.9, 1.4]),
    (adjust_saturation, TF.adjust_saturation, [0.6, 1.1, 1.4]),
    (adjust_hue, TF.adjust_hue, [-0.1, 0.03, 0.1, 0.5]),
]


@pytest.mark.parametrize(("ours", "theirs", "factors"), OPS,
                         ids=["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_equal_torchvision(ours: Callable[[Tensor, Tensor], Tensor],
                                      theirs: Callable[..., Tensor], factors: list[float]) -> None:
    x = _images()
    f = torch.tensor([factors[i % len(factors)] for i in range(len(x))])
    got_fp = ours(x.float() / 255, f)
    got_u8 = ours(x, f)
    assert got_u8.dtype == torch.uint8
    for i in range(len(x)):
        want_u8 = theirs(x[i], float(f[i]))
        want_fp = theirs(x[i].float() / 255, float(f[i]))
        assert (got_u8[i].int() - want_u8.int()).abs().max() <= 1  # within 1/255
        assert (got_fp[i] - want_fp).abs().max() <= 1e-5


def test_grayscale_equals_torchvision() -> None:
    x = _images()
    want = TF.rgb_to_grayscale(x, num_output_channels=3)
    assert (rgb_to_grayscale(x).int() - want.int()).abs().max() <= 1
    got = rgb_to_grayscale(x.float() / 255)
    assert (got - TF.rgb_to_grayscale(x.float() / 255, 3)).abs().max() <= 1e-6


@pytest.mark.parametrize("kernel", [3, 23])
def test_blur_equals_torchvision(kernel: int) -> None:
    x = _images(h=32, w=28)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.77])
    got = gaussian_blur(x.float() / 255, kernel, sigma)
    got_u8 = gaussian_blur(x, kernel, sigma)
    for i in range(len(x)):
        s = [float(sigma[i])] * 2
        want_u8 = TF.gaussian_blur(x[i], [kernel, kernel], s)
        assert (got_u8[i].int() - want_u8.int()).abs().max() <= 1
        want_fp = TF.gaussian_blur(x[i].float() / 255, [kernel, kernel], s)
        assert (got[i] - want_fp).abs().max() <= 1e-5
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3


@pytest.mark.parametrize(("box", "size"), [((2, 3, 20, 17), 12), ((0, 0, 30, 26), 40),
                                           ((5, 1, 9, 24), 16), ((0, 0, 30, 26), 30)])
@pytest.mark.parametrize("flip", [False, True])
def test_crop_resize_flip_equals_torchvision(box: tuple[int, int, int, int], size: int,
                                            flip: bool) -> None:
    x = _images()
    for img in (x[0], x.float() / 255):
        want = TF.resized_crop(img, *box, size=[size, size], antialias=True)
        if flip:
            want = TF.horizontal_flip(want)
        got = crop_resize_flip(img, box, size, flip)
        assert got.dtype == img.dtype and got.shape == want.shape
        if img.dtype == torch.uint8:
            assert (got.int() - want.int()).abs().max() <= 1
        else:
            assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize(("h", "w", "scale", "ratio", "fallback"), [
    (30, 26, (0.2, 1.0), (3 / 4, 4 / 3), False),
    (375, 500, (0.08, 1.0), (3 / 4, 4 / 3), False),
    (8, 300, (0.5, 1.0), (3 / 4, 4 / 3), True),  # far wider than the ratios
    (300, 8, (0.5, 1.0), (3 / 4, 4 / 3), True),  # far taller
    (20, 20, (1.0, 1.0), (0.5, 0.6), True),  # no try fits: the largest box at ratio 0.6
])
def test_sample_crop_is_torchvisions_rule(h: int, w: int, scale: tuple[float, float],
                                          ratio: tuple[float, float], fallback: bool) -> None:
    rrc = T.RandomResizedCrop(224, scale=scale, ratio=ratio)
    probe = [tv_tensors.Image(torch.zeros(3, h, w))]
    boxes = []
    for seed in range(40):
        torch.manual_seed(seed)
        p = rrc.make_params(probe)
        want = (p["top"], p["left"], p["height"], p["width"])
        got = sample_crop(h, w, scale, ratio, torch.Generator().manual_seed(seed))
        assert got == want
        boxes.append(got)
    centred = [t == (h - bh) // 2 and le == (w - bw) // 2 for t, le, bh, bw in boxes]
    assert all(centred) if fallback else not all(centred)
    if (h, w) == (20, 20):
        assert set(boxes) == {(0, 4, 20, 12)}


def test_photometric_parameters_follow_torchvision() -> None:
    n = 4000
    torch.manual_seed(0)
    jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    draws = [jitter.make_params([]) for _ in range(n)]
    blur = T.GaussianBlur(23, sigma=(0.1, 2.0))
    sigmas = np.array([blur.make_params([])["sigma"][0] for _ in range(n)])
    p = sample_photometric(n, 224, MOCO, torch.Generator().manual_seed(1), torch.device("cpu"))
    names = ["brightness_factor", "contrast_factor", "saturation_factor", "hue_factor"]
    for k, name in enumerate(names):
        theirs = np.array([d[name] for d in draws])
        ours = p.factors[:, k].numpy()
        assert _ks(ours, theirs) < _ks_crit(n, n), name
        assert theirs.min() >= ours.min() - 0.01 and theirs.max() <= ours.max() + 0.01
    assert _ks(p.sigma.numpy(), sigmas) < _ks_crit(n, n)
    assert p.kernel == 23
    # The coins: binomial means within 4 standard deviations.
    for on, prob in ((p.jitter_on, 0.8), (p.gray_on, 0.2), (p.blur_on, 0.5)):
        assert abs(float(on.float().mean()) - prob) < 4 * math.sqrt(prob * (1 - prob) / n)


def test_op_order_is_a_uniform_permutation() -> None:
    n = 24 * 500
    p = sample_photometric(n, 32, MOCO, torch.Generator().manual_seed(2), torch.device("cpu"))
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    counts = Counter(tuple(r) for r in p.order.tolist())
    assert len(counts) == 24
    expected = n / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 49.7  # chi-square, 23 degrees of freedom, alpha = 0.001


def test_colour_jitter_applies_the_drawn_order() -> None:
    x = _images().float() / 255
    p = sample_photometric(len(x), 26, MOCO, torch.Generator().manual_seed(3), x.device)
    got = colour_jitter(x, p.factors, p.order)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(len(x)):
        want = x[i]
        for op in p.order[i].tolist():
            want = fns[op](want, float(p.factors[i, op]))
        assert (got[i] - want).abs().max() <= 1e-5
    # The order matters: brightness before contrast is not contrast before brightness.
    f = torch.tensor([[1.4, 0.6, 1.0, 0.0]])
    a = colour_jitter(x[:1], f, torch.tensor([[0, 1, 2, 3]]))
    b = colour_jitter(x[:1], f, torch.tensor([[1, 0, 2, 3]]))
    assert not torch.allclose(a, b)


def test_geometric_per_image_equals_batched() -> None:
    x = _images(n=5, h=40, w=40)
    cfg = dataclasses.replace(MOCO, size=24)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(5)]
    batch = geometric(x, cfg, gens)
    single = torch.stack([random_geometric(x[i], cfg, torch.Generator().manual_seed(10 + i))
                          for i in range(5)])
    assert batch.dtype == torch.uint8 and batch.shape == (5, 3, 24, 24)
    assert torch.equal(batch, single)
    # Non-square decoded images need an output size; the loader passes its image_size.
    img = _images(n=1, h=37, w=53)[0]
    out = random_geometric(img, MOCO, torch.Generator().manual_seed(0), size=20)
    assert out.shape == (3, 20, 20)
    with pytest.raises(ValueError, match="output size"):
        random_geometric(img, MOCO, torch.Generator().manual_seed(0))


def test_geometric_draw_matches_torchvision_transform() -> None:
    """Crop then flip coin, drawn as RandomResizedCrop then RandomHorizontalFlip draw them."""
    img = _images(n=1, h=50, w=70)[0]
    cfg = AugmentConfig(crop="torchvision", crop_scale=(0.2, 1.0), flip=True)
    pipeline = T.Compose([T.RandomResizedCrop(32, scale=(0.2, 1.0), antialias=True),
                          T.RandomHorizontalFlip()])
    for seed in range(10):
        torch.manual_seed(seed)
        want = pipeline(tv_tensors.Image(img))
        got = random_geometric(img, cfg, torch.Generator().manual_seed(seed), size=32)
        assert (got.int() - want.as_subclass(Tensor).int()).abs().max() <= 1


def test_preset_is_reproducible() -> None:
    x = _images(n=8, h=32, w=32)
    a = augment(x, MOCO, torch.Generator().manual_seed(7))
    b = augment(x, MOCO, torch.Generator().manual_seed(7))
    c = augment(x, MOCO, torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    # uint8 and float [0, 1] input draw and compute the same photometric result.
    u = photometric(x, MOCO, torch.Generator().manual_seed(4))
    f = photometric(x.float() / 255, MOCO, torch.Generator().manual_seed(4))
    assert torch.equal(u, f)


def test_hue_and_blur_in_the_low_resolution_presets() -> None:
    """The CIFAR-style presets can take hue and blur through the new fields."""
    x = _images(n=8, h=32, w=32)
    base = AUGMENT_PRESETS["ssl"]
    with_hue = dataclasses.replace(base, hue=0.1, blur_p=0.5)
    a = augment(x, base, torch.Generator().manual_seed(5))
    b = augment(x, with_hue, torch.Generator().manual_seed(5))
    assert a.shape == b.shape and not torch.equal(a, b)
    # Hue and blur draw after the old draws: grey images (hue-free) without blur agree.
    grey = x[:, :1].expand_as(x).contiguous()
    only_hue = dataclasses.replace(base, hue=0.1)
    assert torch.allclose(augment(grey, base, torch.Generator().manual_seed(5)),
                          augment(grey, only_hue, torch.Generator().manual_seed(5)), atol=1e-6)


def test_config_rejects_contradictions() -> None:
    with pytest.raises(ValueError, match="size needs"):
        AugmentConfig(size=224)
    with pytest.raises(ValueError, match="blur_kernel"):
        AugmentConfig(blur_kernel=4)
    with pytest.raises(ValueError, match="hue"):
        AugmentConfig(hue=0.6)
    with pytest.raises(ValueError, match="pad"):
        AugmentConfig(crop="torchvision", pad=4)


def test_geometric_with_one_generator_draws_sample_after_sample() -> None:
    x = _images(n=4, h=32, w=32)
    batch = geometric(x, MOCO, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(batch, torch.stack([random_geometric(img, MOCO, g) for img in x]))
    with pytest.raises(ValueError, match="generators"):
        geometric(x, MOCO, [torch.Generator()] * 3)


def _mixed_params(n: int, kernel: int, seed: int = 0) -> PhotometricParams:
    """Drawn factors and orders with hand-set coins covering every jitter/gray/blur mix, and
    sigmas from tiny (no blur tap beyond the centre) to the top of the range."""
    p = sample_photometric(n, 40, MOCO, torch.Generator().manual_seed(seed), torch.device("cpu"))
    i = torch.arange(n)
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    sigma = torch.linspace(0.1, 2.0, n)[shuffle]
    return dataclasses.replace(p, jitter_on=i % 2 == 0, gray_on=i % 3 == 0,
                               blur_on=(i // 2) % 2 == 0, sigma=sigma, kernel=kernel)


@pytest.mark.parametrize(("h", "w", "kernel"), [(40, 36, 23), (33, 48, 5), (32, 32, 3)])
def test_cpu_photometric_equals_batched_formulas(h: int, w: int, kernel: int) -> None:
    """The CPU path (image by image, fast formulas, banded-product blur, sides not multiples
    of its block) equals the whole-batch formulas and the single reference ops."""
    x = _images(n=12, h=h, w=w).float() / 255
    p = _mixed_params(len(x), kernel)
    got = apply_photometric(x, p)
    last = apply_photometric(x.contiguous(memory_format=torch.channels_last), p)
    assert (last - got).abs().max() <= 1e-6
    batched = x.clone()
    _photometric_batched_(batched, p)
    assert (got - batched).abs().max() <= 1e-5
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    for i in range(len(x)):
        want = x[i:i + 1]
        if p.jitter_on[i]:
            for op in p.order[i].tolist():
                want = ops[op](want, p.factors[i:i + 1, op])
        if p.gray_on[i]:
            want = rgb_to_grayscale(want)
        if p.blur_on[i]:
            want = gaussian_blur(want, kernel, p.sigma[i:i + 1])
        assert (got[i] - want[0]).abs().max() <= 1e-5, i


def test_batched_photometric_ops_do_not_grow_with_the_batch() -> None:
    """The device path's ops per batch are fixed (each jitter step one blend for every
    sample and one hue shift for its samples), whatever the batch's size and mix of op
    orders: on a GPU each op is a kernel launch, and launches were most of its time."""
    counts = []
    for n in (48, 480):
        x = torch.rand(n, 3, 24, 24)
        p = sample_photometric(n, 24, MOCO, torch.Generator().manual_seed(n), x.device)
        assert all(bool((p.order[p.jitter_on] == op).any(0).all()) for op in range(4))
        with OpCount() as ops:
            _photometric_batched_(x, p)
        counts.append(ops.count)
    assert counts[0] == counts[1] < 250, counts


def test_cpu_photometric_does_not_depend_on_the_batch() -> None:
    """Each image's result is its own: a batch equals its samples one at a time, bit for bit,
    and the uint8 batch (converted image by image) equals the float one."""
    x = _images(n=8, h=48, w=48)
    got = photometric(x, MOCO, torch.Generator().manual_seed(9))
    p = sample_photometric(len(x), 48, MOCO, torch.Generator().manual_seed(9), x.device)
    xf = x.float() / 255
    assert torch.equal(got, apply_photometric(xf, p))
    for i in range(len(x)):
        one = PhotometricParams(p.jitter_on[i:i + 1], p.factors[i:i + 1], p.order[i:i + 1],
                                p.gray_on[i:i + 1], p.blur_on[i:i + 1], p.sigma[i:i + 1],
                                p.kernel, p.active)
        assert torch.equal(apply_photometric(xf[i:i + 1], one)[0], got[i])


def test_cpu_hue_at_the_edges_of_its_range() -> None:
    """The CPU hue (sign/lerp sector choice, frac-based wheel) against adjust_hue for factors
    up to +-0.5, on grey pixels, ties, black, white and saturated colours."""
    x = _images(n=6, h=20, w=20).float() / 255
    x[2, :, :2] = 0.0
    x[2, :, 2:4] = 1.0
    x[3, 0], x[3, 1], x[3, 2] = 1.0, 0.0, 0.0  # pure red
    x[4, 2] = x[4, 0]  # r = b ties
    for f in (-0.5, -0.31, -0.1, 0.0, 0.07, 0.1, 0.5):
        factors = torch.zeros(len(x), 4)
        factors[:, 3] = f
        order = torch.tensor([[3, 0, 1, 2]]).expand(len(x), 4)
        got = colour_jitter(x, factors, order, active=(False, False, False, True))
        assert (got - adjust_hue(x, factors[:, 3])).abs().max() <= 1e-5, f


@pytest.mark.parametrize("group_pixels", [2**25, 3000])
def test_batched_resized_crops_equal_one_resize_per_view(group_pixels: int,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The batched product path: images of several sizes (padded in size groups; a small
    pixel budget forces one group per image), two views of some images, flips, crops that
    shrink and crops that enlarge, against one float ``crop_resize_flip`` per view (the
    path a GPU takes), rounded: within one grey level, and equal but for values that fall
    on a half (an enlarging crop's 1/4 - 3/4 weights on integers), which float sums in
    another order may round either way: about 0.2 % of the pixels here."""
    monkeypatch.setattr(augment_module, "_CROP_GROUP_PIXELS", group_pixels)
    g = torch.Generator().manual_seed(4)
    shapes = [(37, 50), (50, 37), (37, 50), (64, 64), (21, 30)]
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
              for h, w in shapes]
    owners, boxes, flips = [], [], []
    for i, (h, w) in enumerate(shapes):
        for k in range(1 + i % 2):
            owners.append(i)
            boxes.append(sample_crop(h, w, (0.05, 1.0), (3 / 4, 4 / 3), g))
            flips.append(bool((i + k) % 2))
    boxes[0] = (0, 0, shapes[0][0], shapes[0][1])  # the whole image
    size = 24
    got = resized_crops(images, owners, boxes, flips, size)
    assert got.shape == (len(boxes), 3, size, size) and got.dtype == torch.uint8
    diffs = []
    for v, (owner, box, flip) in enumerate(zip(owners, boxes, flips, strict=True)):
        want = crop_resize_flip(images[owner].float(), box, size, flip)
        want = want.round().clamp(0, 255).to(torch.uint8)
        diffs.append((got[v].int() - want.int()).abs())
    every = torch.cat([d.flatten() for d in diffs])
    assert int(every.max()) <= 1
    assert float((every > 0).float().mean()) < 1e-2


def test_batched_resized_crops_ignore_the_tf32_setting() -> None:
    """The products run in float64, so a trial's TF32 setting changes nothing, and no
    global setting is switched (the GPU path cuts crops in a thread beside the training)."""
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    want = resized_crops([image], [0], [(3, 2, 30, 33)], [False], 16)
    torch.set_float32_matmul_precision("medium")
    try:
        got = resized_crops([image], [0], [(3, 2, 30, 33)], [False], 16)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert torch.equal(got, want)
    one = crop_resize_flip(image.float(), (3, 2, 30, 33), 16, False).round().to(torch.uint8)
    assert int((got[0].int() - one.int()).abs().max()) <= 1


def test_photometric_draws_stay_on_the_generators_device() -> None:
    """The coins and the op order come back on the CPU (the batched path indexes by them
    without a device sync); factors and sigmas on the batch's device."""
    p = sample_photometric(8, 32, MOCO, torch.Generator().manual_seed(0), torch.device("cpu"))
    for t in (p.jitter_on, p.gray_on, p.blur_on, p.order):
        assert t.device.type == "cpu"
    again = sample_photometric(8, 32, MOCO, torch.Generator().manual_seed(0),
                               torch.device("cpu"))
    assert torch.equal(p.factors, again.factors) and torch.equal(p.order, again.order)


def test_padded_places_every_image_at_the_top_left() -> None:
    """Images of interleaved shapes (stacked per shape) land at the top left of their own
    slot, zeros around them, each row's channels side by side."""
    g = torch.Generator().manual_seed(5)
    shapes = [(3, 4), (5, 2), (3, 4), (5, 2), (1, 1)]
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
              for h, w in shapes]
    out = augment_module._padded(images)
    assert out.shape == (5, 5, 3, 4) and out.dtype == torch.float64  # n x H x C x W
    for i, (h, w) in enumerate(shapes):
        assert torch.equal(out[i, :h, :, :w], images[i].permute(1, 0, 2).double())
        assert float(out[i].sum()) == float(images[i].double().sum())
