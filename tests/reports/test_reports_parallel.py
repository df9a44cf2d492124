"""Parallel coordinates: drawn only for sweeps with 3 or more varying axes, fast for 500+."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from reports.parallel import (
    MAX_JITTER,
    NA,
    NA_POSITION,
    build_parallel,
    plot_parallel,
    varying_axes,
    write_parallel,
)
from reports.source import SweepData, SweepRef, load_sweep, resolve_sweep
from tests.reports.picture_builders import PictureStore, picture_store
from tests.reports.report_builders import Store


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> PictureStore:
    return picture_store(tmp_path_factory)


def test_drawn_with_three_or_more_axes(pictures: PictureStore, tmp_path: Path) -> None:
    data = load_sweep(resolve_sweep(pictures.pictures.directory))
    assert varying_axes(data) == ["student", "loss.name", "loss.lambda", "seed"]
    pdata = build_parallel(data, "knn/top1_k10")
    assert pdata is not None
    assert [axis.name for axis in pdata.axes] == [
        "student",
        "loss.name",
        "loss.lambda",
        "seed",
        "knn/top1_k10",
    ]
    assert sorted(pdata.run_ids) == sorted(pictures.pictures.run_ids)  # every run, failed too
    assert pdata.values.count(None) == 1  # the FAILED run: grey, at n/a
    objective = pdata.axes[1]
    assert objective.categorical and [label for _, label in objective.ticks] == ["cos", "coss"]
    assert [pos for pos, _ in objective.ticks] == [0.0, 1.0]  # evenly spaced
    lam = pdata.axes[2]
    assert [label for _, label in lam.ticks] == [NA, "0.5", "1"]  # cos has no lambda
    for axis in pdata.axes[:-1]:
        slots = [pos for pos, _ in axis.ticks]
        assert all(min(abs(p - s) for s in slots) <= MAX_JITTER + 1e-9 for p in axis.positions)
    metric = pdata.axes[-1]
    assert not metric.categorical
    assert min(metric.positions) == NA_POSITION and max(metric.positions) == pytest.approx(1.0)

    picture = write_parallel(pdata, tmp_path)
    assert [p.name for p in picture.paths] == ["parallel.png", "parallel.svg"]
    assert picture.png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "<svg" in picture.svg.read_text(encoding="utf-8")


def test_not_drawn_with_fewer_axes(pictures: PictureStore, store: Store) -> None:
    two = load_sweep(resolve_sweep(pictures.two_axes.directory))
    assert varying_axes(two) == ["loss.name", "seed"]
    assert build_parallel(two, "knn/top1_k10") is None
    noyaml = load_sweep(resolve_sweep(store.noyaml.directory))
    assert build_parallel(noyaml, "knn/top1_k10") is None
    multi = load_sweep(resolve_sweep(store.multi.directory))  # lambda, batch_size, seed
    assert build_parallel(multi, "knn/top1_k10") is not None


def _big_sweep(runs: int) -> SweepData:
    rows = []
    for index in range(runs):
        objective = ("coss", "cos", "rkd", "crd")[index % 4]
        status = "FAILED" if index % 37 == 0 else "FINISHED"
        row: dict[str, object] = {
            "run_id": f"{index:032x}",
            "status": status,
            "start_time": float(index),
            "teacher": "t",
            "student": ("resnet20", "wrn_40_1", "resnet8x4")[index % 3],
            "objective": objective,
            "seed": str(index % 5),
            "params.student": ("resnet20", "wrn_40_1", "resnet8x4")[index % 3],
            "params.loss.name": objective,
            "params.seed": str(index % 5),
            "params.batch_size": str((64, 128, 256, 512)[index // 4 % 4]),
            "params.lr": str(0.0001 * (1 + index)),  # 600 values: a linear axis
            "metrics.knn/top1_k10": None if status == "FAILED" else 40.0 + (index * 7) % 50,
        }
        if objective == "coss":
            row["params.loss.lambda"] = str((0.25, 0.5, 1.0, 2.0)[index // 16 % 4])
        rows.append(row)
    axes = ["student", "loss.name", "loss.lambda", "batch_size", "lr", "seed"]
    return SweepData(
        ref=SweepRef("sqlite:///unused.db", "0", "f" * 32),
        name="big",
        sweep_id=None,
        runs=pd.DataFrame(rows),
        axes=axes,
    )


def test_600_runs_stay_readable(tmp_path: Path) -> None:
    data = _big_sweep(600)
    pdata = build_parallel(data, "knn/top1_k10")
    assert pdata is not None
    figure = plot_parallel(pdata)
    picture = write_parallel(pdata, tmp_path)
    assert len(pdata.run_ids) == 600
    lr = next(axis for axis in pdata.axes if axis.name == "lr")
    assert not lr.categorical and len(lr.ticks) <= 8  # many values: linear, few ticks
    lam = next(axis for axis in pdata.axes if axis.name == "loss.lambda")
    assert lam.categorical and lam.ticks[0][1] == NA
    # Two line collections (no metric, metric), not one artist per run.
    assert len(figure.axes[0].collections) == 2
    assert picture.svg.stat().st_size < 3_000_000
