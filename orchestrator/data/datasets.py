"""Datasets as tensors: each split is one uint8 tensor (N x C x H x W) plus int64 labels.

- ``digits``: scikit-learn's bundled handwritten digits (1,797 images, 10 classes), upsampled
  from 8x8 to 16x16, one channel; a fixed stratified 80/20 split. Ships with the package:
  the offline default.
- ``cifar10`` / ``cifar100``: torchvision's loaders (``root``, ``download``). Offline, a
  missing copy is a clear error saying where the files go.
Nothing downloads at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.errors import UserInputError


@dataclass(frozen=True)
class Split:
    images: Tensor  # uint8, N x C x H x W
    labels: Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class DatasetBundle:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: Tensor  # per channel, 0..1 scale
    std: Tensor


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    has_labels: bool
    needs_root: bool
    loader: Callable[[str | None, bool], DatasetBundle]
    description: str
    train_size: int  # images in the training split (what an epoch is counted in)


def _digits(root: str | None, download: bool) -> DatasetBundle:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32))[:, None] / 16.0  # N x 1 x 8 x 8
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(data.target.astype(np.int64))
    # Fixed stratified split: every 5th image of each class goes to the test set.
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=gen)
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        members = order[labels[order] == c]
        test_mask[members[::5]] = True
    train = Split(images[~test_mask].contiguous(), labels[~test_mask].contiguous())
    test = Split(images[test_mask].contiguous(), labels[test_mask].contiguous())
    mean, std = _stats(train.images)
    return DatasetBundle("digits", train, test, 10, mean, std)


def _stats(images: Tensor) -> tuple[Tensor, Tensor]:
    x = images.float() / 255.0
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp(min=1e-3)


_CIFAR_FILES = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def cifar_missing_message(name: str, root: str | None) -> str:
    where = Path(root or "data").resolve()
    return (
        f"{name} is not in {where}: put the extracted {_CIFAR_FILES[name]}/ folder there "
        f"(from {_CIFAR_ARCHIVES[name]}), or set dataset.download: true on a machine with "
        "internet access"
    )


def _cifar(name: str) -> Callable[[str | None, bool], DatasetBundle]:
    def load(root: str | None, download: bool) -> DatasetBundle:
        from torchvision import datasets

        cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
        base = str(Path(root or "data").resolve())
        try:
            train_set = cls(base, train=True, download=download)
            test_set = cls(base, train=False, download=download)
        except (RuntimeError, OSError) as exc:  # missing files, or no network to download
            raise UserInputError(f"{cifar_missing_message(name, root)} ({exc})") from None

        def split(ds: datasets.CIFAR10) -> Split:
            images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            return Split(images, torch.tensor(ds.targets, dtype=torch.int64))

        mean, std = (torch.tensor(v) for v in _CIFAR_STATS[name])
        classes = 10 if name == "cifar10" else 100
        return DatasetBundle(name, split(train_set), split(test_set), classes, mean, std)

    return load


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, 1, 16, True, False, _digits,
                          "scikit-learn handwritten digits, 16x16 grey, 1437 train / 360 test",
                          1437),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, True, True, _cifar("cifar10"),
                           "CIFAR-10 through torchvision (root, download)", 50000),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, True, True, _cifar("cifar100"),
                            "CIFAR-100 through torchvision (root, download)", 50000),
}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def check_available(name: str, root: str | None, download: bool) -> None:
    """Fail before anything starts when a dataset that needs files has none (and no download)."""
    info = DATASETS[name]
    if not info.needs_root or download:
        return
    folder = Path(root or "data").resolve() / _CIFAR_FILES[name]
    if not folder.is_dir():
        raise UserInputError(cifar_missing_message(name, root))


@lru_cache(maxsize=4)
def load_dataset(name: str, root: str | None = None, download: bool = False) -> DatasetBundle:
    """Load once per process (trials in one Ray worker share it)."""
    return DATASETS[name].loader(root, download)
