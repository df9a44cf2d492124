"""The transfer table (reports/transfer.py) on hand-made runs frames: cells by hand, the
per-run mean over datasets, a retried trial counted once, teacher and reference rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.source import SweepData, SweepRef
from reports.transfer import build_transfer, transfer_csv, transfer_markdown

C10, PETS = "metrics.transfer/cifar10/top1", "metrics.transfer/pets/mean_per_class"


def _trial(trial: str, lam: str, seed: str, c10: float, pets: float, start: float,
           status: str = "FINISHED") -> dict[str, object]:
    return {"run_id": f"r{trial}{start}", "status": status, "start_time": start,
            "trial_id": trial, "teacher": "t", "student": "resnet18", "objective": "coss",
            "seed": seed, "params.loss.lambda": lam, "params.seed": seed, C10: c10, PETS: pets,
            "metrics.teacher_transfer/cifar10/top1": 90.0,
            "metrics.teacher_transfer/pets/mean_per_class": 88.0}


def _data() -> tuple[SweepData, pd.DataFrame]:
    runs = pd.DataFrame([
        _trial("a", "1", "0", 80.0, 60.0, 1.0),
        _trial("b", "1", "1", 84.0, 70.0, 2.0),
        _trial("b", "1", "1", 10.0, 10.0, 0.5),  # an earlier run of trial b: superseded
        _trial("c", "1", "2", 50.0, 50.0, 3.0, status="FAILED"),  # not averaged
        _trial("d", "2", "0", 70.0, float("nan"), 4.0),  # no pets: no per-run mean
    ])
    refs = pd.DataFrame([
        {"run_id": f"x{s}", "reference": "random_init", "status": "FINISHED",
         "start_time": 1.0, "student": "resnet18", "seed": str(s),
         "tags.ukd.reference_key": f"k{s}", C10: 30.0 + s, PETS: 20.0}
        for s in (0, 1)])
    data = SweepData(SweepRef("sqlite:///x", "1", "p"), "s", None, runs, ["loss.lambda", "seed"])
    return data, refs


def test_cells_are_mean_and_sample_std_over_seeds() -> None:
    data, refs = _data()
    table = build_transfer(data, refs)
    assert table is not None
    assert table.datasets == (("cifar10", "top1"), ("pets", "mean_per_class"))
    rows = {row.label: row for row in table.rows}
    assert list(rows) == ["teacher t", "t -> resnet18 coss (lambda=1)",
                          "t -> resnet18 coss (lambda=2)", "resnet18 random_init"]
    lam1 = rows["t -> resnet18 coss (lambda=1)"].cells
    assert lam1["cifar10"].values == (80.0, 84.0) and lam1["cifar10"].std == pytest.approx(
        math.sqrt(8.0))
    assert lam1["pets"].mean == 65.0
    assert lam1["mean"].values == (70.0, 77.0)  # per run (80+60)/2, (84+70)/2
    lam2 = rows["t -> resnet18 coss (lambda=2)"].cells
    assert lam2["cifar10"].values == (70.0,) and "pets" not in lam2 and "mean" not in lam2
    assert rows["teacher t"].cells["mean"].values == (89.0,)
    assert rows["resnet18 random_init"].cells["cifar10"].values == (30.0, 31.0)
    csv = transfer_csv(table).splitlines()
    assert csv[0].startswith("row,kind,cifar10_mean,cifar10_std,cifar10_n")
    assert "| 82.00 ± 2.83 (n=2) | 65.00 ± 7.07 (n=2) | 73.50 ± 4.95 (n=2) |" in \
        transfer_markdown(table)


def test_no_transfer_metric_no_table() -> None:
    data, refs = _data()
    runs = data.runs.drop(columns=[C10, PETS])
    bare = SweepData(data.ref, data.name, None, runs, data.axes)
    assert build_transfer(bare, refs) is None
