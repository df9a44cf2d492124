"""Comparison table: aggregation, markers, expected counts and the four output formats."""

from __future__ import annotations

import csv
import io
import statistics

import pytest

from reports.records import ColumnKey, RowKey
from reports.render import comparison_frame, to_csv, to_html, to_latex, to_markdown
from reports.source import ReportError, SweepData, load_sweep, resolve_sweep
from reports.stats import welch_test
from reports.tables import ComparisonTable, build_comparison
from tests.reports.report_builders import TEACHER, Store, multi_value

R18 = RowKey(TEACHER, "resnet18")
MOB = RowKey(TEACHER, "mobilenet_v3")
COSS_05 = ColumnKey("coss", (("loss.lambda", "0.5"),))
COSS_1 = ColumnKey("coss", (("loss.lambda", "1"),))
KD = ColumnKey("kd")


@pytest.fixture(scope="module")
def main_data(store: Store) -> SweepData:
    return load_sweep(resolve_sweep(store.root))


@pytest.fixture(scope="module")
def table(main_data: SweepData) -> ComparisonTable:
    return build_comparison(main_data)


def test_rows_and_columns(table: ComparisonTable) -> None:
    assert table.rows == [MOB, R18]
    assert table.columns == [COSS_05, COSS_1, KD]
    assert [c.label for c in table.columns] == ["coss (lambda=0.5)", "coss (lambda=1)", "kd"]
    assert table.axes == ["loss.lambda"]
    assert table.seeds == ["0", "1", "2"]


def test_mean_sample_std_and_n(table: ComparisonTable) -> None:
    cell = table.cell(R18, COSS_05)
    assert cell is not None
    assert (cell.n, cell.expected) == (3, 3)
    assert cell.mean == pytest.approx(62.0)
    assert cell.std == pytest.approx(2.0)  # sample std, ddof=1 (population std would be 1.63)
    assert cell.std == pytest.approx(statistics.stdev([60.0, 62.0, 64.0]))
    assert cell.text() == "62.0 ± 2.0 (n=3)"
    assert not cell.incomplete


def test_failed_killed_and_one_seed_cell(table: ComparisonTable) -> None:
    cell = table.cell(R18, COSS_1)
    assert cell is not None
    assert (cell.n, cell.failed, cell.killed, cell.missing) == (1, 1, 1, 0)
    assert cell.std is None
    assert cell.text() == "61.0 (n=1, 1 failed, 1 killed) †"
    assert "±" not in cell.text()


def test_missing_trial_counted(table: ComparisonTable) -> None:
    cell = table.cell(R18, KD)
    assert cell is not None
    assert (cell.n, cell.missing, cell.failed) == (2, 1, 0)
    assert cell.mean == pytest.approx(55.5)
    assert cell.text() == "55.5 ± 0.7 (n=2, 1 missing) †"


def test_retried_trial_counts_once(table: ComparisonTable) -> None:
    cell = table.cell(MOB, COSS_05)
    assert cell is not None
    assert (cell.n, cell.failed, cell.missing) == (3, 0, 0)
    assert cell.mean == pytest.approx(51.0)


def test_best_marker_and_welch(table: ComparisonTable) -> None:
    best = {
        (row.student, col.label)
        for (row, col), cell in table.cells.items()
        if cell.best  # one per row here
    }
    assert best == {("resnet18", "coss (lambda=0.5)"), ("mobilenet_v3", "coss (lambda=1)")}
    best_col, runner_up, result = table.tests[MOB]
    assert (best_col, runner_up) == (COSS_1, COSS_05)
    expected = welch_test([53.0, 55.0, 57.0], [50.0, 51.0, 52.0])
    assert result.t == pytest.approx(expected.t)
    assert result.p == pytest.approx(expected.p)
    # resnet18: the runner-up (coss lambda=1) has a single finished seed.
    best_col, runner_up, result = table.tests[R18]
    assert (best_col, runner_up) == (COSS_05, COSS_1)
    assert result.text() == "n/a (n<2)"


def test_teacher_reference(table: ComparisonTable) -> None:
    assert table.teacher_metric == "teacher_knn/top1_k10"
    assert table.teacher_ref[R18] == pytest.approx(75.0)


def test_caption_states_metric_test_and_seeds(table: ComparisonTable) -> None:
    caption = table.caption
    assert "knn/top1_k10" in caption
    assert "Welch" in caption and "two-sided" in caption and "0.05" in caption
    assert "{0, 1, 2}" in caption
    assert "ddof=1" in caption


def test_markdown(table: ComparisonTable) -> None:
    md = to_markdown(table)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| teacher -> student"))
    assert header == (
        "| teacher -> student | teacher | coss (lambda=0.5) | coss (lambda=1) | kd "
        "| best vs runner-up |"
    )
    r18 = next(line for line in lines if line.startswith("| dino_r50 -> resnet18"))
    assert "**62.0 ± 2.0 (n=3)**" in r18
    assert "61.0 (n=1, 1 failed, 1 killed) †" in r18
    assert "55.5 ± 0.7 (n=2, 1 missing) †" in r18
    assert "| 75.0 |" in r18
    assert "n/a (n<2)" in r18
    mob = next(line for line in lines if line.startswith("| dino_r50 -> mobilenet_v3"))
    assert "**55.0 ± 2.0 (n=3)**" in mob
    assert "vs coss (lambda=0.5): p=0.055" in mob


def test_csv_is_numeric(table: ComparisonTable) -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == 6
    by_key = {(r["student"], r["column"]): r for r in rows}
    r = by_key[("resnet18", "coss (lambda=0.5)")]
    assert float(r["mean"]) == pytest.approx(62.0)
    assert float(r["std"]) == pytest.approx(2.0)
    assert (r["n"], r["failed"], r["best"], r["loss.lambda"]) == ("3", "0", "1", "0.5")
    r = by_key[("resnet18", "coss (lambda=1)")]
    assert (r["n"], r["failed"], r["killed"], r["best"], r["std"]) == ("1", "1", "1", "0", "")
    assert by_key[("resnet18", "kd")]["missing"] == "1"
    assert by_key[("resnet18", "kd")]["loss.lambda"] == ""
    best_mob = by_key[("mobilenet_v3", "coss (lambda=1)")]
    assert float(best_mob["welch_p"]) == pytest.approx(table.tests[MOB][2].p or 0.0)
    assert best_mob["significant"] == "0"
    frame = comparison_frame(table)
    assert frame["n"].dtype.kind == "i" and frame["mean"].dtype.kind == "f"


def test_latex_booktabs(table: ComparisonTable) -> None:
    tex = to_latex(table)
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\caption{"):
        assert command in tex
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"\textbf{62.0 $\pm$ 2.0}" in tex
    assert r"$^\dagger$" in tex
    assert r"knn/top1\_k10" in tex
    assert "dino\\_r50 $\\rightarrow$ resnet18" in tex
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    assert all(line.endswith(r"\\") for line in body.strip().splitlines())
    assert all(line.count("&") == 5 for line in body.strip().splitlines())


def test_html_table(table: ComparisonTable) -> None:
    page = to_html(table)
    assert page.startswith("<!DOCTYPE html>")
    assert "<strong>62.0 ± 2.0</strong>" in page
    assert page.count("<tr>") == 3
    assert "teacher -&gt; student" in page


def test_other_metric(main_data: SweepData) -> None:
    table = build_comparison(main_data, "knn/top5_k20")
    cell = table.cell(R18, COSS_05)
    assert cell is not None and cell.mean == pytest.approx(82.0)
    assert table.teacher_ref[R18] == pytest.approx(90.0)
    with pytest.raises(ReportError, match=r"no trial run has the metric 'knn/top1_k99'"):
        build_comparison(main_data, "knn/top1_k99")


def test_multiple_axes_columns_sorted_numerically(store: Store) -> None:
    table = build_comparison(load_sweep(resolve_sweep(store.multi.directory)))
    assert table.axes == ["loss.lambda", "batch_size"]
    assert [c.label for c in table.columns] == [
        "coss (lambda=0.5, batch_size=64)",
        "coss (lambda=0.5, batch_size=128)",
        "coss (lambda=0.5, batch_size=256)",
        "coss (lambda=1, batch_size=64)",
        "coss (lambda=1, batch_size=128)",
        "coss (lambda=1, batch_size=256)",
    ]
    row = table.rows[0]
    cell = table.cell(row, ColumnKey("coss", (("loss.lambda", "1"), ("batch_size", "256"))))
    assert cell is not None
    assert cell.mean == pytest.approx(multi_value(1.0, 256, 0) + 0.5)
    assert cell.std == pytest.approx(statistics.stdev([0.0, 1.0]))
    assert cell.best


def test_expected_seeds_from_runs_without_trials_yaml(store: Store) -> None:
    table = build_comparison(load_sweep(resolve_sweep(store.noyaml.directory)))
    row = RowKey("supervised_r50", "resnet18")
    assert table.seeds == ["0", "1"]
    kd = table.cell(row, ColumnKey("kd"))
    assert kd is not None and (kd.n, kd.missing, kd.expected) == (1, 1, 2)
    assert kd.text() == "65.0 (n=1, 1 missing) †"
    rkd = table.cell(row, ColumnKey("rkd"))
    assert rkd is not None and rkd.text() == "66.0 (n=1, 1 running) †"
    assert table.teacher_ref[row] is None
    assert table.teacher_metric is None  # no run logged a teacher reference: no column
    assert "| teacher |" not in to_markdown(table)
