"""Comparison charts: one per pair, points with error bars, teacher and reference lines."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from reports.charts import (
    TEACHER_GID,
    ComparisonChart,
    build_comparison_charts,
    teacher_values,
    write_comparison_charts,
)
from reports.records import RowKey
from reports.references import reference_values
from reports.source import SweepData, load_references, load_sweep, resolve_sweep
from reports.tables import build_comparison
from tests.reports.picture_builders import (
    R18,
    TEACHER,
    TEACHER_LINEAR,
    TEACHER_TOP1,
    WRN,
    PictureStore,
    linear_top1,
    picture_store,
    picture_trials,
)

PAIR_R18 = RowKey(TEACHER, R18)
PAIR_WRN = RowKey(TEACHER, WRN)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> PictureStore:
    return picture_store(tmp_path_factory)


@pytest.fixture(scope="module")
def data(pictures: PictureStore) -> SweepData:
    return load_sweep(resolve_sweep(pictures.pictures.directory))


def _charts(data: SweepData, metric: str) -> dict[RowKey, ComparisonChart]:
    references = reference_values(load_references(data.ref), metric)
    charts = build_comparison_charts(build_comparison(data, metric), data, references)
    return {chart.row: chart for chart in charts}


def test_one_chart_per_pair_with_mean_and_sample_std(data: SweepData) -> None:
    charts = _charts(data, "knn/top1_k10")
    assert list(charts) == [PAIR_R18, PAIR_WRN]
    points = {p.label: p for p in charts[PAIR_R18].points}
    assert list(points) == ["cos", "coss (lambda=0.5)", "coss (lambda=1)"]
    coss = points["coss (lambda=0.5)"]
    assert coss.values == (60.0, 64.0)
    assert coss.mean == pytest.approx(62.0)
    assert coss.std == pytest.approx(statistics.stdev([60.0, 64.0]))  # ddof=1
    assert coss.best and not points["cos"].best
    one = points["coss (lambda=1)"]  # the other seed FAILED
    assert (one.n, one.std, one.incomplete) == (1, None, True)
    # A pair with a single seed is drawn too.
    single = {p.label: p for p in charts[PAIR_WRN].points}["coss (lambda=0.5)"]
    assert (single.n, single.mean) == (1, 66.0)


def test_teacher_and_reference_lines(data: SweepData) -> None:
    charts = _charts(data, "knn/top1_k10")
    lines = [(line.kind, line.label, line.value, line.n) for line in charts[PAIR_R18].lines]
    assert lines == [
        ("teacher", "teacher (teacher_knn/top1_k10)", TEACHER_TOP1, 0),
        ("reference", "random_init", pytest.approx(31.0), 2),
        ("reference", "ssl_only", 45.0, 1),
    ]
    # A reference applies to the pairs of its student only.
    assert [line.label for line in charts[PAIR_WRN].lines] == [
        "teacher (teacher_knn/top1_k10)",
        "supervised_only",
    ]


def test_any_metric_uses_its_teacher_metric_when_present(data: SweepData) -> None:
    assert teacher_values(data, "linear/top1") == {
        PAIR_R18: TEACHER_LINEAR,
        PAIR_WRN: TEACHER_LINEAR,
    }
    charts = _charts(data, "linear/top1")
    teacher = charts[PAIR_R18].lines[0]
    assert (teacher.kind, teacher.label) == ("teacher", "teacher (teacher_linear/top1)")
    assert teacher.value == TEACHER_LINEAR
    cos = next(p for p in charts[PAIR_R18].points if p.label == "cos")
    expected = [linear_top1(t) for t in picture_trials() if t.objective == "cos"]
    assert cos.mean == pytest.approx(statistics.fmean(expected))
    # No teacher_train_time_s: no teacher line, the chart is still drawn.
    assert teacher_values(data, "train_time_s") == {}
    timing = _charts(data, "train_time_s")
    assert list(timing) == [PAIR_R18, PAIR_WRN]
    assert not any(c.lines for c in timing.values())  # nor references with train_time_s


def test_png_and_svg_written_with_the_lines(data: SweepData, tmp_path: Path) -> None:
    charts = list(_charts(data, "knn/top1_k10").values())
    pictures = write_comparison_charts(charts, tmp_path)
    assert [p.png.name for p in pictures] == [
        "chart_dino_r50__resnet18.png",
        "chart_dino_r50__wrn_16_2.png",
    ]
    for picture in pictures:
        assert picture.png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert picture.png.read_bytes() == picture.png_bytes
        assert picture.data_uri.startswith("data:image/png;base64,iVBOR")
    svg = pictures[0].svg.read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert f'id="{TEACHER_GID}"' in svg
    assert 'id="reference-random_init"' in svg and 'id="reference-ssl_only"' in svg
    assert "teacher (teacher_knn/top1_k10)" in svg  # legend text stays text
    assert "supervised_only" not in svg  # wrn_16_2's reference, not resnet18's
    assert 'id="reference-supervised_only"' in pictures[1].svg.read_text(encoding="utf-8")
    assert "Dashed black line" in pictures[0].caption and "random_init" in pictures[0].caption
    assert not list(tmp_path.glob(".*.tmp"))
