"""Datasets as tensors: each split is one uint8 tensor (N x C x H x W) plus int64 labels.

- ``digits``: scikit-learn's bundled handwritten digits (1,797 images, 10 classes), upsampled
  from 8x8 to 16x16, one channel; a fixed stratified 80/20 split. Ships with the package:
  the offline default.
- ``cifar10`` / ``cifar100``: torchvision's loaders (``root``, ``download``). Offline, a
  missing copy is a clear error saying where the files go.
- ``imagefolder``: the user's own images, ``root/train/<class>/<file>`` and
  ``root/val/<class>/<file>`` (:mod:`orchestrator.data.folders`), RGB at ``image_size``; labels
  from the folder names, used only for evaluation unless ``labels: true``.
- ``imagenet``: the same layout with ILSVRC-2012's 1,000 wnid folders (checked).
Folder datasets use ImageNet's mean and std (torchvision's), so that ``storage: memory`` and
``storage: stream`` normalise alike without a pass over the data. Their evaluation transform
(kNN bank and queries, linear probe, teacher features) is ``Resize(eval_resize, bicubic)`` +
``CenterCrop(image_size)``, CoSS's kNN transform (Resize 235 + CenterCrop 224) by default; the
training images are ``Resize(image_size)`` + ``CenterCrop(image_size)`` before augmentation.
Nothing downloads at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

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
    train: Split  # images under the evaluation transform
    test: Split
    num_classes: int
    mean: Tensor  # per channel, 0..1 scale
    std: Tensor
    # The training images augmentation starts from (a folder: fitted to image_size; None:
    # ``train.images``). A lazily decoded folder (orchestrator.data.folders.FolderImages) when
    # streamed, standing in for the uint8 tensor.
    train_source: Tensor | None = None
    streamed: bool = False

    @property
    def training_images(self) -> Tensor:
        return self.train.images if self.train_source is None else self.train_source


class DataSettings(Protocol):
    """What a loader reads of the spec's ``dataset:`` (orchestrator.spec.config.DatasetConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def root(self) -> str | None: ...
    @property
    def download(self) -> bool: ...
    @property
    def image_size(self) -> int | None: ...
    @property
    def eval_resize(self) -> int | None: ...
    @property
    def storage(self) -> str: ...
    @property
    def workers(self) -> int: ...
    @property
    def prefetch(self) -> int: ...
    @property
    def decode(self) -> str: ...
    @property
    def gpu_share(self) -> float: ...
    def __hash__(self) -> int: ...


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    has_labels: bool
    needs_root: bool
    loader: Callable[[Any], DatasetBundle]  # DataSettings -> bundle
    description: str
    train_size: int  # images in the training split (what an epoch is counted in); 0: a folder
    labels_default: bool = True  # dataset.labels when the spec leaves it out
    folder: bool = False  # an image folder (root checked, sizes read from the files)


def _digits(_settings: Any) -> DatasetBundle:
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


def _cifar(name: str) -> Callable[[Any], DatasetBundle]:
    def load(settings: DataSettings) -> DatasetBundle:
        from torchvision import datasets

        root, download = settings.root, settings.download
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


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
MEMORY_LIMIT_BYTES = 1 << 30  # storage auto: decoded splits up to 1 GiB stay in memory


def image_size(settings: DataSettings) -> int:
    return settings.image_size or DATASETS[settings.name].image_size


def eval_resize(settings: DataSettings) -> int:
    """The evaluation transform's Resize size: ``eval_resize``, else image_size * 235 / 224
    (CoSS's kNN transform, compute_close_far.py: Resize 235 + CenterCrop 224)."""
    return settings.eval_resize or round(image_size(settings) * 235 / DEFAULT_IMAGE_SIZE)


def storage_of(settings: DataSettings, images: int) -> str:
    """``memory`` or ``stream``: ``auto`` keeps splits whose decoded size is at most
    :data:`MEMORY_LIMIT_BYTES` in memory."""
    if settings.storage != "auto":
        return settings.storage
    size = image_size(settings)
    return "memory" if images * 3 * size * size <= MEMORY_LIMIT_BYTES else "stream"


def _folder(settings: DataSettings) -> DatasetBundle:
    """An image folder, decoded into memory or streamed (``storage``)."""
    from orchestrator.data.folders import Decode, FolderImages, as_tensor, check_layout, scan

    root = str(Path(settings.root or "").resolve())
    check_layout(root, imagenet=settings.name == "imagenet")
    index = scan(root)
    subset = getattr(settings, "classes", None)
    if subset:  # dataset.classes: only the named classes, relabelled 0..C-1
        from orchestrator.data.class_subset import read_classes, restrict

        index = restrict(index, read_classes(subset))
    size = image_size(settings)
    fitted = Decode(size, size, "bilinear")
    evaluated = Decode(eval_resize(settings), size, "bicubic")
    workers = settings.workers

    def lazy(files: tuple[str, ...], decode: Decode, depth: int = 0) -> FolderImages:
        return FolderImages(files, decode, workers, depth)

    train_eval = lazy(index.train_files, evaluated)
    test_eval = lazy(index.val_files, evaluated)
    source = replace(lazy(index.train_files, fitted, settings.prefetch),
                     gpu_decode=settings.decode == "gpu", gpu_share=settings.gpu_share)
    stream = storage_of(settings, len(index.train_files) + len(index.val_files)) == "stream"
    if stream:
        train_images, test_images, train_source = (as_tensor(train_eval),
                                                   as_tensor(test_eval), as_tensor(source))
    else:
        train_images, test_images = train_eval[:], test_eval[:]
        train_source = train_images if evaluated == fitted else source[:]
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return DatasetBundle(
        settings.name, Split(train_images, torch.tensor(index.train_labels, dtype=torch.int64)),
        Split(test_images, torch.tensor(index.val_labels, dtype=torch.int64)),
        len(index.classes), mean, std, train_source, stream)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, 1, 16, True, False, _digits,
                          "scikit-learn handwritten digits, 16x16 grey, 1437 train / 360 test",
                          1437),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, True, True, _cifar("cifar10"),
                           "CIFAR-10 through torchvision (root, download)", 50000),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, True, True, _cifar("cifar100"),
                            "CIFAR-100 through torchvision (root, download)", 50000),
    "imagefolder": DatasetInfo("imagefolder", 0, 3, DEFAULT_IMAGE_SIZE, True, True, _folder,
                               "your own images: root/train/<class>/*, root/val/<class>/*",
                               0, labels_default=False, folder=True),
    "imagenet": DatasetInfo("imagenet", 1000, 3, DEFAULT_IMAGE_SIZE, True, True, _folder,
                            "ILSVRC-2012 as an image folder (root/train, root/val: 1,000 wnids)",
                            1281167, labels_default=False, folder=True),
}


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def check_available(name: str, root: str | None, download: bool) -> None:
    """Fail before anything starts when a dataset that needs files has none (and no download);
    an image folder's layout is checked (:func:`orchestrator.data.folders.check_layout`)."""
    info = DATASETS[name]
    if info.folder:
        from orchestrator.data.folders import check_layout

        if root is None:
            raise UserInputError(f"dataset {name!r} needs `dataset.root`: a folder holding "
                                 "train/<class>/<image> and val/<class>/<image>")
        check_layout(root, imagenet=name == "imagenet")
        return
    if not info.needs_root or download:
        return
    folder = Path(root or "data").resolve() / _CIFAR_FILES[name]
    if not folder.is_dir():
        raise UserInputError(cifar_missing_message(name, root))


def uses_labels(settings: Any) -> bool:
    """May trials use the training labels? ``dataset.labels``, else the dataset's default
    (bundled datasets yes, image folders no: their labels are for evaluation only)."""
    info = DATASETS[settings.name]
    chosen = settings.labels if settings.labels is not None else info.labels_default
    return bool(info.has_labels and chosen)


def train_size(settings: DataSettings) -> int:
    """Images in the training split (an image folder: counted from its files; ImageNet
    without its folder at hand, e.g. a dry run elsewhere: ILSVRC-2012's count)."""
    info = DATASETS[settings.name]
    subset = _subset(settings)
    if not info.folder or settings.root is None or not (Path(settings.root) / "train").is_dir():
        if subset and info.num_classes:  # ImageNet-100 without the folder: the share
            return round(info.train_size * len(subset) / info.num_classes)
        return info.train_size
    from orchestrator.data.folders import scan

    index = scan(str(Path(settings.root).resolve()))
    if subset:
        from orchestrator.data.class_subset import restrict

        index = restrict(index, subset)
    return len(index.train_files)


def _subset(settings: DataSettings) -> tuple[str, ...]:
    """The classes ``dataset.classes`` names (none: all; an unreadable file: all, for the
    estimates of a dry run -- the spec and preflight reject it before a real run)."""
    path = getattr(settings, "classes", None)
    if not path:
        return ()
    from orchestrator.data.class_subset import read_classes

    try:
        return read_classes(path)
    except UserInputError:
        return ()


def num_classes(settings: DataSettings) -> int:
    info = DATASETS[settings.name]
    if _subset(settings):
        return len(_subset(settings))
    if not info.folder or settings.root is None or not (Path(settings.root) / "train").is_dir():
        return info.num_classes
    from orchestrator.data.folders import scan

    return len(scan(str(Path(settings.root).resolve())).classes)


def identity(settings: DataSettings) -> str:
    """A folder's part of teacher cache keys: where it is and the sizes it is read at (a
    teacher pretrained on one folder is not another's); "" for a bundled dataset."""
    if not DATASETS[settings.name].folder:
        return ""
    out = f"{settings.name}:{settings.root}:{image_size(settings)}:{eval_resize(settings)}"
    subset = getattr(settings, "classes", None)
    return out + (f":classes={subset}" if subset else "")


def load_dataset(settings: DataSettings | str) -> DatasetBundle:
    """Load once per process (trials in one Ray worker share it); ``settings`` is the
    spec's (frozen, hashable) ``dataset:`` section, or a bundled dataset's name."""
    return _load(_Named(settings) if isinstance(settings, str) else settings)


@dataclass(frozen=True)
class _Named:
    """A dataset by name with every other setting at its default (spec.config's
    DatasetConfig defaults; the data layer does not import the spec layer)."""

    name: str
    root: str | None = None
    download: bool = False
    image_size: int | None = None
    eval_resize: int | None = None
    storage: str = "auto"
    workers: int = 2
    prefetch: int = 2
    decode: str = "cpu"


@lru_cache(maxsize=4)
def _load(settings: DataSettings) -> DatasetBundle:
    return DATASETS[settings.name].loader(settings)
