"""Per-device batch semantics on one device (``train.devices``): what DDP on D GPUs computes.

A multi-GPU recipe such as CoSS's ImageNet run (4 GPUs x 256 images, paganpasta/coss-pytorch
train_sampled_coss.py under ``torch.distributed.launch --nproc_per_node=4``) is more than its
global batch: each GPU computes the loss on its own 256 images -- batch-level terms such as
CoSS's space similarity over those 256 rows, no all-gather -- and its BatchNorm layers
normalise with that GPU's batch statistics; DDP then averages the D gradients
(``g = (1/D) sum_d grad L_d``) and every GPU takes the same optimiser step.

:func:`per_device_step` computes exactly that with D chunks of the step's batch
(:meth:`~orchestrator.data.batches.Batch.per_device`: whole anchor groups per chunk, as the
official sampler gives each GPU whole groups): each chunk's forward, loss and backward of
``L_d / D`` in turn (gradients accumulate to the DDP average; activations of one chunk at a
time, so memory is that of one GPU's batch), then one optimiser step.

State beyond the weights follows DDP's rank 0 (whose checkpoint the official scripts save):
- BatchNorm running statistics: DDP (``broadcast_buffers=True``) broadcasts rank 0's buffers;
  with ``broadcast_buffers=False`` (CoSS) rank 0 keeps its own. Either way the model that is
  saved and evaluated has the statistics of chunk 0 alone, so the chunks after the first
  leave them as chunk 0 left them.
- Queues (SEED, DisCo, BINGO, CompRess): each chunk's loss reads the same queue (the state
  before the step) and the step enqueues every chunk's keys, in device order -- the official
  ``concat_all_gather`` before ``_dequeue_and_enqueue``.
- Momentum encoders: one EMA update per step from the averaged-gradient weights, as on every
  rank.
The loss terms a trial logs are the mean over the chunks (DDP's rank-averaged loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from losses import LossTerms, Objective, StepInputs
from orchestrator.engine.precision import autocast


def batchnorm_buffers(*modules: nn.Module) -> list[Tensor]:
    """The running statistics (mean, var, count) of every BatchNorm layer in ``modules``."""
    out: list[Tensor] = []
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                out.extend(b for b in (layer.running_mean, layer.running_var,
                                       layer.num_batches_tracked) if b is not None)
    return out


def per_device_step(student: nn.Module, objective: Objective[Any],
                    optimizer: torch.optim.Optimizer, inputs: Sequence[StepInputs],
                    device: torch.device, precision: str) -> tuple[Tensor, list[str]]:
    """One optimiser step over one :class:`StepInputs` per device (one: a plain step).
    Returns the step's ``[total, terms...]`` (mean over devices) and their names."""
    count = len(inputs)
    if count == 1:
        with autocast(device, precision):
            terms: LossTerms = objective.compute(inputs[0])
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        return terms.stacked(), terms.names()
    optimizer.zero_grad(set_to_none=True)
    buffers = batchnorm_buffers(student, objective)
    first: list[Tensor] = []
    values: Tensor | None = None
    names: list[str] = []
    for d, step in enumerate(inputs):
        with autocast(device, precision):
            terms = objective.compute(step)
        if d == 0:
            first = [b.clone() for b in buffers]  # the statistics device 0 leaves
        (terms.total / count).backward()  # accumulates (1/D) sum_d grad L_d
        part = terms.stacked() / count
        values, names = (part if values is None else values + part), terms.names()
    with torch.no_grad():
        for buffer, kept in zip(buffers, first, strict=True):
            buffer.copy_(kept)
    optimizer.step()
    assert values is not None
    return values, names
