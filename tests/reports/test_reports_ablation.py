"""Ablation tables and plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from reports.ablation import ablation_axes, ablation_stem, build_ablation, write_ablation
from reports.source import ReportError, SweepData, load_sweep, resolve_sweep
from tests.reports.report_builders import Store, multi_value


@pytest.fixture(scope="module")
def main_data(store: Store) -> SweepData:
    return load_sweep(resolve_sweep(store.root))


@pytest.fixture(scope="module")
def multi_data(store: Store) -> SweepData:
    return load_sweep(resolve_sweep(store.multi.directory))


def test_axes_that_vary(main_data: SweepData, multi_data: SweepData) -> None:
    assert ablation_axes(main_data) == ["loss.lambda"]
    assert ablation_axes(multi_data) == ["loss.lambda", "batch_size"]


def test_lambda_ablation_means(main_data: SweepData) -> None:
    ablation = build_ablation(main_data, "loss.lambda")
    frame = ablation.frame
    assert ablation.numeric
    assert set(frame["series"]) == {"coss"}  # kd has no lambda: left out
    r18 = frame[frame["student"] == "resnet18"]
    assert list(r18["value"]) == ["0.5", "1"]
    assert list(r18["mean"]) == pytest.approx([62.0, 61.0])
    assert list(r18["n"]) == [3, 1]
    assert list(r18["not_finished"]) == [0, 2]
    assert r18["std"].iloc[0] == pytest.approx(2.0)


def test_batch_size_ablation_sorted_numerically(multi_data: SweepData) -> None:
    ablation = build_ablation(multi_data, "batch_size")
    frame = ablation.frame
    assert list(frame["series"].unique()) == ["coss (lambda=0.5)", "coss (lambda=1)"]
    part = frame[frame["series"] == "coss (lambda=1)"]
    assert list(part["value"]) == ["64", "128", "256"]
    assert list(part["mean"]) == pytest.approx(
        [multi_value(1.0, bs, 0) + 0.5 for bs in (64, 128, 256)]
    )


def test_write_ablation_files(multi_data: SweepData, tmp_path: Path) -> None:
    ablation = build_ablation(multi_data, "batch_size")
    files = write_ablation(ablation, tmp_path)
    assert [p.name for p in files.paths] == [
        "ablation_batch_size.png",
        "ablation_batch_size.svg",
        "ablation_batch_size.csv",
        "ablation_batch_size.md",
    ]
    assert files.png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "<svg" in files.svg.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(files.csv.read_text(encoding="utf-8"))))
    means = {(r["series"], r["value"]): float(r["mean"]) for r in rows}
    assert means[("coss (lambda=0.5)", "128")] == pytest.approx(multi_value(0.5, 128, 0) + 0.5)
    md = files.markdown.read_text(encoding="utf-8")
    assert "| teacher | student | series | axis | value | mean | std | n | not_finished |" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_axis(main_data: SweepData) -> None:
    with pytest.raises(ReportError, match="no trial run has the param 'lr2'"):
        build_ablation(main_data, "lr2")


def test_stem() -> None:
    assert ablation_stem("loss.lambda") == "ablation_loss.lambda"
    assert ablation_stem("a/b c") == "ablation_a_b_c"
