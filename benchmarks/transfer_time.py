"""Time of one transfer evaluation (eval.transfer, the seven CoSS datasets at 224 px) per
trial: measured rates on this machine, extrapolated to the datasets' sizes.

    OMP_NUM_THREADS=2 PYTHONPATH=. python3 benchmarks/transfer_time.py [--arch resnet18]

1. Features: ``--images`` generated images at each dataset's typical source size (CIFAR
   32 px, STL-10 96 px, Caltech-101 300 x 200, Pets 500 x 375, Flowers 500 x 667, DTD
   500 x 500; JPEG q 90 where the dataset ships JPEGs) through the evaluation's own decode
   (RGB, Resize(224, bicubic) + CenterCrop(224): orchestrator.data.transfer.decode) and the
   student's forward (``forward_features``) in batches of 32; images/s of each half.
2. Solver: one loss + gradient evaluation of all 45 problems
   (orchestrator.engine.logreg) at each dataset's real size (train split after validation,
   feature dim of the arch, its classes) on random features; and the evaluations a problem
   needs, counted by solving a 1,000-image problem with the same classes and dim (Gaussian
   class clusters; real features' counts differ: this is the estimate's weak part). Solver
   time = (sum over problems of evaluations) x (time of one evaluation / 45), plus the refit.
3. GPU extrapolation by arithmetic: the forward's FLOPs (fvcore-free: counted by hooks on
   the convolutions and linears) at ``--gpu-tflops`` effective (default 25: bf16 autocast in
   eager PyTorch, about 3,000 ResNet-50 images/s on an H100-class GPU), the decode at the
   measured per-core rate on ``--gpu-cores`` host cores, the solver's FLOPs (2 * 2 * n * K *
   (D + 1) per problem evaluation) at ``--gpu-tflops``. No GPU was at hand to check it.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from models import build_model
from orchestrator.data.transfer import decode
from orchestrator.engine.logreg import _evaluate, fit_logistic


@dataclass(frozen=True)
class Sizes:
    name: str
    train: int  # images the protocol reads for training (train + val)
    test: int
    classes: int
    source: tuple[int, int]  # width, height of a typical image
    jpeg: bool


# Split sizes: torchvision's splits (research note, section 2); Caltech-101: 30 per class.
DATASETS = (
    Sizes("cifar10", 50000, 10000, 10, (32, 32), False),
    Sizes("cifar100", 50000, 10000, 100, (32, 32), False),
    Sizes("stl10", 5000, 8000, 10, (96, 96), False),
    Sizes("caltech101", 3030, 5647, 101, (300, 200), True),
    Sizes("pets", 3680, 3669, 37, (500, 375), True),
    Sizes("flowers102", 2040, 6149, 102, (500, 667), True),
    Sizes("dtd", 3760, 1880, 47, (500, 500), True),
)


@dataclass(frozen=True)
class Generated:
    """Images of one size, as the split protocol of orchestrator.data.transfer expects."""

    pictures: list[bytes]
    jpeg: bool

    def __len__(self) -> int:
        return len(self.pictures)

    @property
    def labels(self) -> list[int]:
        return [0] * len(self.pictures)

    def image(self, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.pictures[index])).convert("RGB")


def _pictures(size: tuple[int, int], count: int, jpeg: bool, seed: int) -> Generated:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w, h = size
        small = rng.normal(120, 60, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)
        img = np.clip(small[:h, :w] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG" if jpeg else "PNG", quality=90)
        out.append(buf.getvalue())
    return Generated(out, jpeg)


def _flops(model: torch.nn.Module, size: int) -> float:
    """Multiply-adds x 2 of one image's forward, by hooks on Conv2d and Linear."""
    total = [0.0]

    def conv(module: torch.nn.Module, _: Any, out: torch.Tensor) -> None:
        assert isinstance(module, torch.nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total[0] += 2.0 * out[0].numel() * k

    def linear(module: torch.nn.Module, _: Any, out: torch.Tensor) -> None:
        assert isinstance(module, torch.nn.Linear)
        total[0] += 2.0 * out[0].numel() * module.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, size, size))  # type: ignore[operator]
    for h in hooks:
        h.remove()
    return total[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--gpu-tflops", type=float, default=25.0)
    parser.add_argument("--gpu-cores", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.arch, in_channels=3).eval()
    dim = int(model.forward_features(torch.zeros(1, 3, 32, 32)).shape[1])
    flops = _flops(model, args.size)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    rows: list[dict[str, Any]] = []
    print(f"{args.arch} ({dim}-d, {flops / 1e9:.2f} GFLOP an image at {args.size} px), "
          f"{torch.get_num_threads()} threads, {platform.machine()}")
    print(f"{'dataset':<11} {'decode/s':>9} {'fwd/s':>7} {'feat s':>8} {'evals':>7} "
          f"{'eval s':>7} {'solve s':>8} {'total min':>9} {'GPU s':>7}")
    for i, d in enumerate(DATASETS):
        images = _pictures(d.source, args.images, d.jpeg, i)
        start = time.perf_counter()
        batch = decode(images, range(len(images)), args.size, args.size)
        decode_s = (time.perf_counter() - start) / len(images)
        x = (batch.float() / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        with torch.no_grad():
            model.forward_features(x[:4])  # warm-up
            start = time.perf_counter()
            for s in range(0, len(x), 32):
                model.forward_features(x[s:s + 32])
            forward_s = (time.perf_counter() - start) / len(x)
        n_images = d.train + d.test
        features_s = n_images * (decode_s + forward_s)
        # Solver: a count of evaluations on a small problem, the cost of one at full size.
        n_fit = d.train - d.train // 5
        gen = torch.Generator().manual_seed(i)
        centres = torch.randn(d.classes, dim, generator=gen)
        y = torch.randint(0, d.classes, (1000,), generator=gen)
        small = centres[y] + 3.0 * torch.randn(1000, dim, generator=gen)
        fit = fit_logistic(small.abs(), y, d.classes, 1.0 / torch.logspace(-6, 5, 45),
                           max_iter=1000)
        evals = float(fit.evaluations.sum())  # problem-evaluations, line search included
        feats = torch.randn(n_fit, dim + 1).abs()
        labels = torch.randint(0, d.classes, (n_fit,))
        theta = torch.zeros(45, d.classes, dim + 1)
        lam = torch.full((45,), 1e-3)
        start = time.perf_counter()
        _evaluate(theta, feats, labels, lam, d.classes, 1 << 25)
        eval_s = time.perf_counter() - start
        refit = evals / 45 * eval_s / 45 * d.train / n_fit  # one problem, mean evaluations
        solve_s = evals * eval_s / 45 + refit
        total = features_s + solve_s
        solver_flops = (evals + evals / 45) * 4.0 * n_fit * d.classes * (dim + 1)
        gpu_s = (max(n_images * decode_s / args.gpu_cores,
                     n_images * flops / (args.gpu_tflops * 1e12))
                 + solver_flops / (args.gpu_tflops * 1e12))
        rows.append({"dataset": d.name, "images": n_images, "decode_img_s": 1 / decode_s,
                     "forward_img_s": 1 / forward_s, "features_s": features_s,
                     "solver_evaluations": evals, "evaluation_s": eval_s,
                     "solver_s": solve_s, "cpu_total_s": total, "gpu_estimate_s": gpu_s})
        print(f"{d.name:<11} {1 / decode_s:9.1f} {1 / forward_s:7.1f} {features_s:8.0f} "
              f"{evals:7.0f} {eval_s:7.2f} {solve_s:8.0f} {total / 60:9.1f} {gpu_s:7.1f}")
    cpu = sum(r["cpu_total_s"] for r in rows)
    gpu = sum(r["gpu_estimate_s"] for r in rows)
    print(f"all seven: {cpu / 3600:.2f} h on this CPU, about {gpu / 60:.1f} min on a GPU "
          f"({args.gpu_tflops:g} TFLOP/s effective, decode on {args.gpu_cores} cores)")
    print(json.dumps({"arch": args.arch, "size": args.size, "threads": torch.get_num_threads(),
                      "datasets": rows, "cpu_total_s": cpu, "gpu_estimate_s": gpu}))


if __name__ == "__main__":
    main()
