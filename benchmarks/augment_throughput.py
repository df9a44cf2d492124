"""Data-path benchmark: batched tensor augmentation vs torchvision's per-sample PIL pipeline.

Prints images/s for both on the same images and the ratio (the reference runs in the same
process, so the figure is comparable across machines). Usage:
    .venv/bin/python benchmarks/augment_throughput.py [--device cuda] [--images 4096]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from models.augment import AUGMENT_PRESETS, augment, normalise


def tensor_path(images: torch.Tensor, batch: int, mean: torch.Tensor, std: torch.Tensor) -> float:
    cfg = AUGMENT_PRESETS["ssl"]
    start = time.perf_counter()
    for i in range(0, images.shape[0], batch):
        normalise(augment(images[i:i + batch], cfg), mean, std)
    if images.is_cuda:
        torch.cuda.synchronize()
    return float(images.shape[0]) / (time.perf_counter() - start)


def pil_path(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> float:
    size = images.shape[1]
    pipeline = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    start = time.perf_counter()
    for img in images:
        pipeline(Image.fromarray(img))
    return float(images.shape[0]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8)
    mean_t, std_t = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    device = torch.device(args.device)
    mean, std = torch.tensor(mean_t, device=device), torch.tensor(std_t, device=device)
    on_device = data.to(device)
    tensor_path(on_device[: args.batch], args.batch, mean, std)  # warm-up
    fast = tensor_path(on_device, args.batch, mean, std)
    slow = pil_path(data.permute(0, 2, 3, 1).numpy(), mean_t, std_t)
    print(f"device {device}, {args.images} images {args.size}x{args.size}, threads "
          f"{torch.get_num_threads()}")
    print(f"batched tensor augmentation: {fast:12.0f} images/s")
    print(f"torchvision PIL per sample:  {slow:12.0f} images/s")
    print(f"ratio tensor / PIL:          {fast / slow:12.1f}x")


if __name__ == "__main__":
    main()
