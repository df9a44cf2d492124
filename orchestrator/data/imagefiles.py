"""Decoding image files into uint8 arrays: the code the decode worker processes run.

Both decoders are libjpeg-turbo: an RGB or grey JPEG decoded at full size goes through
``torchvision.io.decode_jpeg`` (about 1.7x Pillow's speed per core, measured by
benchmarks/data_throughput.py's machine); a JPEG that can be decoded at a reduced DCT scale
(Pillow's ``draft``), a CMYK JPEG and every other format go through Pillow.

Conventions follow torchvision's ImageFolder: the extensions of ``IMG_EXTENSIONS`` in any
case, every image converted to RGB (``PIL.Image.convert("RGB")``: grayscale, CMYK, palette and
RGBA alike), ``Resize(size)`` scales the shorter side to ``size`` (the longer one to
``int(size * long / short)``) and ``CenterCrop`` starts at ``int(round((h - th) / 2))``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

# torchvision.datasets.folder.IMG_EXTENSIONS, compared in lower case.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class UnreadableImageError(Exception):
    """A file that cannot be decoded; the message starts with its path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode image {self.path} ({self.reason})"

    @classmethod
    def from_decoder(cls, path: str, exc: BaseException) -> UnreadableImageError:
        """A decoder's exception as the reason: its type and first line (decoders' messages
        can run to many lines)."""
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return cls(str(path), f"{type(exc).__name__}: {first}")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)``: shorter side to ``size``, aspect kept (truncated)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic).
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF))


def jpeg_frame(data: memoryview) -> tuple[int, int, int] | None:
    """(components, height, width) of a JPEG's frame (components 1 grey, 3 YCbCr, 4 CMYK or
    YCCK) from its start-of-frame header; None when ``data`` is no JPEG, ends before that
    header or leaves the height to a later marker. Reads a few header bytes: a file can be
    routed and its crops drawn without decoding it."""
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _SOF:
            if i + 10 > n:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return (int(data[i + 9]), height, width) if height and width else None
        if marker == 0xDA:  # a scan before any frame header
            return None
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def read_file(path: str, count: int = -1) -> np.ndarray:
    """A file's bytes (its first ``count`` when given) as a uint8 array (named in the error
    when it cannot be read)."""
    try:
        return np.fromfile(path, dtype=np.uint8, count=count)
    except OSError as exc:
        raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from None


def decode_rgb(path: str, shorter: int | None = None, data: np.ndarray | None = None
               ) -> np.ndarray:
    """The file as an ``H x W x 3`` uint8 RGB array (``shorter``: see :func:`open_rgb`;
    ``data``: the file's bytes when already read). An RGB or grey JPEG with no reduced scale
    to gain is decoded from its bytes by ``torchvision.io.decode_jpeg`` (its frame header
    read by :func:`jpeg_frame`, not by Pillow), the rest by Pillow."""
    if data is None:
        data = read_file(path)
    frame = jpeg_frame(memoryview(data.data))
    if frame is not None and frame[0] in (1, 3) and (
            shorter is None or min(frame[1:]) < 2 * shorter):  # no reduced scale to gain
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            image = decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB)
        except Exception as exc:
            raise UnreadableImageError.from_decoder(path, exc) from None
        out: np.ndarray = image.permute(1, 2, 0).numpy()
        return out
    return np.array(open_rgb(path, shorter, data), dtype=np.uint8)  # writable, for torch


def open_rgb(path: str, shorter: int | None = None, data: np.ndarray | None = None
             ) -> Image.Image:
    """The decoded RGB image (from ``data``, the file's bytes, when given). ``shorter``: the
    size its shorter side will be resized to; a JPEG is then decoded at the smallest DCT
    scale (1, 1/2, 1/4, 1/8) that keeps the image at least that large (libjpeg's scaled
    decode, PIL's ``draft``): far fewer pixels to decode and to resize."""
    try:
        with Image.open(io.BytesIO(data.tobytes()) if data is not None else path) as img:
            if shorter is not None and img.format == "JPEG":
                img.draft("RGB", resized_size(*img.size, shorter))
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError...)
        raise UnreadableImageError.from_decoder(path, exc) from None


def fit(img: Image.Image, resize: int, crop: int, resample: str) -> np.ndarray:
    """``Resize(resize)`` + ``CenterCrop(crop)`` as a ``3 x crop x crop`` uint8 array (no
    resampling at all when the shorter side already is ``resize``)."""
    w, h = img.size
    nw, nh = resized_size(w, h, resize)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), RESAMPLE[resample])
    if nw < crop or nh < crop:
        raise ValueError(f"a centre crop of {crop} from a {nw}x{nh} image")
    left, top = round((nw - crop) / 2.0), round((nh - crop) / 2.0)  # Python round, as torchvision
    img = img.crop((left, top, left + crop, top + crop))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def decode_fit(path: str, resize: int, crop: int, resample: str, draft: bool = True
               ) -> np.ndarray:
    """One file through :func:`fit` (with a reduced-scale JPEG decode when ``draft``)."""
    img = Image.fromarray(decode_rgb(path, resize if draft else None))
    try:
        return fit(img, resize, crop, resample)
    except ValueError as exc:
        raise UnreadableImageError(path, str(exc)) from None


def decode_fit_many(paths: list[str], resize: int, crop: int, resample: str, draft: bool
                    ) -> np.ndarray:
    """A chunk of files as one ``n x 3 x crop x crop`` uint8 array (one worker task)."""
    out = np.empty((len(paths), 3, crop, crop), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = decode_fit(p, resize, crop, resample, draft)
    return out


def check_file(path: str) -> str | None:
    """None when ``path`` decodes fully, else the reason (``ukd data check``)."""
    try:
        open_rgb(path).load()
    except UnreadableImageError as exc:
        return exc.reason
    return None


def iter_images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder`` (recursively, as ImageFolder; ``os.walk`` reads file
    types from the directory entries, no stat per file: ImageNet has 1.28 M of them)."""
    for parent, _dirs, names in os.walk(folder, followlinks=True):
        for name in names:
            if is_image(name):
                yield Path(parent) / name


def list_images(folder: Path) -> list[Path]:
    """:func:`iter_images`, sorted by path."""
    return sorted(iter_images(folder))
