"""GPU packing (orchestrator/runtime/gpu.py): the memory cap a fractional ``resources.gpu`` gives a
trial, waiting for a GPU's memory between trials, and the dry-run's "at once" line. On CPU
with torch.cuda stood in for; the last test runs on a real GPU when there is one."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from orchestrator.engine.device import CONTEXT_RESERVE_BYTES, cap_memory, memory_cap
from orchestrator.runtime.gpu import (
    concurrency_line,
    local_nodes,
    per_node,
    wait_for_memory,
)
from orchestrator.spec.config import ResourcesConfig, TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from tests.orchestrator.sweeps import tiny_spec, write_spec

GIB = 2**30


def _trials(tmp_path: Path, gpu: float, device: str = "cuda") -> list[TrialConfig]:
    spec = tiny_spec(tmp_path, tmp_path / "cache", resources={"gpu": gpu, "device": device})
    return expand(load_spec(write_spec(tmp_path / "s.yaml", spec)))


def test_the_grid_hands_resources_gpu_to_each_trial(tmp_path: Path) -> None:
    trials = _trials(tmp_path, 0.25)
    assert [t.runtime.gpu_fraction for t in trials] == [0.25]
    again = TrialConfig.from_dict(trials[0].to_dict())  # what the Ray worker rebuilds
    assert again.runtime.gpu_fraction == 0.25


@pytest.mark.parametrize(("gpu", "total", "expected"), [
    (0.25, 80 * GIB, 0.25 - CONTEXT_RESERVE_BYTES / (80 * GIB)),
    (0.5, 16 * GIB, 0.5 - CONTEXT_RESERVE_BYTES / (16 * GIB)),
    (0.25, 2 * GIB, 0.125),  # a small GPU: never below half the share
    (0.0, 80 * GIB, None),  # CPU trials
    (1.0, 80 * GIB, None),  # a whole GPU: no cap
    (2.0, 80 * GIB, None),
])
def test_memory_cap(gpu: float, total: int, expected: float | None) -> None:
    cap = memory_cap(gpu, total)
    assert cap == (pytest.approx(expected) if expected is not None else None)


def test_four_quarter_trials_and_their_contexts_fit_one_gpu() -> None:
    total = 80 * GIB
    cap = memory_cap(0.25, total)
    assert cap is not None
    assert 4 * (cap * total + CONTEXT_RESERVE_BYTES) <= total


def test_cap_memory_sets_the_fraction_on_the_trials_cuda_device() -> None:
    calls: list[tuple[float, int]] = []

    def info(index: int) -> tuple[int, int]:
        return 70 * GIB, 80 * GIB

    fraction = cap_memory(torch.device("cuda", 0), 0.25, mem_info=info,
                          set_fraction=lambda f, i: calls.append((f, i)))
    assert calls == [(fraction, 0)]
    assert fraction == pytest.approx(memory_cap(0.25, 80 * GIB))


@pytest.mark.parametrize(("device", "gpu"), [("cpu", 0.25), ("cuda:0", 0.0), ("cuda:0", 1.0)])
def test_no_cap_on_cpu_or_whole_gpus(device: str, gpu: float) -> None:
    def never_info(index: int) -> tuple[int, int]:
        raise AssertionError("torch.cuda touched")

    def never_set(fraction: float, index: int) -> None:
        raise AssertionError("torch.cuda touched")

    assert cap_memory(torch.device(device), gpu, mem_info=never_info,
                      set_fraction=never_set) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.now


def test_waits_until_the_previous_trial_freed_its_share(tmp_path: Path) -> None:
    trials = _trials(tmp_path, 0.25)
    clock = FakeClock()
    frees = iter([5 * GIB, 12 * GIB, 30 * GIB])  # the finished trial's process lets go

    waited = wait_for_memory(trials, mem_info=lambda i: (next(frees), 80 * GIB),
                             device_count=1, timeout=60, poll=1.0, sleep=clock.sleep,
                             clock=clock.time)
    assert clock.sleeps == [1.0, 1.0] and waited == 2.0


def test_a_gpu_that_stays_full_fails_the_group_with_the_numbers(tmp_path: Path) -> None:
    trials = _trials(tmp_path, 0.25)
    clock = FakeClock()
    with pytest.raises(RuntimeError, match=r"GPU 0 did not free .* 3\.0 GiB free of 80\.0 GiB, "
                                           r"needs 19\.2 GiB \(resources\.gpu: 0\.25\)"):
        wait_for_memory(trials, mem_info=lambda i: (3 * GIB, 80 * GIB), device_count=1,
                        timeout=10, poll=1.0, sleep=clock.sleep, clock=clock.time)
    assert clock.now == 10.0


@pytest.mark.parametrize(("gpu", "device"), [(0.0, "auto"), (0.5, "cpu")])
def test_no_wait_for_cpu_trials(tmp_path: Path, gpu: float, device: str) -> None:
    trials = _trials(tmp_path, gpu, device)

    def never(index: int) -> tuple[int, int]:
        raise AssertionError("torch.cuda touched")

    assert wait_for_memory(trials, mem_info=never, device_count=1) == 0.0


def _spec(**resources: Any) -> SimpleNamespace:
    return SimpleNamespace(resources=dataclasses.replace(ResourcesConfig(), **resources))


@pytest.mark.parametrize(("resources", "nodes", "groups", "fragments"), [
    ({"cpu": 1, "gpu": 0.25}, [{"CPU": 16, "GPU": 1}], 10,
     ["at once: 4 of 10 groups", "cpu 1 + gpu 0.25 each", "1 node: 16 CPU, 1 GPU",
      "4 per GPU", "limited by resources"]),
    ({"cpu": 1, "gpu": 0.25}, [{"CPU": 16, "GPU": 4}, {"CPU": 2, "GPU": 4}], 40,
     ["at once: 18 of 40 groups", "2 nodes: 18 CPU, 8 GPU"]),  # 16 + 2 (CPU-bound there)
    ({"cpu": 0.1, "gpu": 0.1}, [{"CPU": 1, "GPU": 1}], 20,
     ["at once: 10 of 20 groups", "10 per GPU"]),  # 1 / 0.1 is 9.999...
    ({"cpu": 1, "gpu": 0.25, "max_concurrent": 2}, [{"CPU": 16, "GPU": 1}], 10,
     ["at once: 2 of 10", "limited by resources.max_concurrent"]),
    ({"cpu": 1}, [{"CPU": 16}], 3, ["at once: 3 of 3 groups", "limited by their number"]),
    ({"cpu": 1, "gpu": 0.5}, [{"CPU": 16}], 4,
     ["at once: 0 of 4 groups -- no node has cpu 1 + gpu 0.5", "never come"]),
])
def test_concurrency_line(resources: dict[str, float], nodes: list[dict[str, float]],
                          groups: int, fragments: list[str]) -> None:
    line = concurrency_line(_spec(**resources), groups, nodes)
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_concurrency_line_defaults_to_this_machine() -> None:
    cpus = local_nodes()[0]["CPU"]
    line = concurrency_line(_spec(cpu=1), 1000, unit="trials")
    assert f"at once: {int(cpus)} of 1000 trials" in line and "1 node" in line


def test_per_node_needs_every_resource() -> None:
    assert per_node(2, 0, {"CPU": 7}) == 3
    assert per_node(1, 1, {"CPU": 8, "GPU": 2}) == 2
    assert per_node(1, 1, {"CPU": 8}) == 0


CAP_ON_GPU = """
import torch
from orchestrator.engine.device import cap_memory
device = torch.device("cuda", 0)
fraction = cap_memory(device, 0.25)
total = torch.cuda.mem_get_info(0)[1]
ok = torch.empty(int(fraction * total * 0.9), dtype=torch.uint8, device=device)
del ok
torch.cuda.empty_cache()
try:
    torch.empty(int(0.3 * total), dtype=torch.uint8, device=device)
except torch.OutOfMemoryError:
    print("capped", fraction)
else:
    print("not capped")
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cap_is_enforced_on_a_real_gpu() -> None:
    """A trial with resources.gpu 0.25 can allocate up to its share and no more."""
    result = subprocess.run([sys.executable, "-c", CAP_ON_GPU], capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("capped"), result.stdout + result.stderr
