"""GPU packing: fractional ``resources.gpu``, a per-trial CUDA memory cap, waiting for a GPU's
memory between trials, and how many trials (or fused groups) run at once.

``resources.gpu: 0.25`` lets Ray place four trials (or fused groups: a Tune trial is a group)
on one GPU. Ray only counts; nothing stops one of them from taking the whole GPU's memory.
So each group caps its process's CUDA caching allocator at its share
(``torch.cuda.set_per_process_memory_fraction``), less room for the CUDA context every
process holds outside the allocator (an allocation past the cap raises CUDA's out-of-memory
error in that trial only), and before it starts it waits until the GPU has its share free: a
finished trial's process may still be releasing its memory when Ray already hands its GPU
share to the next.

The cap itself is the engine's (:mod:`orchestrator.engine.device`): a group sets it where it
runs. Torch alone; CUDA is never initialised without a GPU.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.engine.device import (
    CONTEXT_RESERVE_BYTES,
    MemInfo,
    cap_memory,
    resolve_device,
)

if TYPE_CHECKING:
    from orchestrator.spec.config import TrialConfig
    from orchestrator.spec.load import SweepSpec

WAIT_TIMEOUT_S = 300.0  # how long a group waits for its GPU share to be freed
WAIT_POLL_S = 1.0
EPS = 1e-9  # resource arithmetic: 1 / 0.1 is 9.999...


def wait_for_memory(trials: Sequence[TrialConfig], *, mem_info: MemInfo | None = None,
                    device_count: int | None = None, timeout: float = WAIT_TIMEOUT_S,
                    poll: float = WAIT_POLL_S, sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> float:
    """Before a group starts on a GPU: wait until each GPU this process sees has the group's
    share of memory free (``resources.gpu`` of the total, all of it for whole GPUs, less
    the context reserve). Returns the seconds waited; raises RuntimeError naming the GPU and
    the memory when it is not freed within ``timeout`` (the group then fails with that
    reason instead of running out of memory halfway). No-op without CUDA or on CPU."""
    if not trials:
        return 0.0
    runtime = trials[0].runtime
    gpu = runtime.gpu_fraction
    if gpu <= 0 or runtime.device == "cpu":
        return 0.0
    if mem_info is None or device_count is None:
        import torch

        if not torch.cuda.is_available():
            return 0.0
        mem_info = mem_info or (lambda i: torch.cuda.mem_get_info(i))
        device_count = torch.cuda.device_count() if device_count is None else device_count
    share = min(gpu, 1.0)
    started = clock()
    while True:
        short = []
        for index in range(device_count):
            free, total = mem_info(index)
            needed = max(0.0, share * total - CONTEXT_RESERVE_BYTES)
            if free < needed:
                short.append((index, free, total, needed))
        if not short:
            return clock() - started
        if clock() - started >= timeout:
            index, free, total, needed = short[0]
            raise RuntimeError(
                f"GPU {index} did not free the memory this group needs within {timeout:.0f}s: "
                f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB, needs "
                f"{needed / 2**30:.1f} GiB (resources.gpu: {gpu:g}); another process holds "
                "it (nvidia-smi shows which)")
        sleep(poll)


# ----------------------------------------------------------------------------- scheduling


def local_nodes() -> list[dict[str, float]]:
    """This machine as one node, as a local Ray sees it: its CPUs and CUDA devices."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # no usable CUDA runtime: no GPUs
        gpus = 0
    return [{"CPU": float(cpus or 1), "GPU": float(gpus)}]


def per_node(need_cpu: float, need_gpu: float, node: Mapping[str, float]) -> int:
    """How many units needing ``need_cpu`` CPUs and ``need_gpu`` GPUs fit on ``node``."""
    counts = []
    if need_cpu > 0:
        counts.append(math.floor(float(node.get("CPU", 0.0)) / need_cpu + EPS))
    if need_gpu > 0:
        counts.append(math.floor(float(node.get("GPU", 0.0)) / need_gpu + EPS))
    return max(0, min(counts)) if counts else 0


def concurrency(spec: SweepSpec | Any, groups_count: int,
                nodes: Sequence[Mapping[str, float]] | None = None) -> tuple[int, str]:
    """How many of ``groups_count`` Tune trials (fused groups or trials alone) run at once on
    ``nodes`` (per-node resource dicts as Ray reports them; default: this machine), and what
    limits that number."""
    res = spec.resources
    nodes = list(nodes) if nodes is not None else local_nodes()
    limits = {"resources": sum(per_node(res.cpu, res.gpu, n) for n in nodes)}
    if res.max_concurrent:
        limits["resources.max_concurrent"] = res.max_concurrent
    limits["their number"] = groups_count
    by = min(limits, key=lambda k: limits[k])
    return limits[by], by


def concurrency_line(spec: SweepSpec | Any, groups_count: int,
                     nodes: Sequence[Mapping[str, float]] | None = None,
                     unit: str = "groups") -> str:
    """One line for ``ukd sweep --dry-run``: how many of the ``groups_count`` groups (or
    trials, ``unit``) run at once on the cluster's resources (``nodes``: per-node resource
    dicts, e.g. from ``ray_runtime.cluster_nodes``; default this machine), and why."""
    res = spec.resources
    nodes = list(nodes) if nodes is not None else local_nodes()
    at_once, by = concurrency(spec, groups_count, nodes)
    cpus = sum(float(n.get("CPU", 0.0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0.0)) for n in nodes)
    need = f"cpu {res.cpu:g}" + (f" + gpu {res.gpu:g}" if res.gpu else "")
    where = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {cpus:g} CPU, {gpus:g} GPU"
    if at_once == 0 and groups_count:
        return (f"at once: 0 of {groups_count} {unit} -- no node has {need} for one ({where});"
                " they would wait for resources that never come")
    packing = ""
    if 0 < res.gpu < 1:
        packing = (f"; {per_node(0, res.gpu, {'GPU': 1.0})} per GPU, each with its share of "
                   "the GPU's memory")
    return (f"at once: {at_once} of {groups_count} {unit} ({need} each; {where}{packing}; "
            f"limited by {by})")


def in_gpu_share(fn: Callable[..., Any], gpu: float, device: str) -> Callable[..., Any]:
    """``fn`` with this process's CUDA memory capped at ``gpu`` first: the stage tasks (teacher,
    references) get the same cap as the trials when they share a GPU."""

    def capped(*args: Any, **kwargs: Any) -> Any:
        cap_memory(resolve_device(device), gpu)
        return fn(*args, **kwargs)

    capped.__name__ = getattr(fn, "__name__", "stage")
    capped.__qualname__ = capped.__name__
    return capped
