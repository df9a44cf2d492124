"""Trial throughput: a training loop in the seeds' style against one ukd trial and ukd fused
groups of K = 2, 4, 8 students, in one run, on the same synthetic CIFAR-shaped data.

    PYTHONPATH=. python3 benchmarks/trial_throughput.py [--device cpu|cuda]

Every figure is student-images per second (a fused group of K counts K x its images), for
CoSS at batch 128 on the pairs resnet32x4 -> resnet8x4 and wrn_40_2 -> wrn_16_2:
(a) the seeds' style: torchvision transforms on PIL images through a DataLoader, fp32, the
    teacher's forward every step and the loss read back every step (RepDistiller / the
    official CoSS code);
(b) one ukd trial: the engine's own step (orchestrator/engine: batched augmentation on the
    device, shared teacher pass, the member's step; bf16 autocast and channels_last on CUDA);
(c) ukd fused groups of K students of one architecture (CoSS with K different lambda / lr),
    at the level `resources.fuse: auto` picks on the device (stacked on CUDA, members of a
    group on CPU) and at the other level for comparison.
(d) the 224-px ImageNet pair, resnet50 -> resnet18 with CoSS's neighbour batches and the
    ``mocov2`` augmentation: one trial against a fused group of 4 (``--imagenet-batch``,
    ``--imagenet-steps``; on CPU a few steps of one 16-image anchor group).
It imports torch, torchvision and ukd's models/, losses/ and trial engine only (no Ray, MLflow
or pydantic), prints a table, where one ukd step's time goes, and as its last line one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from losses import NeighbourBatches
from losses.coss import OFFICIAL_SCALE
from losses.functional import cosine_rows_loss, space_similarity_loss
from models.augment import AUGMENT_PRESETS
from models.base import build_model
from models.heads import coss_projection
from models.pretrain import PretrainConfig
from models.teacher import FrozenTeacher
from orchestrator.data.batches import BatchStream
from orchestrator.engine.knn import neighbour_graph
from orchestrator.engine.member import Member, build_member
from orchestrator.engine.precision import memory_format
from orchestrator.engine.stacked import plan_stacks
from orchestrator.engine.teacher_pass import SharedTeacher
from orchestrator.spec.config import (
    DatasetConfig,
    EvalConfig,
    LossConfig,
    PretrainSource,
    RuntimeConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    TrialConfig,
)

PAIRS = {"resnet32x4->resnet8x4": ("resnet32x4", "resnet8x4"),
         "wrn_40_2->wrn_16_2": ("wrn_40_2", "wrn_16_2")}
BATCH = 128
MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense, vendor datasheets
CHECK_EVERY = 25


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, steps: int, warmup: int, step: Callable[[int], None]) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- (a) seeds' style


class PilImages(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, images: np.ndarray[Any, Any], transform: Callable[[Any], Any]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x: torch.Tensor = self.transform(Image.fromarray(self.images[i]))
        return x, 0


def seeds_style(pair: tuple[str, str], images: np.ndarray[Any, Any], device: torch.device,
                steps: int, warmup: int, workers: int, batch: int = BATCH) -> float:
    torch.manual_seed(0)
    teacher = build_model(pair[0]).to(device).eval()
    student = build_model(pair[1]).to(device).train()
    head = coss_projection(student.feature_dim, teacher.feature_dim).to(device)
    params = [*student.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    transform = transforms.Compose([transforms.RandomCrop(images.shape[1], padding=4),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize(MEAN, STD)])
    loader = DataLoader(PilImages(images, transform), batch_size=batch, shuffle=True,
                        num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    batches = iter(loader)
    losses = []

    def step(_: int) -> None:
        nonlocal batches
        try:
            x, _labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, _labels = next(batches)
        x = x.to(device, non_blocking=True)
        with torch.no_grad():
            target = teacher(x)
        projected = head(student(x))
        loss = OFFICIAL_SCALE * (cosine_rows_loss(projected, target)
                                 + space_similarity_loss(projected, target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # the seeds log the loss every step (a host sync)

    seconds = timed(device, steps, warmup, step)
    return steps * batch / seconds


# ----------------------------------------------------------------------------- (b, c) ukd


def trial(pair: tuple[str, str], index: int, device: torch.device, threads: int,
          directory: Path, lam: float, lr: float, batch: int = BATCH,
          precision: str = "auto", compile: bool = False) -> TrialConfig:
    teacher = TeacherConfig("teacher", PretrainSource(pair[0], PretrainConfig(arch=pair[0])),
                            "cifar100")
    return TrialConfig(
        trial_id=f"bench{index:02d}", index=index, sweep="benchmark",
        dataset=DatasetConfig("cifar100", labels=False), teacher=teacher,
        student=StudentConfig(pair[1]),
        loss=LossConfig.of("coss", {"lambda": lam, "neighbours": 0}),
        train=TrainConfig(epochs=10_000, batch_size=batch, lr=lr, augment="crop_flip",
                          precision=precision, compile=compile),
        eval=EvalConfig(),
        runtime=RuntimeConfig(device.type, threads, str(directory / f"bench{index:02d}"),
                              str(directory)))


class Engine:
    """The trial engine's pieces, as run_group wires them, without the epochs' bookkeeping."""

    def __init__(self, pair: tuple[str, str], images: torch.Tensor, device: torch.device,
                 threads: int, directory: Path, batch: int = BATCH,
                 precision: str = "auto", compile: bool = False) -> None:
        self.pair, self.device, self.threads, self.directory = pair, device, threads, directory
        self.batch, self.precision, self.compile = batch, precision, compile
        torch.manual_seed(0)
        teacher = FrozenTeacher(build_model(pair[0]))
        self.teacher = SharedTeacher(teacher.to(device).to(memory_format=memory_format(device)))
        self.images = images.to(device)
        self.mean, self.std = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)
        self.stream = BatchStream(self.images, None, self.mean, self.std,
                                  AUGMENT_PRESETS["crop_flip"], 0, batch,
                                  memory_format=memory_format(device))

    def members(self, k: int, level: str = "group", directory: Path | None = None
                ) -> list[Member]:
        """K fresh members (CoSS, lambda and lr differ), in ``directory`` (default the
        engine's); the stream gets the layout run_group gives them (contiguous for stacks on
        CPU)."""
        layout = memory_format(self.device, stacked=level == "stack")
        self.stream = dataclasses.replace(self.stream, memory_format=layout)
        out = []
        for i in range(k):
            t = trial(self.pair, i, self.device, self.threads, directory or self.directory,
                      lam=(0.25, 0.5, 1.0, 2.0)[i % 4], lr=(0.05, 0.1)[(i // 4) % 2],
                      batch=self.batch, precision=self.precision, compile=self.compile)
            out.append(build_member(t, teacher=self.teacher, images=self.images, labels=None,
                                    num_classes=100, mean=self.mean, std=self.std,
                                    device=self.device, graphs=lambda size: torch.empty(0),
                                    layout=layout))
        return out

    def throughput(self, k: int, level: str, steps: int, warmup: int) -> float:
        members = self.members(k, level)
        stacks, alone = plan_stacks(members) if level == "stack" else ([], members)
        for m in alone:
            m.begin_epoch(0)
        for s in stacks:
            s.begin_epoch(0)
        batches = self.stream.epoch(0)
        epoch = 0

        def step(i: int) -> None:
            nonlocal batches, epoch
            try:
                batch = next(batches)
            except StopIteration:
                epoch += 1
                batches = self.stream.epoch(epoch)
                batch = next(batches)
            self.teacher.new_step()
            for s in stacks:
                s.step(batch, self.teacher)
            for m in alone:
                m.step(batch, self.teacher)
            if (i + 1) % CHECK_EVERY == 0:
                for m in members:
                    m.check_finite(0)  # the engine's periodic read-back

        seconds = timed(self.device, steps, warmup, step)
        for m in members:
            m.check_finite(0)
        return k * steps * self.batch / seconds

    def breakdown(self, steps: int) -> dict[str, float]:
        """Milliseconds a step spends augmenting, in the teacher's forward, and the rest."""
        from orchestrator.engine.precision import autocast

        member = self.members(1)[0]
        member.begin_epoch(0)
        idx = torch.arange(self.batch, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(0)
        x = self.stream.augmented(idx, gen)

        def augment_only(_: int) -> None:
            self.stream.augmented(idx, gen)

        def teacher_only(_: int) -> None:
            with torch.no_grad(), autocast(self.device, self.precision):
                self.teacher.teacher.features(x)

        batch = next(self.stream.epoch(0))

        def full_step(_: int) -> None:
            batch._views.clear()
            self.teacher.new_step()
            member.step(batch, self.teacher)

        ms = {name: 1000 * timed(self.device, steps, 2, fn) / steps
              for name, fn in (("augment", augment_only), ("teacher_forward", teacher_only),
                               ("step", full_step))}
        ms["student_loss_optimiser"] = ms["step"] - ms["augment"] - ms["teacher_forward"]
        return ms

    def flops_per_step(self, k: int, level: str) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        members = self.members(k, level)
        stacks, alone = plan_stacks(members) if level == "stack" else ([], members)
        for m in alone:
            m.begin_epoch(0)
        for s in stacks:
            s.begin_epoch(0)
        batch = next(self.stream.epoch(0))
        with FlopCounterMode(display=False) as counter:
            self.teacher.new_step()
            for s in stacks:
                s.step(batch, self.teacher)
            for m in alone:
                m.step(batch, self.teacher)
        return float(counter.get_total_flops())


def measure(pairs: dict[str, tuple[str, str]], device: torch.device, threads: int,
            steps: int, warmup: int, images: np.ndarray[Any, Any], workers: int,
            ks: list[int], batch: int = BATCH, precision: str = "auto",
            tflops_on_cpu: bool = False, min_steps: int = 4) -> dict[str, Any]:
    """Every figure for ``pairs`` on ``images`` (N x H x W x 3 uint8), printed as a table as it
    comes; returns the result object (``details`` holds ratios, the other level, the step's
    breakdown, TFLOP/s and the share of the bf16 peak on a known GPU). TFLOP/s are measured
    on CUDA (FlopCounterMode over one step), on CPU too with ``tflops_on_cpu``; no timing
    runs fewer than ``min_steps`` steps."""
    cuda = device.type == "cuda"
    tensor_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    auto_level = "stack" if cuda else "group"
    other_level = "group" if cuda else "stack"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None) if cuda else None

    result: dict[str, Any] = {"device": name, "threads": threads, "pairs": {}}
    extra: dict[str, Any] = {"fused_level": auto_level, "other_level": other_level,
                             "steps": steps, "batch": batch, "precision": precision,
                             "pairs": {}}
    print(f"device {result['device']}, {threads} threads, batch {batch}, "
          f"{steps} timed steps, fused level {auto_level}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ukd-bench-") as tmp:
        for pair_name, pair in pairs.items():
            engine = Engine(pair, tensor_images, device, threads, Path(tmp) / pair[1], batch,
                            precision)
            seeds = seeds_style(pair, images, device, max(min_steps, steps // 2), warmup, workers,
                                batch)
            single = engine.throughput(1, "group", steps, warmup)
            fused, other = {}, {}
            for size in ks:
                k_steps = max(min_steps, steps * 2 // size) if not cuda else steps
                fused[str(size)] = engine.throughput(size, auto_level, k_steps, warmup)
                if cuda or size == 4:
                    other[str(size)] = engine.throughput(size, other_level, k_steps, warmup)
            result["pairs"][pair_name] = {"seeds_style": seeds, "ukd_single": single,
                                          "ukd_fused": fused}
            info: dict[str, Any] = {
                "ukd_single_over_seeds": single / seeds,
                "fused_over_single": {k: v / single for k, v in fused.items()},
                f"ukd_fused_{other_level}": other,
                "breakdown_ms": engine.breakdown(max(min_steps, steps // 2)),
            }
            if cuda or tflops_on_cpu:
                tflops: dict[str, float] = {}
                for k, rate in [("1", single), *fused.items()]:
                    flops = engine.flops_per_step(int(k), auto_level if k != "1" else "group")
                    tflops[k] = flops * rate / (int(k) * batch) / 1e12
                info["tflops"] = tflops
                if peak:
                    info["bf16_peak_share"] = {k: v * 1e12 / peak for k, v in tflops.items()}
            extra["pairs"][pair_name] = info
            print(f"\n{pair_name}  (student-images/s)")
            print(f"  (a) seeds' style loop      {seeds:10.1f}")
            print(f"  (b) one ukd trial          {single:10.1f}   (b)/(a) = {single / seeds:.2f}")
            for k, v in fused.items():
                line = f"  (c) fused K={k:<2} {auto_level:<6}     {v:10.1f}   (c)/(b) = "
                line += f"{v / single:.2f}"
                if k in other:
                    line += f"   [{other_level}: {other[k]:.1f} = {other[k] / single:.2f}x]"
                print(line)
            print("  one ukd step: " + ", ".join(f"{k} {v:.1f} ms"
                                                for k, v in info["breakdown_ms"].items()))
            if "tflops" in info:
                print("  achieved TFLOP/s: " + ", ".join(
                    f"K={k} {v:.3g}" + (f" ({100 * info['bf16_peak_share'][k]:.1f}% of bf16 "
                                        "peak)" if peak else "")
                    for k, v in info["tflops"].items()))
            sys.stdout.flush()
    result["details"] = extra
    return result


# ------------------------------------------------------------------ (d) the 224-px ImageNet pair

IMAGENET_PAIR = ("resnet50", "resnet18")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagenet_pair(device: torch.device, threads: int, directory: Path, batch: int,
                  steps: int, warmup: int, images: int, k: int) -> dict[str, float]:
    """ResNet-50 -> ResNet-18 at 224 px with CoSS's neighbour batches (anchors followed by
    15 of their top-31 neighbours) and the ``mocov2`` augmentation, images held in memory as
    ``storage: memory`` holds a folder read at 224: one trial against a fused group of ``k``
    (CoSS / CoS, several lambda), in student-images per second."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (images, 3, 224, 224), generator=gen, dtype=torch.uint8)
    graph = neighbour_graph(torch.nn.functional.normalize(
        torch.randn(images, 64, generator=gen), dim=1), 31)
    mean = torch.tensor(IMAGENET_MEAN, device=device)
    std = torch.tensor(IMAGENET_STD, device=device)
    torch.manual_seed(0)
    frozen = FrozenTeacher(build_model(IMAGENET_PAIR[0])).to(device)
    out: dict[str, float] = {}
    for members, level in ((1, "group"), (k, "stack" if device.type == "cuda" else "group")):
        layout = memory_format(device, stacked=level == "stack")
        teacher = SharedTeacher(frozen.to(memory_format=layout))
        stream = BatchStream(pixels.to(device), None, mean, std, AUGMENT_PRESETS["mocov2"], 0,
                             batch, NeighbourBatches(15, 31), graph, layout)
        built = []
        for i in range(members):
            loss = ("coss", {"lambda": (1.0, 0.5, 2.0, 0.25)[i % 4]}) if i % 4 != 3 \
                else ("cos", {})
            t = TrialConfig(
                trial_id=f"in{members}-{i:02d}", index=i, sweep="benchmark",
                dataset=DatasetConfig("digits", labels=False),
                teacher=TeacherConfig("teacher", PretrainSource(
                    IMAGENET_PAIR[0], PretrainConfig(arch=IMAGENET_PAIR[0])), "imagenet"),
                student=StudentConfig(IMAGENET_PAIR[1]), loss=LossConfig.of(*loss),
                train=TrainConfig(epochs=25, batch_size=batch, lr=0.03, weight_decay=1e-4,
                                  augment="mocov2"),
                eval=EvalConfig(),
                runtime=RuntimeConfig(device.type, threads, str(directory / f"in{members}-{i}"),
                                      str(directory)))
            built.append(build_member(t, teacher=teacher, images=stream.images, labels=None,
                                      num_classes=1000, mean=mean, std=std, device=device,
                                      graphs=lambda size: graph, layout=layout))
        stacks, alone = plan_stacks(built) if level == "stack" else ([], built)
        for m in alone:
            m.begin_epoch(0)
        for s in stacks:
            s.begin_epoch(0)
        batches = stream.epoch(0)

        def step(_: int, stacks: Any = stacks, alone: Any = alone,
                 teacher: SharedTeacher = teacher, stream: BatchStream = stream) -> None:
            nonlocal batches
            batch_ = next(batches, None)
            if batch_ is None:
                batches = stream.epoch(1)
                batch_ = next(batches)
            teacher.new_step()
            for s in stacks:
                s.step(batch_, teacher)
            for m in alone:
                m.step(batch_, teacher)

        seconds = timed(device, steps, warmup, step)
        for m in built:
            m.check_finite(0)
        out["single" if members == 1 else f"fused_{members}"] = members * steps * batch / seconds
    return out




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default by device)")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=-1,
                        help="DataLoader workers of the seeds' loop (default by device)")
    parser.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--ks", nargs="*", type=int, default=[2, 4, 8])
    parser.add_argument("--imagenet-batch", type=int, default=0,
                        help="batch of the 224-px pair (default: 256 on CUDA, 16 on CPU: one "
                             "anchor group); 0 steps skip it")
    parser.add_argument("--imagenet-steps", type=int, default=-1,
                        help="timed steps of the 224-px pair (default: 20 on CUDA, 2 on CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    workers = args.workers if args.workers >= 0 else (min(8, os.cpu_count() or 1) if cuda
                                                      else args.threads)
    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3),
                                               dtype=np.uint8)
    result = measure({p: PAIRS[p] for p in args.pairs}, device, args.threads,
                     args.steps or (60 if cuda else 8), 10 if cuda else 2, images, workers,
                     args.ks)
    in_steps = args.imagenet_steps if args.imagenet_steps >= 0 else (20 if cuda else 2)
    if in_steps:
        in_batch = args.imagenet_batch or (256 if cuda else 16)
        with tempfile.TemporaryDirectory() as tmp:
            pair224 = imagenet_pair(device, args.threads, Path(tmp) / "imagenet", in_batch,
                                    in_steps, 3 if cuda else 1, max(4 * in_batch, 64), 4)
        result["imagenet_pair"] = {"pair": "->".join(IMAGENET_PAIR), "batch": in_batch,
                                   "steps": in_steps, **pair224,
                                   "fused_over_single": pair224["fused_4"] / pair224["single"]}
        print(f"\nresnet50->resnet18 at 224 px, CoSS neighbour batches of {in_batch}, "
              f"mocov2, {in_steps} timed steps (student-images/s)")
        print(f"  (b) one ukd trial          {pair224['single']:10.2f}")
        print(f"  (c) fused K=4              {pair224['fused_4']:10.2f}   (c)/(b) = "
              f"{pair224['fused_4'] / pair224['single']:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
