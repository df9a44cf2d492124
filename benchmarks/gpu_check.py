"""One command that tells whether ukd's GPU path works on this machine, and how fast.

    PYTHONPATH=. python benchmarks/gpu_check.py                    # CUDA when there is one
    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --quick   # CI: same code, tiny

It needs torch and torchvision only, and a copy of the working tree on PYTHONPATH (ukd's
models/, losses/ and trial engine; no Ray, MLflow, pydantic, typer or PyYAML). Synthetic
CIFAR-shaped data, a randomly initialised teacher, CoSS students that differ in lambda and lr,
``precision: auto`` (bf16 autocast on CUDA, fp32 on CPU: CPU bf16 is tested by
tests/orchestrator/test_cpu_gpu_paths.py, and is ten times slower than fp32 on CPUs without
native bf16, like the 2-core CI machine's). Checks, each with a
verdict ``pass``, ``fail`` or ``n/a`` (cannot run on this device):

- ``fused_group``: K members stepping in one group (one batch stream, one teacher pass) give
  the loss terms each gives alone, step by step (tolerance below: same kernels, but cuDNN's
  benchmarked algorithms and atomics may round differently between runs);
- ``stacked``: the stacked level (torch.func vmap) against the member path over 20 steps
  (4 in ``--quick``) within bf16 tolerance (other kernels, rounding grows with the steps);
- ``non_finite``: with the deferred non-finite check (every 25 steps as on CUDA; 3 in
  ``--quick``), a member whose weights go non-finite between two checks (one mid-epoch, one
  after the epoch's last check) fails alone, naming its epoch; the others finish finite; at
  the group and the stacked level;
- ``memory_cap`` (CUDA): in a child process capped at a quarter of the GPU
  (orchestrator/engine/device.py ``cap_memory``), an allocation within the share succeeds, and in a
  group of two the member that asks for more than its share fails with CUDA's out-of-memory
  error while the other finishes its epoch;
- ``gpu_decode`` (CUDA): nvJPEG (``torchvision.io.decode_jpeg([...], device="cuda")``, the
  batched call ukd makes) against libjpeg-turbo on the CPU, on one generated image coded
  with 4:4:4 and with 4:2:0 chroma: two conforming decoders agree to within the IDCT's
  accuracy (IEEE 1180: about one grey level; PSNR >= 40 dB, mean absolute difference <= 1
  level) in RGB at 4:4:4 and in luma at 4:2:0 (the standard leaves chroma upsampling to the
  decoder; the 4:2:0 RGB agreement is reported);
- ``augment_devices`` (CUDA): the ``mocov2`` view's batched crops on the GPU equal one
  resize per view within one grey level, and its photometric half, drawn from one CPU
  generator, equals the CPU's to float rounding (2e-3);
- ``stream_ahead`` (CUDA): a streamed folder's batches made ahead by the finisher thread on
  a side stream (both ``dataset.decode`` routes, and both at once with ``gpu_share``) equal
  those made when read;
- ``compile`` (not in ``--quick``: inductor's C++ compile takes minutes on a small CPU): a
  ``train.compile`` member (CUDA graphs on CUDA) steps with finite loss terms within bf16
  tolerance of the eager member.

Figures: benchmarks/trial_throughput.py's (seeds' style loop, one trial, fused K = 2, 4, 8 at
both levels, where a step's time goes, TFLOP/s and the share of the bf16 peak on a known GPU),
and the data pipeline's (JPEG decode + RandomResizedCrop images/s on CPU and on CUDA, ukd's
batched tensor augmentation images/s). The last line is one JSON object with every verdict and
every figure; the exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks import trial_throughput as tt
from benchmarks.augment_throughput import tensor_path
from orchestrator.data.batches import Batch, BatchStream
from orchestrator.engine.device import cap_memory
from orchestrator.engine.group import CHECK_EVERY_CUDA, train_epoch
from orchestrator.engine.member import Member, failing_as
from orchestrator.engine.stacked import Stack, plan_stacks

ROOT = Path(__file__).resolve().parents[1]
PASS, FAIL, NA = "pass", "fail", "n/a"
# Loss terms, step by step (rtol, atol). bf16 keeps 8 significant bits (a relative rounding of
# 2^-9 = 2e-3 per operation): the group level runs the same kernels as a member alone, so
# only run-to-run rounding (cuDNN algorithms, atomics) enters; the stacked level runs other
# kernels and its differences grow with every SGD step.
TOLERANCE = {"fused_group": (2e-2, 1e-3), "stacked": (5e-2, 1e-3), "compile": (5e-2, 1e-3)}
DECODE_MIN_PSNR_DB = 40.0
DECODE_MAX_MEAN_ABS = 1.0
MEMORY_SHARE = 0.25  # resources.gpu of the memory-cap check's child process
HOG_SHARE = 0.3  # of the GPU's memory, what the greedy member asks for (> its cap)


@dataclass(frozen=True)
class Settings:
    device: str
    quick: bool
    pair: tuple[str, str]  # teacher, student of the checks
    size: int  # image side
    images: int  # synthetic training images
    batch: int
    steps: int  # compared steps (fused_group, stacked, compile)
    k: int  # members in fused_group and stacked
    check_every: int  # steps between non-finite checks
    threads: int

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return self.images // self.batch


def settings(device: str, quick: bool, threads: int) -> Settings:
    if quick:  # 4 steps of 16 images (16 px) an epoch, checks every 3 steps
        return Settings(device, True, ("resnet20", "resnet8x4"), 16, 64, 16, 4, 2, 3, threads)
    return Settings(device, False, tt.PAIRS["resnet32x4->resnet8x4"], 32, 4096, 128, 20, 3,
                    CHECK_EVERY_CUDA, threads)


def synthetic_images(s: Settings, seed: int = 0) -> np.ndarray[Any, Any]:
    """N x H x W x 3 uint8, as trial_throughput's."""
    return np.random.default_rng(seed).integers(0, 256, (s.images, s.size, s.size, 3),
                                                dtype=np.uint8)


def engine(s: Settings, directory: Path, compile: bool = False) -> tt.Engine:
    images = torch.from_numpy(synthetic_images(s)).permute(0, 3, 1, 2).contiguous()
    return tt.Engine(s.pair, images, s.torch_device, s.threads, directory, s.batch, "auto",
                     compile)


def batches(stream: BatchStream, steps: int) -> Iterator[Batch]:
    """``steps`` batches, across epochs."""
    epoch, done = 0, 0
    while True:
        for batch in stream.epoch(epoch):
            if done == steps:
                return
            yield batch
            done += 1
        epoch += 1


def run_steps(eng: tt.Engine, members: list[Member], level: str, steps: int) -> Tensor:
    """``steps`` steps of ``members`` at ``level`` (``stack`` or members one by one with one
    teacher pass per step); (steps, K, 1 + terms) loss terms, on the CPU."""
    stacks, alone = plan_stacks(members) if level == "stack" else ([], members)
    if level == "stack" and (alone or len(stacks) != 1):
        raise RuntimeError("the members do not stack")
    for m in alone:
        m.begin_epoch(0)
    for stack in stacks:
        stack.begin_epoch(0)
    out = []
    for batch in batches(eng.stream, steps):
        eng.teacher.new_step()
        for stack in stacks:
            stack.step(batch, eng.teacher)
        for m in alone:
            m.step(batch, eng.teacher)
        out.append(torch.stack([m.last_terms for m in members if m.last_terms is not None]))
    return torch.stack(out).float().cpu()


def compare(got: Tensor, want: Tensor, tolerance: tuple[float, float]) -> dict[str, Any]:
    rtol, atol = tolerance
    finite = bool(torch.isfinite(got).all() and torch.isfinite(want).all())
    diff = ((got - want).abs() / (want.abs() + atol)).max().item() if finite else math.inf
    ok = finite and torch.allclose(got, want, rtol=rtol, atol=atol)
    return {"verdict": PASS if ok else FAIL, "max_rel_diff": diff, "rtol": rtol, "atol": atol,
            "steps": int(got.shape[0]), "members": int(got.shape[1])}


# ----------------------------------------------------------------------------- checks


def check_fused_group(s: Settings, tmp: Path) -> dict[str, Any]:
    eng = engine(s, tmp / "fused")
    together = run_steps(eng, eng.members(s.k, "group", tmp / "fused" / "group"), "group",
                         s.steps)
    alone = torch.cat([run_steps(eng, [m], "group", s.steps)
                       for m in eng.members(s.k, "group", tmp / "fused" / "alone")], dim=1)
    return compare(together, alone, TOLERANCE["fused_group"])


def watch_dtypes(members: list[Member]) -> dict[str, set[str]]:
    """The output dtypes of the members' Conv2d and Linear modules, by kind, from now on (a
    plain function as the hook: the stack's template, a deepcopy of a member, shares it)."""
    seen: dict[str, set[str]] = {}

    def hook(module: torch.nn.Module, inputs: Any, output: Tensor) -> None:
        seen.setdefault(type(module).__name__, set()).add(str(output.dtype))

    for m in members:
        for module in [*m.student.modules(), *m.objective.modules()]:
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.register_forward_hook(hook)
    return seen


def check_stacked(s: Settings, tmp: Path) -> dict[str, Any]:
    """Also which dtypes the vmapped forward computes in: on CUDA its convolutions must run
    in bf16 (CUDA's autocast casts aten::convolution, which vmap's batching rule calls; CPU's
    does not, and ``auto`` is fp32 on CPU anyway)."""
    eng = engine(s, tmp / "stacked")
    together = eng.members(s.k, "stack", tmp / "stacked" / "s")
    dtypes = watch_dtypes(together)
    stacked = run_steps(eng, together, "stack", s.steps)
    # the member path with the stack's layout (run_group's: contiguous on CPU)
    members = run_steps(eng, eng.members(s.k, "stack", tmp / "stacked" / "m"), "group",
                        s.steps)
    result = compare(stacked, members, TOLERANCE["stacked"])
    result["stacked_dtypes"] = {k: sorted(v) for k, v in dtypes.items()}
    if s.torch_device.type == "cuda" and dtypes.get("Conv2d") != {str(torch.bfloat16)}:
        result["verdict"] = FAIL
        result["why"] = "the stacked convolutions did not run in bf16 under autocast"
    return result


@dataclass
class _PoisoningStream(BatchStream):
    """The batch stream, with a hook run before each batch is handed out (between steps)."""

    before: Callable[[int, int], None] = lambda epoch, step: None

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for batch in super().epoch(epoch):
            self.before(epoch, batch.step)
            yield batch


def _poison(tensors: list[Tensor]) -> None:
    with torch.no_grad():
        for t in tensors:
            t.fill_(float("nan"))


def non_finite_at(s: Settings, eng: tt.Engine, level: str, tmp: Path) -> dict[str, Any]:
    """Three members, two epochs; in epoch 2 member 0's weights go non-finite right after a
    check (found mid-epoch by the next one), member 1's after the epoch's last check (found
    at the epoch's end), member 2 goes on. The engine's own loop (group.train_epoch) and
    epoch-end check."""
    members = eng.members(3, level, tmp / f"nonfinite_{level}")
    per_epoch = s.steps_per_epoch
    last_check = (per_epoch // s.check_every) * s.check_every - 1
    when = {members[0].trial_id: 0, members[1].trial_id: last_check + 1}
    if last_check < 0 or when[members[1].trial_id] >= per_epoch:
        raise RuntimeError(f"{per_epoch} steps an epoch leave no step between checks")
    stacks: list[Stack] = []
    alone: list[Member] = []

    def before(epoch: int, step: int) -> None:
        if epoch != 1:
            return
        for stack in stacks:
            for i, m in enumerate(stack.members):
                if when.get(m.trial_id) == step:
                    _poison([p[i] for p in stack.params.values()])
        for m in alone:
            if when.get(m.trial_id) == step:
                _poison(list(m.student.parameters()))

    stream = _PoisoningStream(**{f: getattr(eng.stream, f) for f in
                                 BatchStream.__dataclass_fields__}, before=before)
    for epoch in range(2):
        running = [m for m in members if m.active]
        stacks[:], alone[:] = plan_stacks(running) if level == "stack" else ([], running)
        lrs = {m.trial_id: m.begin_epoch(epoch) for m in alone}
        for stack in stacks:
            stack.begin_epoch(epoch)
        train_epoch(stream, eng.teacher, stacks, alone, epoch, s.check_every)
        for stack in stacks:
            stack.unstack()
            lrs.update({m.trial_id: m.optimizer.param_groups[0]["lr"] for m in stack.members})
        for m in running:
            if m.active:
                with failing_as(m, epoch):
                    m.end_epoch(epoch, lrs[m.trial_id])
    failures = {m.trial_id: m.failure for m in members}
    bad_ok = all((f := failures[tid]) is not None and f.reason.startswith("non-finite")
                 and f.epoch == 2 for tid in when)
    good_ok = all(m.active for m in members if m.trial_id not in when)
    return {"verdict": PASS if bad_ok and good_ok else FAIL,
            "failures": {tid: None if f is None else f"epoch {f.epoch}: {f.reason}"
                         for tid, f in failures.items()},
            "poisoned_at_step": sorted(when.values()), "check_every": s.check_every,
            "steps_per_epoch": per_epoch}


def check_non_finite(s: Settings, tmp: Path) -> dict[str, Any]:
    eng = engine(s, tmp / "nonfinite")
    levels = {level: non_finite_at(s, eng, level, tmp) for level in ("group", "stack")}
    ok = all(v["verdict"] == PASS for v in levels.values())
    return {"verdict": PASS if ok else FAIL, **levels}


def check_memory_cap(s: Settings, tmp: Path) -> dict[str, Any]:
    """In a child process, so that the cap does not hold for the rest of the checks."""
    if s.torch_device.type != "cuda":
        return {"verdict": NA, "why": "no CUDA device"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-cap-child",
         json.dumps(asdict(s)), str(tmp / "memcap")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return {"verdict": FAIL, "why": f"child exited {child.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def memory_cap_child(s: Settings, directory: Path) -> dict[str, Any]:
    device = s.torch_device
    index = device.index if device.index is not None else torch.cuda.current_device()
    fraction = cap_memory(device, MEMORY_SHARE)
    total = torch.cuda.mem_get_info(index)[1]
    if fraction is None:
        return {"verdict": FAIL, "why": "cap_memory set no cap"}
    within = torch.empty(int(0.9 * fraction * total), dtype=torch.uint8, device=device)
    del within
    torch.cuda.empty_cache()
    eng = engine(s, directory)
    members = eng.members(2, "group", directory)
    greedy, modest = members
    real_step = greedy.step

    def greedy_step(batch: Batch, teacher: Any) -> None:
        hog = torch.empty(int(HOG_SHARE * total), dtype=torch.uint8, device=device)
        del hog
        real_step(batch, teacher)

    setattr(greedy, "step", greedy_step)  # noqa: B010 -- this member only
    lrs = {m.trial_id: m.begin_epoch(0) for m in members}
    train_epoch(eng.stream, eng.teacher, [], members, 0, s.check_every)
    for m in members:
        if m.active:
            with failing_as(m, 0):
                m.end_epoch(0, lrs[m.trial_id])
    reason = greedy.failure.reason if greedy.failure else None
    ok = (reason is not None and "OutOfMemoryError" in reason and modest.active
          and modest.last_terms is not None and bool(torch.isfinite(modest.last_terms).all()))
    return {"verdict": PASS if ok else FAIL, "fraction": fraction,
            "total_gib": total / 2**30, "greedy_member": reason,
            "other_member": "finished the epoch" if modest.active else str(modest.failure)}


def generated_jpeg(side: int, seed: int, quality: int = 90) -> Tensor:
    """A smooth colour image (sums of sinusoids and a little noise) encoded by libjpeg."""
    from torchvision.io import encode_jpeg

    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    phase = torch.rand(3, generator=gen) * 6.28
    freq = 2 + torch.rand(3, generator=gen) * 6
    channels = [torch.sin(freq[c] * 6.28 * (x + y * (c + 1) / 3) + phase[c]) for c in range(3)]
    image = torch.stack(channels) * 100 + 128 + torch.randn(3, side, side, generator=gen) * 4
    encoded: Tensor = encode_jpeg(image.clamp(0, 255).to(torch.uint8), quality=quality)
    return encoded


def _pil_jpeg(image: Tensor, subsampling: int, quality: int = 90) -> Tensor:
    """``image`` (3 x H x W uint8) as a JPEG by Pillow's libjpeg with the given chroma
    subsampling (0: 4:4:4, 2: 4:2:0)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality,
                                                         subsampling=subsampling)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _agreement(a: Tensor, b: Tensor) -> dict[str, float]:
    diff = (a.float() - b.float()).abs()
    mse = float((diff ** 2).mean())
    return {"psnr_db": math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse),
            "mean_abs": float(diff.mean()), "max_abs": float(diff.max())}


def _luma(rgb: Tensor) -> Tensor:
    """JFIF's Y of an RGB image: the decoders' shared luma plane, whatever their chroma."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (rgb.float() * weights).sum(0)


def check_gpu_decode(s: Settings, tmp: Path) -> dict[str, Any]:
    """nvJPEG against libjpeg-turbo (torchvision's CPU decode) on one generated image coded
    twice. With full-resolution chroma (4:4:4) the two decoders must agree in RGB; with
    4:2:0 (ImageNet's) they must agree in luma -- the JPEG standard leaves the upsampling of
    subsampled chroma to the decoder (libjpeg-turbo interpolates, the hardware decoder that
    torchvision's batched nvJPEG uses need not), so their RGB is reported, not checked."""
    from torchvision.io import decode_jpeg

    if s.torch_device.type != "cuda":
        return {"verdict": NA, "why": "nvJPEG needs a CUDA device"}
    image = decode_jpeg(generated_jpeg(256, 0, quality=100))
    out: dict[str, Any] = {"min_psnr_db": DECODE_MIN_PSNR_DB, "max_mean_abs": DECODE_MAX_MEAN_ABS}
    ok = True
    for name, subsampling in (("444", 0), ("420", 2)):
        data = _pil_jpeg(image, subsampling)
        cpu = decode_jpeg(data)
        gpu = decode_jpeg([data], device=s.torch_device)[0].cpu()  # the batched call ukd makes
        if cpu.shape != gpu.shape:
            return {"verdict": FAIL, "why": f"{name}: shapes {tuple(cpu.shape)} != "
                                            f"{tuple(gpu.shape)}"}
        rgb, luma = _agreement(cpu, gpu), _agreement(_luma(cpu), _luma(gpu))
        out[f"rgb_{name}"], out[f"luma_{name}"] = rgb, luma
        checked = rgb if subsampling == 0 else luma
        ok = ok and checked["psnr_db"] >= DECODE_MIN_PSNR_DB \
            and checked["mean_abs"] <= DECODE_MAX_MEAN_ABS
    return {"verdict": PASS if ok else FAIL, **out}


def check_augment_devices(s: Settings, tmp: Path) -> dict[str, Any]:
    """The ``mocov2`` view's two halves on CUDA against the CPU: the batched resized crops
    (models.augment.resized_crops) against one ``crop_resize_flip`` per view on the GPU
    (within one grey level), and the photometric half with its draws from one CPU
    generator (the same parameters on either device) against the CPU's (float rounding)."""
    from models.augment import AUGMENT_PRESETS, crop_resize_flip, photometric, resized_crops
    from orchestrator.data.folders import _geometry

    if s.torch_device.type != "cuda":
        return {"verdict": NA, "why": "compares CUDA with the CPU"}
    cfg = AUGMENT_PRESETS["mocov2"]
    gen = torch.Generator().manual_seed(0)
    shapes = [(375, 500), (500, 375), (333, 500), (375, 500), (480, 640), (200, 300)]
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
              .to(s.torch_device) for h, w in shapes]
    drawn = [_geometry(h, w, cfg, 7 * i + k) for i, (h, w) in enumerate(shapes)
             for k in range(2)]
    owners = [i for i in range(len(shapes)) for _ in range(2)]
    boxes, flips = [d[0] for d in drawn], [d[1] for d in drawn]
    got = resized_crops(images, owners, boxes, flips, 224)
    want = torch.stack([crop_resize_flip(images[o].float(), b, 224, f)
                        for o, b, f in zip(owners, boxes, flips, strict=True)])
    crop_diff = (got.float() - want.round().clamp(0, 255)).abs()
    on_gpu = photometric(got, cfg, torch.Generator().manual_seed(1)).cpu()
    on_cpu = photometric(got.cpu(), cfg, torch.Generator().manual_seed(1))
    photo_diff = float((on_gpu - on_cpu).abs().max())
    ok = float(crop_diff.max()) <= 1 and photo_diff <= 2e-3
    return {"verdict": PASS if ok else FAIL, "crop_max_abs": float(crop_diff.max()),
            "crop_share_off": float((crop_diff > 0).float().mean()),
            "photometric_max_abs": photo_diff}


def check_stream_ahead(s: Settings, tmp: Path) -> dict[str, Any]:
    """A streamed folder's batches made ahead by the finisher thread on a side stream
    (orchestrator.data.folders ``_finish``: nvJPEG's decode and the crops for ``decode:
    gpu``, the copy of the workers' batch for ``decode: cpu``, both for half of each batch
    with ``gpu_share: 0.5``) against the same batches made when read, on the caller's
    stream: the crops equal, the normalised views equal to float
    rounding (the blur's cuDNN algorithm may differ between calls)."""
    if s.torch_device.type != "cuda":
        return {"verdict": NA, "why": "the finisher thread runs for CUDA devices"}
    from models.augment import AUGMENT_PRESETS
    from orchestrator.data.folders import Decode, FolderImages, as_tensor

    folder = tmp / "stream_ahead"
    folder.mkdir(exist_ok=True)
    files = []
    for i in range(40):  # 5 sizes: the batched crops group images by size
        path = folder / f"{i:03d}.jpg"
        path.write_bytes(generated_jpeg(96 + 16 * (i % 5), i).numpy().tobytes())
        files.append(str(path))
    zeros, ones = torch.zeros(3), torch.ones(3)
    out: dict[str, Any] = {}
    ok = True
    for route, share in (("gpu", 1.0), ("cpu", 1.0), ("gpu_share_0.5", 0.5)):
        made = {}
        for ahead in (True, False):
            images = FolderImages(tuple(files), Decode(72, 64), depth=2,
                                  device=s.torch_device, gpu_decode=route != "cpu",
                                  gpu_share=share, finish_ahead=ahead)
            stream = BatchStream(as_tensor(images), None, zeros, ones,
                                 AUGMENT_PRESETS["mocov2"], seed=5, batch_size=16, num_views=2)
            made[ahead] = [(b.geometric(2).cpu(), b.view(0).cpu()) for b in stream.epoch(1)]
        pairs = list(zip(made[True], made[False], strict=True))
        crops_equal = all(torch.equal(a[0], b[0]) for a, b in pairs)
        view_diff = max(float((a[1] - b[1]).abs().max()) for a, b in pairs)
        out[route] = {"batches": len(pairs), "crops_equal": crops_equal,
                      "view_max_abs": view_diff}
        ok = ok and crops_equal and view_diff <= 1e-5
    return {"verdict": PASS if ok else FAIL, **out}


def check_compile(s: Settings, tmp: Path) -> dict[str, Any]:
    if s.quick:
        return {"verdict": NA, "why": "--quick (inductor's compile takes minutes on a CPU)"}
    steps = s.steps
    eager = engine(s, tmp / "eager")
    want = run_steps(eager, eager.members(1, "group"), "group", steps)
    compiled = engine(s, tmp / "compiled", compile=True)
    got = run_steps(compiled, compiled.members(1, "group"), "group", steps)
    return compare(got, want, TOLERANCE["compile"])


CHECKS: dict[str, Callable[[Settings, Path], dict[str, Any]]] = {
    "memory_cap": check_memory_cap,  # first: the GPU's memory is still free
    "fused_group": check_fused_group,
    "stacked": check_stacked,
    "non_finite": check_non_finite,
    "gpu_decode": check_gpu_decode,
    "augment_devices": check_augment_devices,
    "stream_ahead": check_stream_ahead,
    "compile": check_compile,
}


# ----------------------------------------------------------------------------- figures


def data_pipeline(s: Settings) -> dict[str, float]:
    """JPEG decode + RandomResizedCrop (ImageNet's training crop) images/s, on the CPU (one
    image after another, as a DataLoader worker) and on CUDA (nvJPEG, a batch at once); and
    ukd's batched tensor augmentation (the ``ssl`` preset) of CIFAR-shaped uint8 images."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2

    side, crop, count = (96, 64, 8) if s.quick else (400, 224, 256)
    files = [generated_jpeg(side, i) for i in range(count)]
    rrc = v2.RandomResizedCrop(crop, antialias=True)
    out: dict[str, float] = {}

    def cpu_pass() -> None:
        for data in files:
            rrc(decode_jpeg(data))

    cpu_pass()  # warm-up
    start = time.perf_counter()
    cpu_pass()
    out["decode_crop_cpu_images_per_s"] = count / (time.perf_counter() - start)
    device = s.torch_device
    if device.type == "cuda":
        def gpu_pass() -> None:
            for image in decode_jpeg(files, device=device):
                rrc(image)
            torch.cuda.synchronize(device)

        gpu_pass()
        start = time.perf_counter()
        gpu_pass()
        out["decode_crop_cuda_images_per_s"] = count / (time.perf_counter() - start)
    n, batch = (256, 64) if s.quick else (16384, 512)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device)
    mean = torch.full((3,), 0.5, device=device)
    std = torch.full((3,), 0.25, device=device)
    tensor_path(images[:batch], batch, mean, std)  # warm-up
    out["augment_images_per_s"] = tensor_path(images, batch, mean, std)
    print(f"\ndata pipeline ({side}px JPEG -> RandomResizedCrop {crop}): "
          + ", ".join(f"{k} {v:.0f}" for k, v in out.items()), flush=True)
    return out


def throughput(s: Settings) -> dict[str, Any]:
    device = s.torch_device
    cuda = device.type == "cuda"
    if s.quick:
        return tt.measure({"resnet20->resnet8x4": ("resnet20", "resnet8x4")}, device,
                          s.threads, steps=2, warmup=1, images=synthetic_images(s),
                          workers=0, ks=[2], batch=s.batch, tflops_on_cpu=True, min_steps=1)
    images = np.random.default_rng(0).integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1) if cuda else s.threads
    return tt.measure(tt.PAIRS, device, s.threads, 60 if cuda else 8, 10 if cuda else 2,
                      images, workers, [2, 4, 8], tflops_on_cpu=True)


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (CI on CPU): the code paths, not the figures")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--only", nargs="+", choices=tuple(CHECKS),
                        help="run these checks alone, without the figures")
    parser.add_argument("--memory-cap-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_cap_child:
        s = Settings(**{**json.loads(args.memory_cap_child[0])})
        s = replace(s, pair=tuple(s.pair))  # type: ignore[arg-type]
        print(json.dumps(memory_cap_child(s, Path(args.memory_cap_child[1]))))
        return 0
    torch.set_num_threads(args.threads)
    s = settings(args.device, args.quick, args.threads)
    if s.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as run_group sets it
    started = time.perf_counter()
    name = torch.cuda.get_device_name(s.torch_device) if args.device == "cuda" else "cpu"
    print(f"ukd GPU check on {name} ({'quick' if s.quick else 'full'}; torch "
          f"{torch.__version__}), pair {s.pair[0]}->{s.pair[1]}, {s.size} px, batch {s.batch}",
          flush=True)
    checks: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ukd-gpu-check-") as tmp:
        for check, run in CHECKS.items():
            if args.only and check not in args.only:
                continue
            t0 = time.perf_counter()
            try:
                checks[check] = run(s, Path(tmp))
            except Exception as exc:  # a check that crashes fails; the others still run
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                checks[check] = {"verdict": FAIL, "why": f"{type(exc).__name__}: {first}"}
            checks[check]["wall_s"] = time.perf_counter() - t0
            detail = {k: v for k, v in checks[check].items()
                      if k not in ("verdict", "group", "stack")}
            print(f"check {check:<12} {checks[check]['verdict']:<5} {json.dumps(detail)}",
                  flush=True)
    figures = {} if args.only else {"data_pipeline": data_pipeline(s),
                                    "trial_throughput": throughput(s)}
    verdicts = {k: v["verdict"] for k, v in checks.items()}
    failed = [k for k, v in verdicts.items() if v == FAIL]
    print(f"\nverdicts: {json.dumps(verdicts)}; wall {time.perf_counter() - started:.1f} s")
    print(json.dumps({"device": name, "quick": s.quick, "torch": torch.__version__,
                      "verdicts": verdicts, "ok": not failed, "checks": checks,
                      "figures": figures, "wall_s": time.perf_counter() - started}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
