"""The device-independent parts of the CUDA path, run on CPU through the real trial engine.

What a GPU sweep runs and these tests run on CPU too:
- ``train.precision: bf16``: CPU bf16 autocast (``torch.autocast("cpu", torch.bfloat16)``) in
  the trial step, the stacked step (torch.func vmap) and the evaluation; a forward hook sees
  bf16 activations. ``auto`` stays fp32 on CPU (the fp32 results are unchanged).
- the deferred non-finite check (``check_every`` > 1, as CUDA's 25): a member that goes
  non-finite between two checks still fails alone, naming the epoch it went non-finite in, at
  the group and at the stacked level;
- the optimiser: the fused SGD kernel CUDA uses runs on CPU (torch >= 2.4) and agrees with the
  foreach kernel CPU uses;
- ``train.compile``: torch.compile (inductor, C++ on CPU) of student and teacher.

What cannot run on CPU, and is checked by ``benchmarks/gpu_check.py`` on a GPU instead:
nvJPEG decoding (``torchvision.io.decode_jpeg(device="cuda")``), the per-trial CUDA memory cap
(``torch.cuda.set_per_process_memory_fraction``, orchestrator/gpu.py), ``cudnn.benchmark``,
CUDA graphs (``compile`` mode ``reduce-overhead`` on CUDA), the fused SGD's CUDA kernel and
bf16 tensor-core numerics (CPU bf16 rounds the same formats with other kernels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

from orchestrator import teachers as teachers_module
from orchestrator.config import TrialConfig
from orchestrator.datasets import DatasetBundle, Split
from orchestrator.datasets import load_dataset as real_load_dataset
from orchestrator.engine import group as group_module
from orchestrator.engine import member as member_module
from orchestrator.engine import stacked as stacked_module
from orchestrator.engine.group import run_group, run_trial
from orchestrator.engine.member import Member
from orchestrator.engine.precision import autocast, autocast_dtype
from orchestrator.grid import expand
from orchestrator.spec import load_spec
from tests.orchestrator.specs import minimal_spec

TRAIN_IMAGES = 256  # 4 steps of 64 an epoch
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_data() -> Iterator[DatasetBundle]:
    full = real_load_dataset("digits")
    small = dataclasses.replace(full, train=Split(full.train.images[:TRAIN_IMAGES].clone(),
                                                  full.train.labels[:TRAIN_IMAGES].clone()))

    def load(name: str, root: str | None = None, download: bool = False) -> DatasetBundle:
        return small

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(group_module, "load_dataset", load)
        mp.setattr(teachers_module, "load_dataset", load)
        yield small


def _trials(tmp: Path, *, precision: str = "bf16", epochs: int = 1, compile: bool = False,
            fuse: str = "group", name: str = "out", **grid: Any) -> list[TrialConfig]:
    """resnet8x4 students of CoSS (lambda 0.5 / 1.0) on 256 digits, a tiny SimCLR teacher
    (cached for the module in ``tmp.parent / "cache"``)."""
    data = minimal_spec(
        output_dir=str(tmp / name), cache_dir=str(tmp.parent / "cache"),
        train={"epochs": epochs, "batch_size": 64, "augment": "ssl_light",
               "precision": precision, "compile": compile},
        knn={"k": [10]}, resources={"fuse": fuse, "device": "cpu"})
    data["grid"] = {"teacher": "t", "student": "resnet8x4",
                    "loss": [{"name": "coss", "lambda": [0.5, 1.0], "neighbours": 0}],
                    **grid}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return expand(load_spec(path))


def _moved(trials: list[TrialConfig], directory: Path) -> list[TrialConfig]:
    return [dataclasses.replace(t, runtime=dataclasses.replace(
        t.runtime, trial_dir=str(directory / t.trial_id))) for t in trials]


def _run(trials: list[TrialConfig], level: str = "group", check_every: int | None = None
         ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    reports: dict[str, list[dict[str, Any]]] = {}
    outcomes = run_group(trials, lambda tid, m: reports.setdefault(tid, []).append(m),
                         check_every=check_every, level=level)
    return outcomes, reports


def _losses(reports: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k.startswith("loss/")} for r in reports
            if r["kind"] == "epoch"]


def _scores(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_time_s")}


class _Dtypes:
    """Records the dtype of every Conv2d output of the students the engine builds."""

    def __init__(self) -> None:
        self.train: set[torch.dtype] = set()
        self.eval: set[torch.dtype] = set()

    def hook(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        (self.train if module.training else self.eval).add(output.dtype)

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = member_module.build_member

        def build(*args: Any, **kwargs: Any) -> Member:
            member = real(*args, **kwargs)
            for module in member.student.modules():
                if isinstance(module, nn.Conv2d):
                    module.register_forward_hook(self.hook)
            return member

        monkeypatch.setattr(group_module, "build_member", build)


def test_precision_table() -> None:
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert autocast_dtype(CPU, "auto") is None and autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(torch.device("cuda"), "auto") is torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), "fp32") is None
    with autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16
    with autocast(CPU, "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_a_bf16_trial_on_cpu_runs_under_autocast(small_data: DatasetBundle, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """run_trial with ``precision: bf16`` on CPU: the student's convolutions give bf16 in the
    training step and in the evaluation, the loss stays finite, the evaluation reports."""
    trial = _trials(tmp_path)[0]
    seen = _Dtypes()
    seen.watch(monkeypatch)
    epochs: list[dict[str, Any]] = []
    final = run_trial(trial, epochs.append)
    assert seen.train == {torch.bfloat16} and seen.eval == {torch.bfloat16}
    losses = _losses(epochs)
    assert len(losses) == 1 and set(losses[0]) == {"loss/total", "loss/co", "loss/ss"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses[0].values())
    assert 0.0 <= final["knn/top1_k10"] <= 100.0

    fp32 = _Dtypes()
    fp32.watch(monkeypatch)
    auto = _trials(tmp_path, precision="auto", name="auto")[0]
    run_trial(auto)
    assert fp32.train == {torch.float32} and fp32.eval == {torch.float32}  # auto: fp32 on CPU
