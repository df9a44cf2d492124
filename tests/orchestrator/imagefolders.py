"""Generated image folders for the tests (no downloads): ImageFolder layout, JPEG and PNG,
mixed sizes and colour modes (RGB, L, CMYK, P, RGBA), and the digits' own images as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MODES = ("RGB", "L", "CMYK", "P", "RGBA")


def _picture(rng: np.random.Generator, w: int, h: int, cls: int) -> Image.Image:
    """Smooth class-coloured noise plus a bright square: learnable, not trivially."""
    base = np.array([(cls * 67) % 256, (cls * 131) % 256, (cls * 29 + 90) % 256], np.float32)
    noise = rng.normal(0, 40, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
    img = np.clip(base + noise, 0, 255)
    s = max(4, min(w, h) // 3)
    x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
    img[y:y + s, x:x + s] = 255 - base
    return Image.fromarray(img.astype(np.uint8), "RGB")


def make_folder(root: Path, classes: int = 3, train: int = 40, val: int = 12,
                sizes: tuple[int, int] = (24, 40), seed: int = 0) -> Path:
    """``train`` / ``val`` images per class in every colour mode, JPEG and PNG (CMYK: JPEG),
    sides drawn from ``sizes``, extensions in mixed case, plus a non-image file to ignore."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "notes.txt").write_text("not an image")
            for i in range(count):
                w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
                mode = MODES[i % len(MODES)]
                img = _picture(rng, w, h, c)
                img = img.convert(mode) if mode != "P" else img.quantize(16)
                ext = ".JPG" if mode == "CMYK" or i % 2 else ".png"
                if ext == ".JPG" and mode in ("RGBA", "P"):
                    ext = ".png"
                img.save(folder / f"{i:04d}{ext}", quality=90)
    return root


def digits_folder(root: Path, every: int = 1) -> Path:
    """The digits dataset's own 16x16 images as grey PNGs (train/ and val/ per class;
    ``every``: only every n-th image of each split, for cheaper tests)."""
    from orchestrator.data.datasets import load_dataset

    bundle = load_dataset("digits")
    for split, part in (("train", bundle.train), ("val", bundle.test)):
        pairs = list(zip(part.images, part.labels, strict=True))[::every]
        for i, (img, label) in enumerate(pairs):
            folder = root / split / f"digit_{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy(), "L").save(folder / f"{i:05d}.png")
    return root
