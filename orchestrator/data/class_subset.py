"""``dataset.classes``: train and evaluate on a subset of an image folder's classes.

A text file names the classes, one folder name a line (blank lines and ``#`` comments
ignored) -- e.g. the 100 wnids of ImageNet-100 (CMC, Tian et al. 2019) for ablations at a
tenth of ImageNet's cost. The subset's classes are relabelled 0..C-1 in sorted name order,
as torchvision's ImageFolder would label a folder holding only them; both splits keep only
their images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.data.folders import FolderIndex
from orchestrator.errors import UserInputError


def read_classes(path: str | Path) -> tuple[str, ...]:
    """The class names of a subset file (UserInputError: missing, unreadable, empty or a
    name given twice)."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"no such file: {file}")
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read {file}: {exc}") from None
    names = [line.split("#", 1)[0].strip() for line in lines]
    names = [n for n in names if n]
    if not names:
        raise UserInputError(f"{file} names no class (one class folder name a line)")
    seen: set[str] = set()
    for number, name in enumerate(names, 1):
        if name in seen:
            raise UserInputError(f"{file} names the class {name!r} twice (entry {number})")
        seen.add(name)
    return tuple(sorted(names))


def check_classes(path: str | Path, root: str | Path) -> None:
    """Every class of the file has a folder in ``root/train`` (one line naming the first
    missing class)."""
    train = Path(root) / "train"
    for name in read_classes(path):
        if not (train / name).is_dir():
            raise UserInputError(f"{path} names the class {name!r}, which {train} does not "
                                 "have; allowed: names of its class folders")


def restrict(index: FolderIndex, classes: tuple[str, ...]) -> FolderIndex:
    """``index`` with only ``classes`` (sorted), relabelled 0..C-1 in that order."""
    new = {index.classes.index(c): i for i, c in enumerate(sorted(classes))}

    def keep(files: tuple[str, ...], labels: tuple[int, ...]
             ) -> tuple[tuple[str, ...], tuple[int, ...]]:
        pairs = [(f, new[label]) for f, label in zip(files, labels, strict=True)
                 if label in new]
        return tuple(f for f, _ in pairs), tuple(label for _, label in pairs)

    train_files, train_labels = keep(index.train_files, index.train_labels)
    val_files, val_labels = keep(index.val_files, index.val_labels)
    return dataclasses.replace(index, classes=tuple(sorted(classes)), train_files=train_files,
                               train_labels=train_labels, val_files=val_files,
                               val_labels=val_labels)
