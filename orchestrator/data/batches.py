"""The batch stream of a group: epoch order, batch building, augmented views, extra fetches.

The training split is either one uint8 tensor on the device (airbench style, no DataLoader)
or an image folder streamed from disk (:class:`orchestrator.data.folders.FolderImages`: files
decoded by worker processes, ``prefetch`` batches ahead, host memory bounded by the batch
size). An epoch's batches are index tensors built from the data stream; each batch's images
are read once (:meth:`Batch.raw`), its views are augmented on the device on first use and
shared by every member that asks for them, so a fused group reads, decodes and augments each
batch once. Reading is deterministic, so the views depend on (seed, epoch, step, view) only:
not on storage, worker count, prefetch depth or group.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from losses import NeighbourBatches
from models.augment import AugmentConfig, augment, geometric, normalise, photometric
from orchestrator.data.sampling import neighbour_batches, random_batches
from orchestrator.data.streams import PURPOSES, derive_seeds, generator

ROTATED = -1  # the rotated batch's key among a batch's views (and its generator's part)


def rotated_copies(images: Tensor, cfg: AugmentConfig, mean: Tensor, std: Tensor,
                   gen: torch.Generator,
                   memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """SSKD's data pipeline (xuguodong03/SSKD cifar.py:140-165, student.py:74-78): each uint8
    image is flipped horizontally once with p = 0.5 (when ``cfg.flip``), rotated by 0, 90,
    180 and 270 degrees (``np.rot90``'s direction), and each rotated copy is then augmented on
    its own with ``cfg`` less its flip (the official RandomCrop(32, padding=4)): a normalised
    ``4B x C x H x W`` batch, image-major (row ``4i + k`` is image ``i`` rotated ``k`` times).
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotations need a batch of square images, got {tuple(images.shape)}")
    x = images
    if cfg.flip:
        flip = torch.rand(x.shape[0], generator=gen, device=gen.device).to(x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    crop = dataclasses.replace(cfg, flip=False)
    copies = [normalise(augment(torch.rot90(x, k, dims=(2, 3)), crop, gen), mean, std)
              for k in range(4)]
    return torch.stack(copies, dim=1).flatten(0, 1).contiguous(memory_format=memory_format)


@dataclass
class Batch:
    """One step's images: indices, labels and lazily augmented views."""

    stream: BatchStream
    epoch: int
    step: int
    indices: Tensor  # on the device
    labels: Tensor | None
    _views: dict[int, Tensor] = field(default_factory=dict)
    _parts: dict[int, list[DeviceChunk]] = field(default_factory=dict)
    _raw: Tensor | None = None
    _geometric: Tensor | None = None  # B x V x C x S x S uint8 (decode-time presets)

    def raw(self) -> Tensor:
        """The batch's stored uint8 images, read (decoded) once per step."""
        if self._raw is None:
            self._raw = self.stream.images[self.indices]
        return self._raw

    def view(self, k: int) -> Tensor:
        """The ``k``-th augmented view (normalised float batch), made once per step."""
        if k not in self._views:
            stream = self.stream
            if stream.decode_time:
                # The photometric draws on the CPU: the same on every device, and a CUDA batch
                # is indexed by them without waiting for the GPU.
                gen = generator(stream.seed, "view", self.epoch, self.step, k)
                x = photometric(self.geometric(k + 1)[:, k], stream.augment, gen)
                self._views[k] = normalise(x, stream.mean, stream.std).contiguous(
                    memory_format=stream.memory_format)
            else:
                gen = generator(stream.seed, "view", self.epoch, self.step, k,
                                device=stream.device)
                self._views[k] = stream.augment_images(self.raw(), gen)
        return self._views[k]

    def geometric(self, count: int) -> Tensor:
        """At least ``count`` views' random resized crops + flips of every image (uint8,
        ``B x V x C x S x S``), every image read once for all of them."""
        if self._geometric is None or self._geometric.shape[1] < count:
            views = max(count, self.stream.num_views)
            self._geometric = self.stream.geometric_views(self.indices, self.epoch,
                                                          self.step, views)
        return self._geometric

    def views(self, count: int) -> list[Tensor]:
        return [self.view(k) for k in range(count)]

    def rotated(self) -> Tensor:
        """SSKD's ``4B`` batch (:func:`rotated_copies`), made once per step from the data
        stream, so that fused members see the same copies."""
        if ROTATED not in self._views:
            gen = generator(self.stream.seed, "view", self.epoch, self.step, ROTATED,
                            device=self.stream.device)
            stream = self.stream
            self._views[ROTATED] = rotated_copies(self.raw(), stream.augment,
                                                  stream.mean, stream.std, gen,
                                                  stream.memory_format)
        return self._views[ROTATED]

    def fetcher(self, device: int | None = None) -> Callable[[Tensor], Tensor]:
        """Fresh augmentations of any training images (BINGO's bag neighbours); the n-th call
        of one member draws from the n-th fetch generator of this step (of its ``device``'s
        chunk with ``train.devices > 1``), so a member fetches the same images with the same
        augmentation fused or alone."""
        calls = iter(range(1 << 30))
        extra = () if device is None else (device,)

        def fetch(indices: Tensor) -> Tensor:
            gen = generator(self.stream.seed, "fetch", self.epoch, self.step, next(calls),
                            *extra, device=self.stream.device)
            return self.stream.augmented(indices.to(self.stream.device), gen)

        return fetch

    def per_device(self, devices: int) -> list[DeviceChunk]:
        """The batch split into ``devices`` per-device chunks of whole anchor groups (made
        once per step, so fused members share the chunks' tensors and teacher forwards)."""
        if devices not in self._parts:
            nb = self.stream.neighbour_batches
            group = nb.neighbours + 1 if nb is not None else 1
            rows = device_rows(self.indices.shape[0], devices, group)
            self._parts[devices] = [DeviceChunk(self, d, r) for d, r in enumerate(rows)]
        return self._parts[devices]


def device_rows(size: int, devices: int, group: int = 1) -> list[slice]:
    """Rows of each device's chunk of a ``size``-row batch: whole groups of ``group`` rows
    (an anchor and its neighbours), as even as the groups allow, empty chunks left out.

    The official CoSS sampler (paganpasta/coss-pytorch batch_sampler.py, ``CFBatchSampler``)
    gives rank r the anchors r, r + D, ... of one seeded permutation, each followed by its own
    neighbours: every GPU holds whole anchor groups. Here device d holds the d-th run of
    consecutive groups of a step's (already shuffled) anchors: the same distribution."""
    if size % group:
        raise ValueError(f"a batch of {size} rows is not whole groups of {group}")
    bounds = torch.linspace(0, size // group, devices + 1).round().long().tolist()
    return [slice(a * group, b * group) for a, b in itertools.pairwise(bounds)
            if b > a]


@dataclass
class DeviceChunk:
    """One device's part of a :class:`Batch` (``train.devices > 1``): the same interface,
    every tensor a slice of the batch's (views augmented once for the whole batch)."""

    batch: Batch
    device: int
    rows: slice
    _views: dict[int, Tensor] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return self.batch.epoch

    @property
    def step(self) -> int:
        return self.batch.step

    @property
    def indices(self) -> Tensor:
        return self.batch.indices[self.rows]

    @property
    def labels(self) -> Tensor | None:
        return None if self.batch.labels is None else self.batch.labels[self.rows]

    def view(self, k: int) -> Tensor:
        if k not in self._views:
            self._views[k] = self.batch.view(k)[self.rows]
        return self._views[k]

    def views(self, count: int) -> list[Tensor]:
        return [self.view(k) for k in range(count)]

    def rotated(self) -> Tensor:
        if ROTATED not in self._views:  # image-major: image i's copies are rows 4i..4i+3
            self._views[ROTATED] = self.batch.rotated()[4 * self.rows.start:4 * self.rows.stop]
        return self._views[ROTATED]

    def fetcher(self) -> Callable[[Tensor], Tensor]:
        return self.batch.fetcher(self.device)


@dataclass
class BatchStream:
    images: Tensor  # uint8 N x C x H x W on the device, or a streamed FolderImages
    labels: Tensor | None  # int64 N on the device, None when trials may not use labels
    mean: Tensor
    std: Tensor
    augment: AugmentConfig
    seed: int
    batch_size: int
    neighbour_batches: NeighbourBatches | None = None
    graph: Tensor | None = None  # N x K teacher neighbours (CPU), for neighbour batches
    memory_format: torch.memory_format = torch.contiguous_format
    num_views: int = 1  # views a step will ask for (a streamed folder decodes them together)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def decode_time(self) -> bool:
        """The preset's geometric part runs per image where images are read (``mocov2``:
        torchvision's RandomResizedCrop from the file's full size when streamed), its
        photometric part batched on the device."""
        return self.augment.crop == "torchvision"

    def view_seeds(self, epoch: int, step: int, size: int, views: int) -> list[list[int]]:
        """Seed of view k of the i-th image of a step: (seed, epoch, step, k, i) of the data
        stream, whoever reads the image."""
        per_view = [derive_seeds(self.seed, PURPOSES["view"], epoch, step, k, last=size)
                    for k in range(views)]
        return [list(seeds) for seeds in zip(*per_view, strict=True)] if views else \
            [[] for _ in range(size)]

    def geometric_views(self, indices: Tensor, epoch: int, step: int, views: int) -> Tensor:
        """``B x V x C x S x S`` uint8: per image and view, :func:`models.augment.geometric`
        with that view's seed (a streamed folder: at decode time, in its workers)."""
        seeds = self.view_seeds(epoch, step, int(indices.shape[0]), views)
        read_views = getattr(self.images, "views", None)
        if read_views is not None:
            out: Tensor = read_views(("views", epoch, step, views), indices, seeds, self.augment)
            return out
        raw = self.images[indices]
        return torch.stack([geometric(raw, self.augment, [torch.Generator().manual_seed(s[k])
                                                          for s in seeds])
                            for k in range(views)], dim=1)

    def augment_images(self, images: Tensor, gen: torch.Generator) -> Tensor:
        x = normalise(augment(images, self.augment, gen), self.mean, self.std)
        return x.contiguous(memory_format=self.memory_format)

    def augmented(self, indices: Tensor, gen: torch.Generator) -> Tensor:
        return self.augment_images(self.images[indices], gen)

    def plan(self, epoch: int) -> list[Tensor]:
        """The epoch's batches as index tensors (CPU), from the data stream."""
        gen = generator(self.seed, "order", epoch)
        n = int(self.images.shape[0])
        nb = self.neighbour_batches
        if nb is not None:
            if self.graph is None:
                raise ValueError("neighbour batches need the teacher's neighbour graph")
            return neighbour_batches(self.graph, nb.neighbours, nb.pool, self.batch_size, gen,
                                     nb.anchors)
        return random_batches(n, self.batch_size, gen)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        plan = self.plan(epoch)
        depth = int(getattr(self.images, "depth", 0))  # a streamed folder reads ahead
        try:
            for step, idx in enumerate(plan):
                for ahead in range(step, min(step + depth, len(plan))):
                    self._prefetch(epoch, ahead, plan[ahead])
                on_device = idx.to(self.device, non_blocking=True)
                labels = None if self.labels is None else self.labels[on_device]
                yield Batch(self, epoch, step, on_device, labels)
        finally:
            drop = getattr(self.images, "drop_pending", None)
            if drop is not None:
                drop()

    def _prefetch(self, epoch: int, step: int, indices: Tensor) -> None:
        images: Any = self.images
        if self.decode_time:
            seeds = self.view_seeds(epoch, step, int(indices.shape[0]), self.num_views)
            images.prefetch_views(("views", epoch, step, self.num_views), indices, seeds,
                                  self.augment)
        else:
            images.prefetch(indices)

    def steps_per_epoch(self) -> int:
        return len(self.plan(0))
