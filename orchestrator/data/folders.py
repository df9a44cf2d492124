"""Image folders: the layout check, the file index, and images decoded on demand.

Layout (torchvision ImageFolder's, one folder per class under each split)::

    ROOT/train/<class>/<file>    ROOT/val/<class>/<file>

Class indices are the sorted ``train/`` folder names; every ``val/`` class must be one of them.
:class:`FolderImages` is a split as decoded uint8 images of one size, read from the files when
indexed (``images[a:b]``, ``images[index_tensor]``) by a pool of decode worker processes: the
streaming storage of a dataset. Decoding does not depend on the number of workers (each file
is decoded alone, by the same code), so neither do the batches.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import io
import multiprocessing
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.augment import (
    AugmentConfig,
    Box,
    crop_resize_flip,
    resized_crops,
    sample_crop,
    to_device,
)
from orchestrator.data.imagefiles import (
    IMG_EXTENSIONS,
    UnreadableImageError,
    check_file,
    decode_fit_many,
    decode_rgb,
    iter_images,
    jpeg_frame,
    list_images,
    read_file,
)
from orchestrator.data.sharedbatch import SharedBatch, rows_into
from orchestrator.errors import UserInputError

LAYOUT = "allowed: a folder holding train/<class>/<image> and val/<class>/<image>"
WNID = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class FolderIndex:
    """The files of an image folder and their class indices."""

    root: str
    classes: tuple[str, ...]
    train_files: tuple[str, ...]
    train_labels: tuple[int, ...]
    val_files: tuple[str, ...]
    val_labels: tuple[int, ...]


def _class_folders(split: Path) -> list[Path]:
    return sorted(p for p in split.iterdir() if p.is_dir())


def check_layout(root: str | Path, imagenet: bool = False) -> None:
    """One :class:`UserInputError` line naming the folder that breaks the layout: the root,
    ``train/`` and ``val/`` exist, no class folder is empty, every ``val/`` class is in
    ``train/`` (and for ImageNet: the 1,000 wnid folders)."""
    base = Path(root)
    if not base.is_dir():
        raise UserInputError(f"{base} is not a folder; {LAYOUT}")
    splits = {}
    for name in ("train", "val"):
        split = base / name
        if not split.is_dir():
            raise UserInputError(f"{split} is missing; {LAYOUT}")
        classes = _class_folders(split)
        if not classes:
            raise UserInputError(f"{split} holds no class folders; {LAYOUT}")
        for folder in classes:
            if next(iter_images(folder), None) is None:
                raise UserInputError(
                    f"{folder} holds no image files (allowed extensions, any case: "
                    f"{', '.join(IMG_EXTENSIONS)}); remove the folder or add its images")
        splits[name] = [p.name for p in classes]
    known = set(splits["train"])
    for name in splits["val"]:
        if name not in known:
            raise UserInputError(f"{base / 'val' / name} is a class that {base / 'train'} "
                                 "does not have; every val/ class must have a train/ folder")
    if imagenet:
        wnids = splits["train"]
        odd = [n for n in wnids if not WNID.match(n)]
        if len(wnids) != IMAGENET_CLASSES or odd:
            what = (f"a folder {odd[0]!r} that is not a wnid" if odd else
                    f"{len(wnids)} class folders")
            raise UserInputError(
                f"{base / 'train'} has {what}; ImageNet needs the 1,000 ILSVRC-2012 wnid "
                "folders (n01440764 ... n15075141); use dataset name imagefolder for other "
                "folders")


@lru_cache(maxsize=8)
def scan(root: str) -> FolderIndex:
    """The files of a checked folder (sorted paths; labels from the ``train/`` classes)."""
    base = Path(root)
    classes = tuple(p.name for p in _class_folders(base / "train"))
    index = {c: i for i, c in enumerate(classes)}

    def split(name: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        files: list[str] = []
        labels: list[int] = []
        for folder in _class_folders(base / name):
            for f in list_images(folder):
                files.append(str(f))
                labels.append(index[folder.name])
        return tuple(files), tuple(labels)

    train_files, train_labels = split("train")
    val_files, val_labels = split("val")
    return FolderIndex(str(base), classes, train_files, train_labels, val_files, val_labels)


# --------------------------------------------------------------------------- decode workers

_POOLS: dict[int, cf.ProcessPoolExecutor] = {}


def decode_pool(workers: int) -> cf.ProcessPoolExecutor | None:
    """One pool of ``workers`` decode processes per process (None: decode here).

    Forked: a spawned child re-runs the parent's main script (``ukd`` is an unguarded
    console script) and imports torch, seconds per worker. The children run CPU code only
    (Pillow, numpy and torch's CPU ops on one thread, :func:`_worker_init`; never CUDA), so
    the parent's threads do not matter to them. They write their results into the parent's
    batch (:mod:`orchestrator.data.sharedbatch`)."""
    if workers <= 0:
        return None
    if workers not in _POOLS:
        ctx = multiprocessing.get_context("fork")
        _POOLS[workers] = cf.ProcessPoolExecutor(workers, mp_context=ctx,
                                                 initializer=_worker_init)
    return _POOLS[workers]


@lru_cache(maxsize=1)
def _reader() -> cf.ThreadPoolExecutor:
    """The thread that reads a GPU decode's files ahead (file reads release the GIL)."""
    return cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ukd-read")


@lru_cache(maxsize=1)
def _finisher() -> cf.ThreadPoolExecutor:
    """The thread that finishes prefetched batches on a CUDA device (:func:`_finish`)."""
    return cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ukd-finish")


@cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def _finish(device: torch.device, make: Callable[[], Tensor]
            ) -> tuple[Tensor, torch.cuda.Event | None]:
    """``make()`` (a batch's last leg onto ``device``: nvJPEG's decode and the crops, or the
    workers' batch copied over) and, on CUDA, an event its work on a side stream records.
    Run by the finisher thread: nvJPEG's batched decode blocks its caller until the batch is
    decoded (torchvision synchronises its stream), and a host-to-device copy from pageable
    memory blocks too; in the thread (both release the GIL) they overlap the trial's work on
    the batch before, on the GPU as on the host."""
    if device.type != "cuda":
        return make(), None
    stream = _side_stream(device)
    with torch.cuda.stream(stream):
        out = make()
        done = torch.cuda.Event()
        done.record(stream)
    return out, done


def _joined(out: Tensor, done: torch.cuda.Event | None) -> Tensor:
    """A finished batch (:func:`_finish`) ready on the caller's stream: the stream waits for
    the side stream's work, and the allocator keeps the batch's memory until the caller's
    stream is done with it."""
    if done is not None:
        current = torch.cuda.current_stream(out.device)
        current.wait_event(done)
        out.record_stream(current)
    return out


# The last read buffers stay referenced: nvJPEG copies from them asynchronously on its own
# stream, which PyTorch's pinned-memory cache does not see; torchvision waits for a batch's
# decode before it starts the next one, so a buffer three batches old is free to reuse.
_IN_FLIGHT: collections.deque[list[Tensor]] = collections.deque(maxlen=3)


def _worker_init() -> None:
    torch.set_num_threads(1)  # one decode worker, one core


def _geometry(height: int, width: int, cfg: AugmentConfig, seed: int) -> tuple[Box, bool]:
    """A view's crop box and flip, drawn as :func:`models.augment.random_geometric` draws
    them (the crop's draws first, then one ``torch.rand(1)`` for the flip) from a generator
    seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    box = sample_crop(height, width, cfg.crop_scale, cfg.crop_ratio, gen)
    flip = cfg.flip and bool(torch.rand(1, generator=gen).item() < 0.5)
    return box, flip


def _header(path: str, data: np.ndarray) -> tuple[int | None, int, int]:
    """(components, height, width) of a file from its bytes: a JPEG's from its frame header
    (:func:`jpeg_frame`), else (None, height, width) from Pillow's header read (which names
    an unreadable file)."""
    frame = jpeg_frame(memoryview(data.data))
    if frame is not None:
        return frame
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.tobytes())) as probe:
            width, height = probe.size
    except Exception as exc:
        raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from None
    return None, height, width


def decode_views(path: str, seeds: Sequence[int], cfg: AugmentConfig, size: int,
                 draft: bool = True) -> np.ndarray:
    """One file decoded once into ``len(seeds)`` views (``V x 3 x size x size`` uint8): each
    view's random resized crop + flip from its own seed, drawn on the full image's size
    (torchvision's rule); a JPEG is decoded at the smallest DCT scale that keeps every crop
    at least ``size`` pixels on each side, the boxes scaled to it (at scale 1 -- every crop of
    a small image -- this is exactly ``random_geometric`` of the decoded image)."""
    data = read_file(path)  # read once: the frame header, then the decode
    _, height, width = _header(path, data)
    drawn = [_geometry(height, width, cfg, s) for s in seeds]
    smallest = min(min(box[2], box[3]) for box, _ in drawn)
    factor = max(1, smallest // size) if draft else 1
    shorter = None if factor == 1 else -(-min(width, height) // factor)
    # Channels last, as decoded: the uint8 resize works in that layout (no planar copy).
    image = torch.from_numpy(decode_rgb(path, shorter, data)).permute(2, 0, 1)
    sy, sx = image.shape[1] / height, image.shape[2] / width
    out = np.empty((len(seeds), 3, size, size), dtype=np.uint8)
    for k, ((top, left, h, w), flip) in enumerate(drawn):
        if (sy, sx) != (1.0, 1.0):  # the same region of the reduced image
            t, lf = int(top * sy), int(left * sx)
            h = max(1, min(image.shape[1] - t, round(h * sy)))
            w = max(1, min(image.shape[2] - lf, round(w * sx)))
            top, left = t, lf
        out[k] = crop_resize_flip(image, (top, left, h, w), size, flip).numpy()
    return out


# Bytes read for a file's JPEG frame header: it comes after the metadata segments (EXIF,
# ICC), rarely beyond a few kilobytes.
_HEADER_BYTES = 1 << 16


@dataclass(frozen=True)
class ViewPlan:
    """A file's views drawn before it is decoded (:func:`plan_views`): whether the batched
    JPEG decode takes it (an RGB or grey JPEG), and each view's crop box and flip."""

    batched: bool
    boxes: tuple[Box, ...]
    flips: tuple[bool, ...]


def plan_views(path: str, seeds: Sequence[int], cfg: AugmentConfig) -> ViewPlan:
    """Each view's crop + flip of one file, drawn from its seed on the full image's size as
    :func:`decode_views` draws them; the size from the JPEG frame header
    (:func:`jpeg_frame`), else from Pillow's header read (which names an unreadable file)."""
    data = read_file(path, _HEADER_BYTES)  # the reader thread reads the whole file
    frame = jpeg_frame(memoryview(data.data))
    if frame is None and len(data) == _HEADER_BYTES:  # a header behind metadata, or no JPEG
        data = read_file(path)
    components, height, width = frame if frame is not None else _header(path, data)
    drawn = [_geometry(height, width, cfg, seed) for seed in seeds]
    return ViewPlan(components in (1, 3), tuple(d[0] for d in drawn),
                    tuple(d[1] for d in drawn))


def plan_views_many(paths: Sequence[str], seeds: Sequence[Sequence[int]], cfg: AugmentConfig
                    ) -> list[ViewPlan]:
    """:func:`plan_views` of a chunk of files (one decode worker's task)."""
    return [plan_views(p, s, cfg) for p, s in zip(paths, seeds, strict=True)]


def read_files(paths: Sequence[str]) -> list[Tensor]:
    """The files' bytes as slices of one buffer, pinned when there is a GPU (nvJPEG then
    copies them asynchronously): a GPU decode's read-ahead, in a thread."""
    try:
        sizes = [os.path.getsize(p) for p in paths]
    except OSError as exc:
        raise UnreadableImageError(str(exc.filename), f"{type(exc).__name__}: {exc}") from None
    buffer = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=torch.cuda.is_available())
    view = buffer.numpy()
    out, start = [], 0
    for path, size in zip(paths, sizes, strict=True):
        try:
            with open(path, "rb") as f:
                got = f.readinto(view[start:start + size].data)
        except OSError as exc:
            raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from None
        if got != size:
            raise UnreadableImageError(path, "the file changed while it was read")
        out.append(buffer[start:start + size])
        start += size
    return out


def decode_views_on(paths: Sequence[str], seeds: Sequence[Sequence[int]], cfg: AugmentConfig,
                    size: int, device: torch.device | str,
                    encoded: Sequence[Tensor] | None = None,
                    plans: Sequence[ViewPlan] | None = None) -> Tensor:
    """:func:`decode_views` for a batch of files with one batched decode on ``device``:
    ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA) for RGB and grey
    JPEGs, :func:`orchestrator.data.imagefiles.decode_rgb` for the others; every view's crop
    and flip from the full-size image (no reduced-scale decode) by
    :func:`models.augment.resized_crops`, a few batched products for the whole batch.
    ``encoded`` (:func:`read_files`) and ``plans`` (:func:`plan_views_many`): the files'
    bytes and views when already read and drawn ahead, elsewhere. Equals
    :func:`decode_views` with ``draft=False`` within one grey level (the resize in float64
    rather than uint8 arithmetic; tested on the CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    views = len(seeds[0]) if seeds else 0
    if not paths:
        return torch.empty((0, views, 3, size, size), dtype=torch.uint8, device=device)
    plans = list(plans) if plans is not None else plan_views_many(paths, seeds, cfg)
    images: list[Tensor | None] = [None] * len(paths)
    jpegs = [i for i, plan in enumerate(plans) if plan.batched]
    for i, plan in enumerate(plans):
        if not plan.batched:
            array = np.ascontiguousarray(decode_rgb(paths[i]).transpose(2, 0, 1))
            images[i] = to_device(torch.from_numpy(array), device)
    if jpegs:
        batch = [encoded[i] for i in jpegs] if encoded is not None else \
            read_files([paths[i] for i in jpegs])
        _IN_FLIGHT.append(batch)
        try:
            decoded = decode_jpeg(batch, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # name the file: decode them one by one
            decoded = []
            for i, one in zip(jpegs, batch, strict=True):
                try:
                    decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as exc:
                    raise UnreadableImageError.from_decoder(paths[i], exc) from None
        for i, image in zip(jpegs, decoded, strict=True):
            images[i] = image
    whole = [image for image in images if image is not None]
    assert len(whole) == len(paths)
    owners = [i for i, plan in enumerate(plans) for _ in plan.boxes]
    boxes = [box for plan in plans for box in plan.boxes]
    flips = [flip for plan in plans for flip in plan.flips]
    crops = resized_crops(whole, owners, boxes, flips, size)
    return crops.view(len(paths), views, 3, size, size)


def decode_views_many(paths: list[str], seeds: list[list[int]], cfg: AugmentConfig,
                      size: int, draft: bool) -> np.ndarray:
    """A chunk of files as one ``n x V x 3 x size x size`` uint8 array (one worker task)."""
    views = len(seeds[0]) if seeds else 0
    out = np.empty((len(paths), views, 3, size, size), dtype=np.uint8)
    for i, (p, s) in enumerate(zip(paths, seeds, strict=True)):
        out[i] = decode_views(p, s, cfg, size, draft)
    return out


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


@dataclass(frozen=True)
class Decode:
    """How a file becomes an image: ``Resize(resize, resample)`` + ``CenterCrop(crop)``."""

    resize: int
    crop: int
    resample: str = "bilinear"
    draft: bool = True  # reduced-scale JPEG decode when the resize allows it


@dataclass
class FolderImages:
    """A split's files as a lazily decoded ``N x 3 x crop x crop`` uint8 tensor.

    Indexing (a slice, an index tensor or list) decodes those files (in ``workers``
    processes, chunked) and returns a tensor on :attr:`device`. :meth:`prefetch` starts the
    decode of a batch ahead of its use; at most ``depth`` batches are pending at once, so
    host memory is bounded by the batch size, not by the dataset. Duck-types the few tensor
    members the evaluation and teacher code read (``shape``, ``dim``, ``device``, ``to``).
    """

    files: tuple[str, ...]
    decode: Decode
    workers: int = 0
    depth: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    gpu_decode: bool = False  # decode-time views decoded on a CUDA device (decode_views_on)
    gpu_share: float = 1.0  # of each batch's images (the first), the rest by the workers
    finish_ahead: bool = True  # False: a batch's last leg runs when it is read (a reference)
    _pending: dict[bytes, Any] = field(default_factory=dict, repr=False)
    peak_pending_images: int = 0  # the most images ever decoded ahead at once (tests read it)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self.files), 3, self.decode.crop, self.decode.crop])

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.files)

    def to(self, device: torch.device | str, **_: Any) -> FolderImages:
        # Shares the pending prefetches: one stream of batches whatever the copy.
        moved = replace(self, device=torch.device(device))
        moved._pending = self._pending
        return moved

    def _positions(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return np.arange(len(self.files))[key]
        if isinstance(key, Tensor):
            return key.detach().to("cpu", torch.int64).numpy().reshape(-1)
        return np.asarray(key, dtype=np.int64).reshape(-1)

    def _chunks(self, count: int) -> list[slice]:
        """``count`` items in about two chunks per worker (one worker task each)."""
        per = max(1, -(-count // (2 * self.workers)))
        return [slice(i, i + per) for i in range(0, count, per)]

    def _run(self, job: Callable[..., np.ndarray], items: list[Any], row: tuple[int, ...],
             *args: Any) -> Callable[[], np.ndarray]:
        """``job(items, *args)`` (an array of one ``row`` per item) split over the workers
        (~2 chunks each), which write their chunks into one shared batch
        (:mod:`orchestrator.data.sharedbatch`), in order; in this process (when read)
        without workers."""
        columns = [list(c) for c in zip(*items, strict=True)] if items else []
        pool = decode_pool(self.workers)
        shape = (len(items), *row)
        if pool is None or not items:
            return lambda: job(*columns, *args) if items else np.empty(shape, np.uint8)
        batch = SharedBatch.create(shape)
        if batch is None:  # no shared memory here: the chunks come back through the pipe
            futures = [pool.submit(job, *(c[part] for c in columns), *args)
                       for part in self._chunks(len(items))]
            return lambda: np.concatenate([f.result() for f in futures])
        shared = [(part.start, pool.submit(rows_into, batch.path, part.start, batch.row_bytes,
                                           job, *(c[part] for c in columns), *args))
                  for part in self._chunks(len(items))]

        def result() -> np.ndarray:
            try:
                for first, future in shared:
                    rows = future.result()
                    if rows is not None:  # the worker could not open the shared batch
                        batch.fill(first, rows)
                return batch.array()
            finally:
                batch.close()

        return result

    def _submit(self, positions: np.ndarray) -> Callable[[], np.ndarray]:
        d = self.decode
        return self._run(decode_fit_many, [(self.files[i],) for i in positions],
                         (3, d.crop, d.crop), d.resize, d.crop, d.resample, d.draft)

    def _submit_views(self, positions: np.ndarray, seeds: list[list[int]],
                      cfg: AugmentConfig) -> Callable[[], np.ndarray]:
        items = [(self.files[i], s) for i, s in zip(positions, seeds, strict=True)]
        views = len(seeds[0]) if seeds else 0
        row = (views, 3, self.decode.crop, self.decode.crop)
        return self._run(decode_views_many, items, row, cfg, self.decode.crop,
                         self.decode.draft)

    def _submit_plans(self, positions: np.ndarray, seeds: list[list[int]],
                      cfg: AugmentConfig) -> Callable[[], list[ViewPlan]]:
        paths = [self.files[i] for i in positions]
        pool = decode_pool(self.workers)
        if pool is None:
            return lambda: plan_views_many(paths, seeds, cfg)
        futures = [pool.submit(plan_views_many, paths[part], seeds[part], cfg)
                   for part in self._chunks(len(paths))]
        return lambda: [plan for f in futures for plan in f.result()]

    def _add_pending(self, key: Any, result: Callable[[], Any], count: int) -> None:
        self._pending[key] = (result, count)
        self.peak_pending_images = max(self.peak_pending_images,
                                       sum(n for _, n in self._pending.values()))

    def _copied(self, result: Callable[[], np.ndarray]) -> Tensor:
        """The workers' batch (``result``, when done) as a tensor on :attr:`device`."""
        return torch.from_numpy(result()).to(self.device)

    def _to_device(self, result: Callable[[], np.ndarray]) -> Callable[[], Tensor]:
        """:meth:`_copied`, on CUDA by the finisher thread (:func:`_finish`) as soon as the
        workers are done."""
        copied = partial(self._copied, result)
        return self._ahead(copied) if self.device.type == "cuda" else copied

    def _ahead(self, make: Callable[[], Tensor]) -> Callable[[], Tensor]:
        """``make`` run now by the finisher thread (:func:`_finish`); what it made, when
        read."""
        if not self.finish_ahead:
            return make
        future = _finisher().submit(_finish, self.device, make)
        return lambda: _joined(*future.result())

    def _taken(self, hit: tuple[Callable[[], Tensor], int]) -> Tensor:
        """A prefetched batch on :attr:`device` (a copy made by :meth:`to` shares the
        prefetches of the copy that started them, whatever its device)."""
        return hit[0]().to(self.device)

    def prefetch(self, indices: Tensor) -> None:
        """Start decoding ``indices`` (a later ``self[indices]`` takes the result); ignored
        when ``depth`` batches are already pending."""
        positions = self._positions(indices)
        key = positions.tobytes()
        if key in self._pending or len(self._pending) >= self.depth:
            return
        self._add_pending(key, self._to_device(self._submit(positions)), len(positions))

    @property
    def _on_gpu(self) -> bool:
        return self.gpu_decode and self.device.type == "cuda"

    def prefetch_views(self, key: Any, indices: Tensor, seeds: list[list[int]],
                       cfg: AugmentConfig) -> None:
        """Start decoding the views of a batch (:meth:`views` with the same ``key``). With a
        GPU decode the workers draw the views from the files' headers, a thread reads the
        files (into pinned memory) and the finisher thread decodes and crops them
        (:func:`_finish`) while the batches before are used."""
        if key in self._pending or len(self._pending) >= self.depth:
            return
        positions = self._positions(indices)
        if self._on_gpu:
            self._add_pending(key, self._ahead(self._device_views(positions, seeds, cfg)),
                              len(positions))
            return
        self._add_pending(key, self._to_device(self._submit_views(positions, seeds, cfg)),
                          len(positions))

    def _device_views(self, positions: np.ndarray, seeds: list[list[int]],
                      cfg: AugmentConfig) -> Callable[[], Tensor]:
        """The GPU route's views of a batch, started now, made by the call: its first
        ``gpu_share`` of images by :func:`decode_views_on` (their views drawn by the workers
        from the files' headers, the files read by the reader thread), the others by the
        workers (:func:`decode_views`), in batch order."""
        count = len(positions)
        on_gpu = min(count, round(count * self.gpu_share))
        paths = [self.files[i] for i in positions[:on_gpu]]
        rest = self._submit_views(positions[on_gpu:], seeds[on_gpu:], cfg) \
            if on_gpu < count else None
        if rest is not None and not paths:
            return lambda: self._copied(rest)
        plans = self._submit_plans(positions[:on_gpu], seeds[:on_gpu], cfg)
        read = _reader().submit(read_files, paths)

        def make() -> Tensor:
            head = decode_views_on(paths, seeds[:on_gpu], cfg, self.decode.crop, self.device,
                                   read.result(), plans())
            return head if rest is None else torch.cat([head, self._copied(rest)])

        return make

    def views(self, key: Any, indices: Tensor, seeds: list[list[int]],
              cfg: AugmentConfig) -> Tensor:
        """``n x V x 3 x size x size`` uint8 on :attr:`device`: image i's view k is its
        random resized crop + flip from ``seeds[i][k]`` (:func:`decode_views`), each file
        decoded once for all its views (``gpu_decode`` on CUDA: one batched nvJPEG decode,
        :func:`decode_views_on`)."""
        hit = self._pending.pop(key, None)
        if hit is not None:
            return self._taken(hit)
        if self._on_gpu:
            return self._device_views(self._positions(indices), seeds, cfg)()
        return self._copied(self._submit_views(self._positions(indices), seeds, cfg))

    def drop_pending(self) -> None:
        """Forget prefetched batches nobody took (an epoch that stopped early)."""
        for result, _ in self._pending.values():
            try:
                result()
            except Exception:  # reported when (if) that batch is read again
                pass
        self._pending.clear()

    def __getitem__(self, key: Any) -> Tensor:
        positions = self._positions(key)
        hit = self._pending.pop(positions.tobytes(), None)  # a prefetched batch
        if hit is not None:
            return self._taken(hit)
        return self._copied(self._submit(positions))


def as_tensor(images: FolderImages) -> Tensor:
    """A :class:`FolderImages` where the code expects the uint8 tensor it stands in for."""
    return images  # type: ignore[return-value]


# --------------------------------------------------------------------------- ukd data check


@dataclass(frozen=True)
class CheckResult:
    files: int
    unreadable: tuple[tuple[str, str], ...]  # (path, reason)


def _check_chunk(paths: Sequence[str]) -> list[tuple[str, str]]:
    return [(p, r) for p in paths if (r := check_file(p)) is not None]


def check_files(root: str | Path, workers: int | None = None,
                progress: Callable[[int], None] | None = None) -> CheckResult:
    """Decode every image under ``root/train`` and ``root/val`` in ``workers`` processes;
    ``progress(n)`` after each chunk of ``n`` files."""
    base = Path(root)
    paths = [str(p) for split in ("train", "val") if (base / split).is_dir()
             for p in list_images(base / split)]
    chunk = 64
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    bad: list[tuple[str, str]] = []
    count = workers if workers is not None else max(1, (os.cpu_count() or 1))
    pool = decode_pool(count)
    results = (pool.map(_check_chunk, chunks) if pool is not None
               else map(_check_chunk, chunks))
    for part, found in zip(chunks, results, strict=True):
        bad.extend(found)
        if progress is not None:
            progress(len(part))
    return CheckResult(len(paths), tuple(sorted(bad)))
