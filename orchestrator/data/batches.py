"""The batch stream of a group: epoch order, batch building, augmented views, extra fetches.

One object holds the whole training split as a uint8 tensor on the device (airbench style, no
DataLoader). An epoch's batches are index tensors built from the data stream; each batch's
views are augmented on first use and shared by every member that asks for them, so a fused
group samples and augments each batch once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from losses import NeighbourBatches
from models.augment import AugmentConfig, augment, normalise
from orchestrator.data.sampling import neighbour_batches, random_batches
from orchestrator.data.streams import generator

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

    def view(self, k: int) -> Tensor:
        """The ``k``-th augmented view (normalised float batch), made once per step."""
        if k not in self._views:
            gen = generator(self.stream.seed, "view", self.epoch, self.step, k,
                            device=self.stream.device)
            self._views[k] = self.stream.augmented(self.indices, gen)
        return self._views[k]

    def views(self, count: int) -> list[Tensor]:
        return [self.view(k) for k in range(count)]

    def rotated(self) -> Tensor:
        """SSKD's ``4B`` batch (:func:`rotated_copies`), made once per step from the data
        stream, so that fused members see the same copies."""
        if ROTATED not in self._views:
            gen = generator(self.stream.seed, "view", self.epoch, self.step, ROTATED,
                            device=self.stream.device)
            stream = self.stream
            self._views[ROTATED] = rotated_copies(stream.images[self.indices], stream.augment,
                                                  stream.mean, stream.std, gen,
                                                  stream.memory_format)
        return self._views[ROTATED]

    def fetcher(self) -> Callable[[Tensor], Tensor]:
        """Fresh augmentations of any training images (BINGO's bag neighbours); the n-th call
        of one member draws from the n-th fetch generator of this step, so a member fetches
        the same images with the same augmentation fused or alone."""
        calls = iter(range(1 << 30))

        def fetch(indices: Tensor) -> Tensor:
            gen = generator(self.stream.seed, "fetch", self.epoch, self.step, next(calls),
                            device=self.stream.device)
            return self.stream.augmented(indices.to(self.stream.device), gen)

        return fetch


@dataclass
class BatchStream:
    images: Tensor  # uint8 N x C x H x W on the device
    labels: Tensor | None  # int64 N on the device, None when trials may not use labels
    mean: Tensor
    std: Tensor
    augment: AugmentConfig
    seed: int
    batch_size: int
    neighbour_batches: NeighbourBatches | None = None
    graph: Tensor | None = None  # N x K teacher neighbours (CPU), for neighbour batches
    memory_format: torch.memory_format = torch.contiguous_format

    @property
    def device(self) -> torch.device:
        return self.images.device

    def augmented(self, indices: Tensor, gen: torch.Generator) -> Tensor:
        x = normalise(augment(self.images[indices], self.augment, gen), self.mean, self.std)
        return x.contiguous(memory_format=self.memory_format)

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
        for step, idx in enumerate(self.plan(epoch)):
            on_device = idx.to(self.device, non_blocking=True)
            labels = None if self.labels is None else self.labels[on_device]
            yield Batch(self, epoch, step, on_device, labels)

    def steps_per_epoch(self) -> int:
        return len(self.plan(0))
