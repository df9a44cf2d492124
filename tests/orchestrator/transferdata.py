"""Generated downstream datasets for the transfer tests (no downloads): an image folder with
train/ and test/, and DTD's torchvision layout (dtd/dtd/images/<class>/, labels/*1.txt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.orchestrator.imagefolders import _picture


def transfer_folder(root: Path, classes: int = 3, train: int = 20, test: int = 10,
                    val: int = 0, size: int = 40, seed: int = 0) -> Path:
    """``root/{train,test[,val]}/class_<c>/<i>.jpg``: class-coloured pictures."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test), ("val", val)):
        for c in range(classes):
            if count == 0:
                continue
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _picture(rng, size, size + 8, c).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def dtd_standin(root: Path, classes: int = 3, per_split: int = 6, seed: int = 0) -> Path:
    """DTD in torchvision's layout: ``root/dtd/dtd/images/<class>/<class>_<i>.jpg`` and
    ``labels/{train,val,test}1.txt`` listing ``<class>/<file>``; every class in every split.
    Returns ``root`` (what ``eval.transfer`` names)."""
    rng = np.random.default_rng(seed)
    data = root / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True, exist_ok=True)
    names = [f"texture{c}" for c in range(classes)]
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, name in enumerate(names):
        (data / "images" / name).mkdir(parents=True, exist_ok=True)
        for s, split in enumerate(lines):
            for i in range(per_split):
                file = f"{name}_{s}{i:03d}.jpg"
                _picture(rng, 36, 30, c).save(data / "images" / name / file, quality=90)
                lines[split].append(f"{name}/{file}")
    for split, rows in lines.items():
        (data / "labels" / f"{split}1.txt").write_text("\n".join(rows) + "\n")
    return root
