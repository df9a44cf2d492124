"""Downstream datasets of the transfer evaluation (docs/RECIPES.md, "Transfer evaluation").

The seven datasets CoSS transfers to load through torchvision's own classes with
``download=False`` from a ``root`` the user fills by hand; ``imagefolder`` is any folder
``ROOT/train/<class>/<image>`` with ``ROOT/test/<class>/<image>`` (then ``ROOT/val/``, if
there, is its official validation split) or ``ROOT/val/<class>/<image>`` (then the test
split). :func:`check_files` names the folder and the files expected there before anything
runs (torchvision's own check md5-hashes some files, e.g. STL-10's whole archive, at every
construction: a present but corrupt file is reported when a stage loads it).

Images are decoded on demand (a split is a list of items, never all images at once:
CIFAR at 224 px would be 9 GB), converted to RGB, and brought to the feature size by
``Resize(resize, bicubic)`` + ``CenterCrop(size)`` (:func:`orchestrator.data.imagefiles.fit`).
The random validation split is Ericsson's: ``np.random.seed(seed)``, shuffle the train
indices, the first ``floor(fraction * N)`` are validation (:func:`random_split`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from orchestrator.data.imagefiles import fit, iter_images, list_images, open_rgb
from orchestrator.errors import UserInputError

TOP1 = "top1"
MEAN_PER_CLASS = "mean_per_class"


class ImageSplit(Protocol):
    """A split: ``len``, the labels, and item ``i`` as a PIL image."""

    def __len__(self) -> int: ...
    def image(self, index: int) -> Image.Image: ...
    @property
    def labels(self) -> Sequence[int]: ...


@dataclass(frozen=True)
class TorchvisionSplit:
    """A torchvision dataset (no transform) read item by item; ``labels`` read once."""

    dataset: Any
    labels: Sequence[int]

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        image: Image.Image = self.dataset[index][0]  # torchvision: a PIL image
        return image.convert("RGB")  # Caltech-101 keeps greyscale JPEGs grey


@dataclass(frozen=True)
class FileSplit:
    """Image files and their labels."""

    files: tuple[str, ...]
    labels: Sequence[int]

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> Image.Image:
        return open_rgb(self.files[index])


@dataclass(frozen=True)
class Downstream:
    """A loaded downstream dataset: train, the official validation split (None: a random
    share of train is drawn), test."""

    train: ImageSplit
    val: ImageSplit | None
    test: ImageSplit
    num_classes: int


@dataclass(frozen=True)
class DownstreamInfo:
    name: str
    metric: str  # TOP1 or MEAN_PER_CLASS (Ericsson's choice per dataset)
    folder: str  # where torchvision looks under root
    expected: str  # what must be in that folder (the message of a missing file)
    required: tuple[str, ...]  # paths under the folder that must exist
    loader: Callable[[Path], Downstream]


def _labels(ds: Any, attribute: str) -> list[int]:
    return [int(v) for v in getattr(ds, attribute)]


def _split(ds: Any, attribute: str) -> TorchvisionSplit:
    return TorchvisionSplit(ds, _labels(ds, attribute))


def _cifar(cls_name: str, classes: int) -> Callable[[Path], Downstream]:
    def load(root: Path) -> Downstream:
        from torchvision import datasets

        cls = getattr(datasets, cls_name)
        train, test = (cls(str(root), train=t, download=False) for t in (True, False))
        return Downstream(_split(train, "targets"), None, _split(test, "targets"), classes)

    return load


def _stl10(root: Path) -> Downstream:
    from torchvision.datasets import STL10

    train, test = (STL10(str(root), split=s, download=False) for s in ("train", "test"))
    return Downstream(_split(train, "labels"), None, _split(test, "labels"), 10)


def _caltech101(root: Path) -> Downstream:
    """torchvision's Caltech101 has no split: its 101 classes (BACKGROUND_Google dropped) are
    split here, 30 random images per class for training (seed 0), the rest for testing -- the
    dataset authors' protocol. Ericsson's own split files (102 classes) are not used."""
    from torchvision.datasets import Caltech101

    ds = Caltech101(str(root), target_type="category", download=False)
    labels = np.asarray(_labels(ds, "y"))
    rng = np.random.RandomState(0)
    train_idx: list[int] = []
    for c in range(len(ds.categories)):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        train_idx.extend(int(i) for i in members[:30])
    chosen = set(train_idx)
    test_idx = [i for i in range(len(labels)) if i not in chosen]
    train_idx.sort()
    full = TorchvisionSplit(ds, labels.tolist())
    return Downstream(Subset(full, tuple(train_idx)), None, Subset(full, tuple(test_idx)),
                      len(ds.categories))


def _pets(root: Path) -> Downstream:
    from torchvision.datasets import OxfordIIITPet

    train, test = (OxfordIIITPet(str(root), split=s, target_types="category", download=False)
                   for s in ("trainval", "test"))
    return Downstream(_split(train, "_labels"), None, _split(test, "_labels"), 37)


def _official(cls_name: str, classes: int) -> Callable[[Path], Downstream]:
    def load(root: Path) -> Downstream:
        from torchvision import datasets

        cls = getattr(datasets, cls_name)
        train, val, test = (cls(str(root), split=s, download=False)
                            for s in ("train", "val", "test"))
        return Downstream(_split(train, "_labels"), _split(val, "_labels"),
                          _split(test, "_labels"), classes)

    return load


@dataclass(frozen=True)
class Subset:
    """Some items of a split."""

    split: ImageSplit
    indices: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> Image.Image:
        return self.split.image(self.indices[index])

    @property
    def labels(self) -> list[int]:
        labels = self.split.labels
        return [int(labels[i]) for i in self.indices]


def _folder_split(base: Path, name: str, index: dict[str, int]) -> FileSplit:
    files: list[str] = []
    labels: list[int] = []
    for folder in sorted(p for p in (base / name).iterdir() if p.is_dir()):
        if folder.name not in index:
            raise UserInputError(f"{folder} is a class that {base / 'train'} does not have; "
                                 f"every {name}/ class must have a train/ folder")
        for f in list_images(folder):
            files.append(str(f))
            labels.append(index[folder.name])
    return FileSplit(tuple(files), labels)


def _imagefolder(root: Path) -> Downstream:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    train = _folder_split(root, "train", index)
    if (root / "test").is_dir():
        val = _folder_split(root, "val", index) if (root / "val").is_dir() else None
        return Downstream(train, val, _folder_split(root, "test", index), len(classes))
    return Downstream(train, None, _folder_split(root, "val", index), len(classes))


_CIFAR10 = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
            "test_batch", "batches.meta")
_STL10 = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin")

DOWNSTREAM: dict[str, DownstreamInfo] = {
    "cifar10": DownstreamInfo("cifar10", TOP1, "cifar-10-batches-py",
                              "the extracted cifar-10-python.tar.gz: " + ", ".join(_CIFAR10),
                              _CIFAR10, _cifar("CIFAR10", 10)),
    "cifar100": DownstreamInfo("cifar100", TOP1, "cifar-100-python",
                               "the extracted cifar-100-python.tar.gz: train, test, meta",
                               ("train", "test", "meta"), _cifar("CIFAR100", 100)),
    "stl10": DownstreamInfo("stl10", TOP1, "stl10_binary",
                            "the whole extracted stl10_binary.tar.gz (torchvision md5-checks "
                            "all five .bin files, unlabeled_X.bin too): " + ", ".join(_STL10),
                            _STL10, _stl10),
    "caltech101": DownstreamInfo("caltech101", MEAN_PER_CLASS, "caltech101",
                                 "101_ObjectCategories/<class>/image_NNNN.jpg with "
                                 "BACKGROUND_Google/ among the classes (the extracted "
                                 "101_ObjectCategories.tar.gz; torchvision drops that class)",
                                 ("101_ObjectCategories/BACKGROUND_Google",), _caltech101),
    "pets": DownstreamInfo("pets", MEAN_PER_CLASS, "oxford-iiit-pet",
                           "images/*.jpg, annotations/trainval.txt and annotations/test.txt "
                           "(the extracted images.tar.gz and annotations.tar.gz)",
                           ("images", "annotations/trainval.txt", "annotations/test.txt"),
                           _pets),
    "flowers102": DownstreamInfo("flowers102", MEAN_PER_CLASS, "flowers-102",
                                 "jpg/image_NNNNN.jpg, imagelabels.mat and setid.mat "
                                 "(torchvision md5-checks the .mat files)",
                                 ("jpg", "imagelabels.mat", "setid.mat"),
                                 _official("Flowers102", 102)),
    "dtd": DownstreamInfo("dtd", TOP1, "dtd/dtd",
                          "images/<class>/*.jpg and labels/{train,val,test}1.txt (the "
                          "extracted dtd-r1.0.1.tar.gz)",
                          ("images", "labels/train1.txt", "labels/val1.txt",
                           "labels/test1.txt"), _official("DTD", 47)),
    "imagefolder": DownstreamInfo("imagefolder", TOP1, "",
                                  "train/<class>/<image> and test/<class>/<image> (val/ "
                                  "beside them: the official validation split) or "
                                  "val/<class>/<image> (the test split)",
                                  ("train",), _imagefolder),
}


def downstream_names() -> list[str]:
    return list(DOWNSTREAM)


def check_files(name: str, root: str | Path) -> None:
    """One :class:`UserInputError` line naming the folder and the files expected there when
    a downstream dataset's files are missing (no md5 here: STL-10's is 2.5 GB)."""
    info = DOWNSTREAM[name]
    folder = Path(root) / info.folder if info.folder else Path(root)
    missing = [r for r in info.required if not (folder / r).exists()]
    if name == "imagefolder" and not missing:
        if not ((folder / "val").is_dir() or (folder / "test").is_dir()):
            missing = ["val/ or test/"]
        known = {p.name for p in (folder / "train").iterdir() if p.is_dir()}
        for split in ("train", "val", "test"):
            if not (folder / split).is_dir():
                continue
            if next(iter_images(folder / split), None) is None:
                missing = [f"{split}/<class>/<image> (no images in {folder / split})"]
                break
            odd = sorted(p.name for p in (folder / split).iterdir()
                         if p.is_dir() and p.name not in known)
            if odd:
                missing = [f"train/{odd[0]}/ (a class of {split}/)"]
                break
    if name == "caltech101" and not missing:
        categories = folder / "101_ObjectCategories"
        if not any(p.is_dir() and p.name != "BACKGROUND_Google" for p in categories.iterdir()):
            missing = ["101_ObjectCategories/<class>/ folders"]
    if missing:
        raise UserInputError(f"transfer dataset {name!r}: {folder} lacks {', '.join(missing)}; "
                             f"expected there: {info.expected}")


def load_downstream(name: str, root: str | Path) -> Downstream:
    """The dataset's splits; a file torchvision refuses (missing, md5 mismatch) is one
    :class:`UserInputError` line."""
    check_files(name, root)
    try:
        return DOWNSTREAM[name].loader(Path(root))
    except (RuntimeError, OSError) as exc:
        info = DOWNSTREAM[name]
        raise UserInputError(f"transfer dataset {name!r} in {Path(root) / info.folder}: "
                             f"{exc}; expected there: {info.expected}") from None


def random_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Ericsson's validation split (linear.py ``get_train_valid_loader``): indices 0..n-1
    shuffled by ``np.random.seed(seed); np.random.shuffle``, the first ``floor(fraction*n)``
    are validation; returns (train, val)."""
    indices = list(range(n))
    np.random.RandomState(seed).shuffle(indices)  # the legacy global RNG's stream
    cut = int(np.floor(fraction * n))
    return indices[cut:], indices[:cut]


def decode(split: ImageSplit, indices: Sequence[int], size: int, resize: int) -> Tensor:
    """Items of a split as ``n x 3 x size x size`` uint8: RGB, ``Resize(resize, bicubic)``
    (shorter side) + ``CenterCrop(size)``."""
    out = np.empty((len(indices), 3, size, size), dtype=np.uint8)
    for k, i in enumerate(indices):
        out[k] = fit(split.image(i), resize, size, "bicubic")
    return torch.from_numpy(out)


def decode_batches(split: ImageSplit, size: int, resize: int, batch: int, threads: int
                   ) -> Iterator[Tensor]:
    """:func:`decode` of the whole split in batches of ``batch``, in order, by ``threads``
    threads (Pillow's decode and resize release the GIL) a batch ahead of the consumer, so
    decoding overlaps the forward; each image is decoded alone, by the same code, so the
    batches do not depend on ``threads``."""
    starts = list(range(0, len(split), batch))
    if threads <= 1:
        for start in starts:
            yield decode(split, range(start, min(len(split), start + batch)), size, resize)
        return
    per = max(1, -(-batch // threads))
    with ThreadPoolExecutor(threads) as pool:
        def submit(start: int) -> list[Future[Tensor]]:
            stop = min(len(split), start + batch)
            return [pool.submit(decode, split, range(a, min(stop, a + per)), size, resize)
                    for a in range(start, stop, per)]

        pending = [submit(s) for s in starts[:2]]
        for k in range(len(starts)):
            parts = pending.pop(0)
            if k + 2 < len(starts):
                pending.append(submit(starts[k + 2]))
            yield torch.cat([f.result() for f in parts])
