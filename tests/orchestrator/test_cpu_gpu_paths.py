"""The device-independent parts of the CUDA path, run on CPU through the real trial engine.

What a GPU sweep runs and these tests run on CPU too:
- ``train.precision: bf16``: CPU bf16 autocast (``torch.autocast("cpu", torch.bfloat16)``) in
  the trial step and the evaluation (a forward hook sees bf16 activations) and around the
  stacked step (torch.func vmap); ``auto`` stays fp32 on CPU (the fp32 results are unchanged);
- the deferred non-finite check (``check_every`` > 1, as CUDA's 25): a member that goes
  non-finite between two checks still fails alone, naming the epoch it went non-finite in, at
  the group and at the stacked level;
- the optimiser: the fused SGD kernel CUDA uses runs on CPU (torch >= 2.4) and agrees with the
  foreach kernel CPU uses;
- ``train.compile``: torch.compile (inductor, C++ on CPU) of student and teacher.

What cannot run on CPU, and is checked by ``benchmarks/gpu_check.py`` on a GPU instead:
nvJPEG decoding (``torchvision.io.decode_jpeg(device="cuda")``), the per-trial CUDA memory
cap (``torch.cuda.set_per_process_memory_fraction``, orchestrator/engine/device.py),
``cudnn.benchmark``, CUDA graphs (``compile`` mode ``reduce-overhead``), the fused SGD's CUDA
kernel, bf16 tensor-core numerics, and bf16 inside the stacked forward (CPU autocast does not
cast the ops vmap's batching rules call; CUDA's does).
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

from orchestrator.data.datasets import DatasetBundle, Split
from orchestrator.data.datasets import load_dataset as real_load_dataset
from orchestrator.engine import group as group_module
from orchestrator.engine import member as member_module
from orchestrator.engine import stacked as stacked_module
from orchestrator.engine.member import Member
from orchestrator.engine.precision import autocast, autocast_dtype
from orchestrator.spec.config import TrialConfig
from orchestrator.spec.grid import expand
from orchestrator.spec.load import load_spec
from orchestrator.stages import teachers as teachers_module
from orchestrator.stages.trials import run_group, run_trial
from tests.orchestrator.specs import minimal_spec

# 4 steps of 16 an epoch; 64 test images. bf16 on this 2-core CPU (no native bf16) steps
# about 10 times slower than fp32: the bf16 trials stay tiny.
TRAIN_IMAGES, TEST_IMAGES = 64, 64
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_data() -> Iterator[DatasetBundle]:
    full = real_load_dataset("digits")
    small = dataclasses.replace(
        full, train=Split(full.train.images[:TRAIN_IMAGES].clone(),
                          full.train.labels[:TRAIN_IMAGES].clone()),
        test=Split(full.test.images[:TEST_IMAGES].clone(), full.test.labels[:TEST_IMAGES].clone()))

    def load(name: str, root: str | None = None, download: bool = False) -> DatasetBundle:
        return small

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(group_module, "load_dataset", load)
        mp.setattr(teachers_module, "load_dataset", load)
        yield small


def _trials(tmp: Path, *, precision: str = "bf16", epochs: int = 1, compile: bool = False,
            fuse: str = "group", name: str = "out", **grid: Any) -> list[TrialConfig]:
    """resnet8x4 students of CoSS (lambda 0.5 / 1.0) on 64 digits, a tiny SimCLR teacher
    (cached for the module in ``tmp.parent / "cache"``)."""
    data = minimal_spec(
        output_dir=str(tmp / name), cache_dir=str(tmp.parent / "cache"),
        train={"epochs": epochs, "batch_size": 16, "augment": "ssl_light",
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
    """Records the output dtypes of the Conv2d and Linear modules of the members the engine
    builds (student and objective), by module kind and train / eval mode."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, bool], set[torch.dtype]] = {}
        self.autocast: set[bool] = set()  # torch.is_autocast_enabled("cpu") in the forwards

    def __call__(self, kind: str, training: bool = True) -> set[torch.dtype]:
        return self.seen.get((kind, training), set())

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = member_module.build_member
        seen, autocast_on = self.seen, self.autocast

        # A plain function, not a bound method: deepcopy (the stack's template is a copy of
        # a member) copies a method's object, but shares a function and what it closes over.
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            seen.setdefault((type(module).__name__, module.training), set()).add(output.dtype)
            if module.training:
                autocast_on.add(torch.is_autocast_enabled("cpu"))

        def build(*args: Any, **kwargs: Any) -> Member:
            member = real(*args, **kwargs)
            for module in [*member.student.modules(), *member.objective.modules()]:
                if isinstance(module, nn.Conv2d | nn.Linear):
                    module.register_forward_hook(hook)
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
    assert seen("Conv2d") == seen("Linear") == {torch.bfloat16}  # the training step
    assert seen("Conv2d", training=False) == {torch.bfloat16}  # the evaluation
    losses = _losses(epochs)
    assert len(losses) == 1 and set(losses[0]) == {"loss/total", "loss/co", "loss/ss"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses[0].values())
    assert 0.0 <= final["knn/top1_k10"] <= 100.0

    fp32 = _Dtypes()
    fp32.watch(monkeypatch)
    auto = _trials(tmp_path, precision="auto", name="auto")[0]
    run_trial(auto)
    assert fp32("Conv2d") == fp32("Linear") == fp32("Conv2d", False) == {torch.float32}


def test_the_stacked_level_runs_under_bf16_autocast(small_data: DatasetBundle, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two bf16 members stacked (torch.func vmap under CPU autocast) against each alone (the
    member path, also bf16): the vmapped forward runs with autocast enabled, and the loss
    terms agree within bf16 tolerance (8 bits of mantissa: rtol 2e-2 after 4 steps).

    What autocast casts inside vmap differs by device: the batching rules call lower ops
    (aten::convolution for conv2d, bmm / matmul for linear) that torch's CPU autocast list
    does not cover and CUDA's does (pytorch/functorch#305, #327), so on CPU the stacked layers
    compute in fp32 while the member path computes in bf16 -- the loss terms still agree
    within bf16 tolerance. gpu_check.py's ``stacked`` check requires bf16 convolutions
    inside the stack on CUDA."""
    trials = _trials(tmp_path)
    assert len(trials) == 2
    seen = _Dtypes()
    seen.watch(monkeypatch)  # the stack's template is a copy of a member: hooks included
    outcomes, reports = _run(_moved(trials, tmp_path / "stacked"), level="stack")
    assert seen.autocast == {True}  # every training forward, the vmapped one included
    for t in trials:
        assert outcomes[t.trial_id].failure is None
        alone: list[dict[str, Any]] = []
        run_trial(_moved([t], tmp_path / "alone")[0], alone.append)
        stacked, single = _losses(reports[t.trial_id]), _losses(alone)
        assert stacked[0].keys() == single[0].keys()
        for key, value in single[0].items():
            assert stacked[0][key] == pytest.approx(value, rel=2e-2), key


def _poison(params: list[Tensor]) -> None:
    """What a diverging step leaves: non-finite weights (the next forward is NaN)."""
    with torch.no_grad():
        for p in params:
            p.fill_(float("nan"))


@pytest.mark.parametrize(("level", "step"), [("group", 3), ("stack", 0)])
def test_a_member_non_finite_between_checks_fails_alone_naming_its_epoch(
        small_data: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        level: str, step: int) -> None:
    """``check_every`` 3 (the deferred check CUDA runs every 25 steps) with 4 steps an epoch:
    one member's weights go non-finite in epoch 2 at a step no check follows at once (step 0:
    the check after step 2 sees it; step 3: only the epoch's end does). It fails alone with
    epoch 2; the other member finishes as it does without it (the group level bit for bit;
    stacked, as test_fusion.py's stacked-vs-member tolerance: alone it does not stack)."""
    trials = _trials(tmp_path, precision="auto", epochs=2)
    assert len(trials) == 2
    bad, good = trials[0], trials[1:]
    hit = {"n": 0}

    def due(batch: Any) -> bool:
        return bool(batch.epoch == 1 and batch.step == step)

    if level == "group":
        real_step = member_module.Member.step

        def member_step(self: Member, batch: Any, teacher: Any) -> None:
            if self.trial_id == bad.trial_id and due(batch):
                _poison(list(self.student.parameters()))
                hit["n"] += 1
            real_step(self, batch, teacher)

        monkeypatch.setattr(member_module.Member, "step", member_step)
    else:
        real_stack_step = stacked_module.Stack.step

        def stack_step(self: Any, batch: Any, teacher: Any) -> Tensor:
            ids = [m.trial_id for m in self.members]
            if bad.trial_id in ids and due(batch):
                i = ids.index(bad.trial_id)
                _poison([p[i] for p in self.params.values()])
                hit["n"] += 1
            out: Tensor = real_stack_step(self, batch, teacher)
            return out

        monkeypatch.setattr(stacked_module.Stack, "step", stack_step)

    outcomes, reports = _run(_moved(trials, tmp_path / "with_bad"), level, check_every=3)
    assert hit["n"] == 1
    failure = outcomes[bad.trial_id].failure
    assert failure is not None and failure.reason.startswith("non-finite loss")
    assert failure.epoch == 2
    assert [r["kind"] for r in reports[bad.trial_id]] == ["epoch", "failed"]
    clean, clean_reports = _run(_moved(good, tmp_path / "without"), level, check_every=3)
    for t in good:
        assert outcomes[t.trial_id].failure is None
        got, want = _losses(reports[t.trial_id]), _losses(clean_reports[t.trial_id])
        if level == "group":
            assert got == want
            assert _scores(outcomes[t.trial_id].metrics) == _scores(clean[t.trial_id].metrics)
        else:
            for g, w in zip(got, want, strict=True):
                assert g == pytest.approx(w, rel=1e-4)


def test_the_fused_sgd_kernel_runs_on_cpu_as_foreach_does(
        small_data: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's optimiser setting (``fused=True``) on CPU: the same trial's losses and scores
    as with CPU's ``foreach`` kernel, within float tolerance."""
    trial = _trials(tmp_path, precision="auto")[0]
    kinds: list[tuple[bool, bool]] = []
    real = member_module.build_member

    def build(*args: Any, **kwargs: Any) -> Member:
        member = real(*args, **kwargs)
        kinds.append((bool(member.optimizer.defaults["fused"]),
                      bool(member.optimizer.defaults["foreach"])))
        return member

    monkeypatch.setattr(group_module, "build_member", build)
    foreach: list[dict[str, Any]] = []
    run_trial(_moved([trial], tmp_path / "foreach")[0], foreach.append)
    monkeypatch.setattr(member_module, "SGD_KERNELS", {"cpu": "fused"})
    fused: list[dict[str, Any]] = []
    run_trial(_moved([trial], tmp_path / "fused")[0], fused.append)
    assert kinds == [(False, True), (True, False)]
    for f, e in zip(_losses(fused), _losses(foreach), strict=True):
        assert f == pytest.approx(e, rel=1e-5)
    with pytest.raises(ValueError, match="fused or foreach"):
        member_module.sgd([], trial.train, "adam")


def test_train_compile_runs_on_cpu(small_data: DatasetBundle, tmp_path: Path) -> None:
    """``train.compile``: student and teacher through torch.compile (inductor's C++ backend on
    CPU; CUDA adds CUDA graphs, mode ``reduce-overhead``): the same losses as eager within
    float tolerance (inductor fuses and reorders float arithmetic)."""
    eager, compiled = (_trials(tmp_path, precision="auto", compile=c, name=f"c{int(c)}")[0]
                       for c in (False, True))
    assert eager.trial_id != compiled.trial_id
    want: list[dict[str, Any]] = []
    run_trial(eager, want.append)
    got: list[dict[str, Any]] = []
    final = run_trial(compiled, got.append)
    for g, w in zip(_losses(got), _losses(want), strict=True):
        assert g == pytest.approx(w, rel=1e-4)
    assert 0.0 <= final["knn/top1_k10"] <= 100.0
