"""Decoded + augmented images/s per CPU core at 224 px: the official pipeline against ukd's
streaming path, in one run, on generated ImageNet-like JPEGs.

    OMP_NUM_THREADS=1 python -m benchmarks.data_throughput --workers 2

Data: ``--images`` JPEGs of 500 x 375 px at quality 90 (ImageNet's typical size; natural-ish
content -- smooth multi-scale noise, discs, fine grain -- so the files are ~100 KB like
ImageNet's ~110 KB), in an ImageFolder layout of 4 classes, written once to ``--dir``.

(a) official: what CoSS's training script runs (paganpasta/coss-pytorch train_sampled_coss.py
    + tools/utils.py ``mocov2_aug``): ``torchvision.datasets.ImageFolder`` (PIL decode) with
    RandomResizedCrop(224, scale (0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8,
    RandomGrayscale(0.2), PIL GaussianBlur(radius ~ U(0.1, 2)) p 0.5, horizontal flip,
    ToTensor + Normalize, in a ``DataLoader`` with ``--workers`` worker processes.
(b) ukd: the streaming batch stream (orchestrator.data.batches.BatchStream over
    orchestrator.data.folders.FolderImages, the ``mocov2`` preset): ``--workers`` decode processes
    decode each file (libjpeg-turbo) and cut its RandomResizedCrop + flip (torchvision's rule,
    antialiased resize, uint8); the photometric half (jitter with hue, grayscale, blur) runs
    batched on the device.

(c) on CUDA, ukd's ``dataset.decode: gpu``: the whole ``mocov2`` view on the GPU (files read
    ahead by a thread, batched nvJPEG decode, batched crops, batched photometric half,
    normalised) through the real BatchStream, and each stage alone on one batch; the JSON's
    ``gpu_decode_mocov2_img_s`` (the issue's target on one H200: 10 k images/s). Each batch
    is decoded and cropped ahead by the finisher thread (orchestrator.data.folders
    ``_finish``) while the batch before is used; the reference in the same run decodes each
    batch when it is read (``..._inline_...``). And the other route on the same GPU,
    ``decode: cpu``: the ``--workers`` decode and crop, the GPU runs the photometric half
    (``cpu_decode_gpu_mocov2_img_s``, at the last batch; inline: the copy to the GPU made
    when the batch is read). And both at once, ``dataset.gpu_share`` at each
    ``--gpu-share``: nvJPEG decodes that share of each batch, the workers the rest;
    ``best_mocov2_img_s`` is the fastest route's (``best_route``).
(d) on any machine, (c)'s device-side work counted in ops: the aten ops that compute (each a
    kernel launch on a GPU, near enough; views and scalar reads left out) of one batch's
    crops (models.augment.resized_crops) and photometric half (the batched path a GPU runs),
    per ``--gpu-batch``. A GPU view is host-bound (a launch costs microseconds of host time;
    9 us on average under the profiler on the H200, torch 2.11), so
    this count is the part of (c)'s cost that a CPU-only machine can measure.
(e) (run before (d)) the GPU route with a student's step on each view (ResNet-18 forward,
    backward and SGD, bf16 on CUDA), the same two ways: the overlap a trial gets. Without a
    GPU, a stand-in of the mechanism: the GPU route's code on the CPU (its decode and crops
    in the finisher thread), the step at 112 px, with and without the step
    (``stand_in_...``).

Per core = images/s divided by the processes that do the work: the loader workers for (a);
for (b) the decode workers, the photometric half being the device's. Without a GPU the
"device" is this CPU: ``ukd_cpu_only_img_s_per_core`` then charges (b) the photometric's
measured single-core cost as well (one more core). The last line is one JSON object:
``ukd_img_s_per_core`` is ukd's whole pipeline per CPU core of this machine (on CUDA the
photometric half is the GPU's), ``ukd_decode_img_s_per_core`` its decode + crop half.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.trial_throughput import sync
from orchestrator.data.folders import FolderImages

SIZE = 224


def _picture(rng: np.random.Generator) -> bytes:
    """A 500 x 375 JPEG (q 90) with natural-image-like spectra."""
    from PIL import Image, ImageDraw

    h, w = 375, 500
    img = np.full((h, w, 3), 120.0, np.float32)
    for cells, amp in ((3, 70.0), (12, 40.0), (48, 24.0), (125, 16.0), (250, 10.0)):
        small = torch.from_numpy(rng.normal(0, amp, (cells + 1, cells + 1, 3)).astype(np.float32))
        up = torch.nn.functional.interpolate(small.permute(2, 0, 1)[None], size=(h, w),
                                             mode="bicubic", align_corners=False)
        img += up[0].permute(1, 2, 0).numpy()
    img += rng.normal(0, 30, (h, w, 3))
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for _ in range(8):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(8, 90))
        draw.ellipse((x - r, y - r, x + r, y + r),
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    pic.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_folder(root: Path, images: int) -> Path:
    train = root / "train"
    if train.is_dir() and sum(1 for _ in train.rglob("*.jpg")) == images:
        return root
    rng = np.random.default_rng(0)
    for i in range(images):
        for split in ("train", "val"):
            folder = root / split / f"class_{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            if split == "train" or i < 4:
                (folder / f"{i:05d}.jpg").write_bytes(_picture(rng))
    return root


def _jpegs(root: Path) -> list[str]:
    """The generated training JPEGs, sorted."""
    return sorted(str(f) for f in (root / "train").rglob("*.jpg"))


def official(root: Path, workers: int, batch: int, epochs: int) -> float:
    """Images/s of CoSS's loader (see the module docstring)."""
    from PIL import ImageFilter
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    class GaussianBlur:  # coss-pytorch tools/utils.py (MoCo v2's)
        def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
            self.sigma = sigma

        def __call__(self, x: Any) -> Any:
            return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    aug = transforms.Compose([
        transforms.RandomResizedCrop(SIZE, scale=(0.2, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    data = datasets.ImageFolder(str(root / "train"), aug)
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=True, prefetch_factor=2,
                        worker_init_fn=lambda _: torch.set_num_threads(1))
    for _ in loader:  # start the workers, warm the page cache
        pass
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for x, _labels in loader:
            count += x.shape[0]
    return count / (time.perf_counter() - start)


class _GpuRouteOnCpu(FolderImages):
    """``decode: gpu``'s code on a CPU device (the stand-in of (e)): the batched decode and
    crops of a prefetched batch run in the finisher thread, as on CUDA."""

    @property
    def _on_gpu(self) -> bool:
        return self.gpu_decode


@dataclass(frozen=True)
class Route:
    """How the benchmark's stream reads its batches: ``dataset.decode`` and ``gpu_share``;
    ``finish_ahead`` False: a batch's last leg onto the device (nvJPEG's decode and the
    crops, or the copy of the workers' batch) runs when the batch is read rather than in the
    finisher thread (the reference); ``stand_in``: the GPU route's code on a CPU device
    (:class:`_GpuRouteOnCpu`)."""

    decode: str = "gpu"
    gpu_share: float = 1.0
    finish_ahead: bool = True
    stand_in: bool = False


def _mocov2_stream(root: Path, workers: int, batch: int, device: torch.device, route: Route,
                   prefetch: int) -> Any:
    """The real BatchStream over the folder streamed the ``route`` way, one ``mocov2`` view
    per image."""
    from models.augment import AUGMENT_PRESETS
    from orchestrator.data.batches import BatchStream
    from orchestrator.data.datasets import load_dataset
    from orchestrator.spec.config import DatasetConfig

    bundle = load_dataset(DatasetConfig(name="imagefolder", root=str(root), image_size=SIZE,
                                        storage="stream", workers=workers, prefetch=prefetch,
                                        decode=route.decode, gpu_share=route.gpu_share))
    images: Any = bundle.training_images  # a FolderImages
    if route.stand_in:
        images = _GpuRouteOnCpu(images.files, images.decode, images.workers, images.depth,
                                gpu_decode=True, gpu_share=route.gpu_share)
    images.finish_ahead = route.finish_ahead
    return BatchStream(images.to(device), None, bundle.mean, bundle.std,
                       AUGMENT_PRESETS["mocov2"], seed=0, batch_size=batch, num_views=1)


def _one_view_each(files: list[str], device: torch.device | str = "cpu"
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[Any], list[bool]]:
    """The files' bytes, their batched decode on ``device`` and one ``mocov2`` view's crop
    box and flip each, as the GPU-decode path draws them."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from models.augment import AUGMENT_PRESETS
    from orchestrator.data.folders import plan_views_many, read_files

    datas = read_files(files)
    decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    plans = plan_views_many(files, [[i] for i in range(len(files))], AUGMENT_PRESETS["mocov2"])
    return datas, decoded, [p.boxes[0] for p in plans], [p.flips[0] for p in plans]


def ukd_stream(root: Path, workers: int, batch: int, epochs: int,
               device: torch.device) -> tuple[float, float]:
    """(images/s of the decode + crop stream, images/s of the photometric half on
    ``device``), with the real BatchStream and FolderImages."""
    from models.augment import AUGMENT_PRESETS, photometric
    from orchestrator.data.streams import generator

    cfg = AUGMENT_PRESETS["mocov2"]
    stream = _mocov2_stream(root, workers, batch, device, Route("cpu"), prefetch=4)
    for b in stream.epoch(0):  # warm up (workers forked, page cache)
        b.geometric(1)
    crops = []
    start, count = time.perf_counter(), 0
    for epoch in range(1, epochs + 1):
        for b in stream.epoch(epoch):
            crops.append(b.geometric(1)[:, 0])
            count += int(b.indices.shape[0])
    geo_rate = count / (time.perf_counter() - start)
    gen = generator(0, "view", 0, 0, 0, device=device)
    x = crops[0].to(device)
    photometric(x, cfg, gen)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    done = 0
    for c in crops[: max(2, len(crops) // 2)]:
        photometric(c.to(device), cfg, gen)
        done += c.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return geo_rate, done / (time.perf_counter() - start)


def _median(rates: list[float]) -> float:
    return round(statistics.median_high(rates), 1)


def _runs(rates: list[float]) -> str:
    return " / ".join(f"{r:.0f}" for r in sorted(rates))


def _rate(fn: Any, images: int, device: torch.device, repeat: int = 3) -> float:
    """Images/s of ``fn()`` (warmed up once, best of ``repeat`` synchronised runs)."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return images / best


def whole_view(root: Path, batch: int, epochs: int, workers: int, device: torch.device,
               route: Route, repeats: int = 3, profile: bool = False, step: Any = None
               ) -> list[float]:
    """Images/s of ukd's whole ``mocov2`` view on ``device`` through the real BatchStream
    read the ``route`` way -- ``gpu``: files read ahead by a thread, one batched nvJPEG
    decode, the batched crops (``gpu_share`` of the images; the workers the others);
    ``cpu``: ``workers`` processes decode and crop --, the photometric half batched on the
    device, normalised: over ``epochs`` epochs after one warm-up epoch, ``repeats`` times.
    ``profile``: one more epoch under torch's profiler, its top ops printed (host time
    first: the view is host-bound). ``step``: called on each view (a trial's work on the
    batch, :func:`student_step`)."""
    stream = _mocov2_stream(root, workers, batch, device, route, prefetch=2)

    def use(x: torch.Tensor) -> None:
        if step is not None:
            step(x)

    for b in stream.epoch(0):  # warm-up: nvJPEG's buffers, cuDNN's blur, the page cache
        use(b.view(0))
    rates = []
    for repeat in range(repeats):
        sync(device)
        start, count = time.perf_counter(), 0
        for epoch in range(1, epochs + 1):
            for b in stream.epoch(repeat * epochs + epoch):
                use(b.view(0))
                count += int(b.indices.shape[0])
        sync(device)
        rates.append(count / (time.perf_counter() - start))
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profiler(activities=activities) as prof:
            for b in stream.epoch(repeats * epochs + 1):
                b.view(0)
            sync(device)
        table = prof.key_averages()
        print(f"profile of one epoch of the whole view ({route}, batch {batch}):")
        print(table.table(sort_by="self_cpu_time_total", row_limit=20,
                          max_name_column_width=48))
        if device.type == "cuda":
            print(table.table(sort_by="self_cuda_time_total", row_limit=12,
                              max_name_column_width=48))
    return rates


def student_step(device: torch.device, pool: int = 1) -> Any:
    """A ResNet-18 forward, backward and SGD step on a view (channels-last, bf16 autocast on
    CUDA), average-pooled by ``pool`` first (the CPU stand-in's step at 112 px, as long as
    its decode): the trial's work that a batch's decode, made ahead, can overlap."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=128).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(x: torch.Tensor) -> None:
        if pool > 1:
            x = torch.nn.functional.avg_pool2d(x, pool)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = net(x.contiguous(memory_format=torch.channels_last)).float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def finisher_overlap(root: Path, batch: int, epochs: int, workers: int, device: torch.device
                     ) -> dict[str, float]:
    """(e): ``decode: gpu``'s view with a student's step on each (:func:`student_step`), each
    batch's decode and crops made ahead by the finisher thread and, the reference, when it
    is read. On CUDA the real route (the view alone is (c)'s); on a CPU the stand-in
    (:class:`_GpuRouteOnCpu`, the step at 112 px), the view alone too: the mechanism, not a
    GPU's figure."""
    stand_in = device.type != "cuda"
    step = student_step(device, pool=2 if stand_in else 1)
    uses = {"resnet18_step": step, **({"view": None} if stand_in else {})}
    prefix = "stand_in_" if stand_in else "gpu_decode_"
    out: dict[str, float] = {}
    for name, use in uses.items():
        made = {ahead: whole_view(root, batch, epochs, workers, device,
                                  Route(finish_ahead=ahead, stand_in=stand_in),
                                  repeats=3 if not stand_in else 2, step=use)
                for ahead in (True, False)}
        print(f"(e) decode: gpu{' (its code on this CPU)' if stand_in else ''}, "
              f"{'a ResNet-18 step per view' if use else 'the view alone'} on {device} "
              f"(batch {batch}): {_runs(made[True])} img/s (each batch decoded when read: "
              f"{_runs(made[False])}, {_median(made[True]) / _median(made[False]):.2f}x)")
        out[f"{prefix}{name}_img_s"] = _median(made[True])
        out[f"{prefix}{name}_inline_img_s"] = _median(made[False])
    return out


def gpu_decode(root: Path, batch: int, epochs: int, workers: int, device: torch.device,
               repeats: int = 3, profile: bool = False) -> dict[str, float]:
    """``dataset.decode: gpu``'s whole view (:func:`whole_view`: ``whole_0``, ``whole_1``,
    ...; ``inline_0``, ...: the reference with each batch's decode and crops run when it is
    read, not ahead by the finisher thread) and its stages alone on one batch: decode, crops
    (and the per-view resize they replace), photometric."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from models.augment import AUGMENT_PRESETS, crop_resize_flip, photometric, resized_crops
    from orchestrator.data.streams import generator

    cfg = AUGMENT_PRESETS["mocov2"]
    rates = whole_view(root, batch, epochs, workers, device, Route(), repeats, profile)
    out = {f"whole_{i}": rate for i, rate in enumerate(rates)}
    inline = whole_view(root, batch, epochs, workers, device, Route(finish_ahead=False),
                        repeats)
    out.update({f"inline_{i}": rate for i, rate in enumerate(inline)})
    files = _jpegs(root)[:batch]
    n = len(files)
    datas, decoded, boxes, flips = _one_view_each(files, device)
    crops = resized_crops(decoded, list(range(n)), boxes, flips, SIZE)
    gen = generator(0, "view", 0, 0, 0)
    out["decode"] = _rate(lambda: decode_jpeg(datas, mode=ImageReadMode.RGB, device=device),
                          n, device)
    out["crops"] = _rate(lambda: resized_crops(decoded, list(range(n)), boxes, flips, SIZE),
                         n, device)
    out["crops_per_view"] = _rate(
        lambda: [crop_resize_flip(im, bx, SIZE, fl)
                 for im, bx, fl in zip(decoded, boxes, flips, strict=True)], n, device)
    out["photometric"] = _rate(lambda: photometric(crops, cfg, gen), n, device)
    return out


def device_ops(root: Path, batch: int) -> dict[str, int]:
    """(d): ops of one batch's crops (the generated files, decoded here) and batched
    photometric half, counted by a dispatch mode."""
    from common.opcount import OpCount
    from models.augment import (
        AUGMENT_PRESETS,
        _photometric_batched_,
        resized_crops,
        sample_photometric,
    )

    cfg = AUGMENT_PRESETS["mocov2"]
    files = _jpegs(root)
    _, decoded, boxes, flips = _one_view_each((files * -(-batch // len(files)))[:batch])
    with OpCount() as crops:
        views = resized_crops(decoded, list(range(batch)), boxes, flips, SIZE)
    x = views.float().div_(255)
    params = sample_photometric(batch, SIZE, cfg, torch.Generator().manual_seed(0), x.device)
    with OpCount() as photo:
        _photometric_batched_(x, params)
    return {"crops": crops.count, "photometric": photo.count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gpu-batch", type=int, nargs="+", default=[256, 1024],
                        help="batches of the GPU-decode path (CUDA only); the JSON's figure "
                             "is the last (experiments/imagenet.yaml's step: 4 devices x 256)")
    parser.add_argument("--gpu-share", type=float, nargs="*", default=[0.5, 0.6, 0.7],
                        help="(c) also with dataset.gpu_share at these shares (CUDA only)")
    parser.add_argument("--gpu-path-on-cpu", action="store_true",
                        help="run (c)'s code on the CPU too (a smoke test, not a figure)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one epoch of (c)'s whole view at the last --gpu-batch "
                             "(torch's profiler: where its host time goes)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ukd-data-throughput"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = make_folder(args.dir, args.images)
    files = _jpegs(root)
    kb = np.mean([os.path.getsize(f) for f in files]) / 1000
    print(f"{len(files)} JPEGs 500x375 q90, mean {kb:.0f} KB; {args.workers} workers; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); "
          f"device {device}; torch {torch.__version__}")
    a = official(root, args.workers, args.batch, args.epochs)
    geo, photo = ukd_stream(root, args.workers, args.batch, args.epochs, device)
    a_core = a / args.workers
    b_core = geo / args.workers
    print(f"(a) official ImageFolder + PIL mocov2_aug + DataLoader: {a:.0f} img/s, "
          f"{a_core:.1f} img/s per core")
    print(f"(b) ukd stream, decode + RandomResizedCrop + flip in workers: {geo:.0f} img/s, "
          f"{b_core:.1f} img/s per core ({b_core / a_core:.2f}x (a))")
    print(f"    photometric half (jitter with hue, grayscale, blur) batched on {device}: "
          f"{photo:.0f} img/s")
    out: dict[str, Any] = {"official_img_s_per_core": round(a_core, 1),
                           "ukd_decode_img_s_per_core": round(b_core, 1),
                           "workers": args.workers, "images": len(files),
                           "mean_kb": round(float(kb), 1), "device": str(device)}
    if device.type == "cpu":
        # Everything on this CPU: one image costs workers/geo + 1/photo core-seconds.
        full = 1.0 / (args.workers / geo + 1.0 / photo)
        print(f"    without a GPU the photometric half costs a core too: {full:.1f} img/s "
              f"per core ({full / a_core:.2f}x (a))")
        out["ukd_cpu_photometric_img_s"] = round(photo, 1)
    else:  # the photometric half on the GPU: the CPU cores only decode and crop
        full = b_core
        out["ukd_gpu_photometric_img_s"] = round(photo, 1)
    if device.type == "cuda" or args.gpu_path_on_cpu:
        rates: dict[str, float] = {}
        inline_rates: dict[str, float] = {}
        for gpu_batch in args.gpu_batch:
            gpu = gpu_decode(root, gpu_batch, args.epochs, args.workers, device,
                             profile=args.profile and gpu_batch == args.gpu_batch[-1])
            whole = sorted(v for k, v in gpu.items() if k.startswith("whole_"))
            inline = sorted(v for k, v in gpu.items() if k.startswith("inline_"))
            rates[str(gpu_batch)] = _median(whole)
            inline_rates[str(gpu_batch)] = _median(inline)
            print(f"(c) ukd decode: gpu, whole mocov2 view on {device} (batch {gpu_batch}): "
                  + _runs(whole) + " img/s (each batch decoded when read: " + _runs(inline)
                  + f", {rates[str(gpu_batch)] / inline_rates[str(gpu_batch)]:.2f}x); alone: "
                  f"nvJPEG decode {gpu['decode']:.0f}, batched crops {gpu['crops']:.0f} "
                  f"(one resize per view: {gpu['crops_per_view']:.0f}), photometric "
                  f"{gpu['photometric']:.0f}")
            out[f"gpu_stages_img_s_batch_{gpu_batch}"] = {
                k: round(v, 1) for k, v in gpu.items()
                if not k.startswith(("whole_", "inline_"))}
        out["gpu_decode_mocov2_img_s_by_batch"] = rates
        out["gpu_decode_inline_mocov2_img_s_by_batch"] = inline_rates
        out["gpu_decode_mocov2_img_s"] = rates[str(args.gpu_batch[-1])]
        # The other route on the same GPU: the workers decode and crop, the GPU does the
        # photometric half (decode: cpu); the faster one is the machine's figure.
        last = args.gpu_batch[-1]
        cpu_route = sorted(whole_view(root, last, args.epochs, args.workers, device,
                                      Route("cpu")))
        cpu_inline = sorted(whole_view(root, last, args.epochs, args.workers, device,
                                       Route("cpu", finish_ahead=False)))
        print(f"(c) ukd decode: cpu ({args.workers} workers), photometric half on {device}, "
              f"whole mocov2 view (batch {last}): {_runs(cpu_route)} img/s (each batch "
              f"copied over when read: {_runs(cpu_inline)})")
        out["cpu_decode_gpu_mocov2_img_s"] = _median(cpu_route)
        out["cpu_decode_gpu_inline_mocov2_img_s"] = _median(cpu_inline)
        # Both routes at once (dataset.gpu_share): nvJPEG decodes each batch's first share,
        # the workers (idle in the GPU route but for drawing the views) the rest.
        routes = {"decode: gpu": out["gpu_decode_mocov2_img_s"],
                  "decode: cpu": out["cpu_decode_gpu_mocov2_img_s"]}
        for share in args.gpu_share:
            shared = whole_view(root, last, args.epochs, args.workers, device,
                                Route(gpu_share=share))
            routes[f"decode: gpu, gpu_share: {share}"] = _median(shared)
            print(f"(c) ukd decode: gpu, gpu_share {share} (nvJPEG {share:.0%} of each batch, "
                  f"the {args.workers} workers the rest), whole mocov2 view (batch {last}): "
                  f"{_runs(shared)} img/s")
        out["mocov2_img_s_by_route"] = routes
        out["best_route"] = max(routes, key=lambda r: routes[r])
        out["best_mocov2_img_s"] = routes[out["best_route"]]
    # (e) before (d): (d)'s large crops on this thread leave its malloc heap grown, which
    # makes the stand-in's inline reference (its f64 crops on the CPU) about 2x faster here
    # than in the finisher thread -- the allocator's history, not the mechanism.
    out.update(finisher_overlap(root, args.gpu_batch[-1] if device.type == "cuda"
                                else args.batch, args.epochs, args.workers, device))
    counts = {str(b): device_ops(root, b) for b in args.gpu_batch}
    print("(d) (c)'s device-side ops per batch (kernel launches on a GPU): " + "; ".join(
        f"batch {b}: crops {c['crops']}, photometric {c['photometric']}"
        for b, c in counts.items()))
    out["gpu_path_ops_per_batch"] = counts
    # ukd's whole pipeline (decode, crop and photometric) per CPU core of this machine.
    out.update(ukd_img_s_per_core=round(full, 1), ratio=round(full / a_core, 2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
