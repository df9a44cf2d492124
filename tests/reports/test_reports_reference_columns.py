"""Reference columns (random_init, ssl_only, supervised_only) in the comparison table next to
the teacher, in every format; the caption's last-epoch / best-epoch statement; any metric."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from reports import ReportError, build_report
from reports.render import comparison_frame, to_html_table, to_latex, to_markdown
from reports.tables import ComparisonTable
from tests.reports.picture_builders import TEACHER_LINEAR, PictureStore, picture_store


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> PictureStore:
    return picture_store(tmp_path_factory)


@pytest.fixture(scope="module")
def knn_table(pictures: PictureStore, tmp_path_factory: pytest.TempPathFactory
              ) -> ComparisonTable:
    return _table(pictures, tmp_path_factory.mktemp("ref-columns"), "knn/top1_k10")


def _table(pictures: PictureStore, out: Path, metric: str, best: bool = False
           ) -> ComparisonTable:
    from reports import load_sweep, resolve_sweep
    from reports.references import reference_values
    from reports.source import load_references
    from reports.tables import build_comparison

    ref = resolve_sweep(pictures.pictures.directory)
    values = reference_values(load_references(ref), metric)
    return build_comparison(load_sweep(ref), metric, values, best)


def _markdown_rows(table: ComparisonTable) -> dict[str, dict[str, str]]:
    lines = [line for line in to_markdown(table).splitlines() if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(headers, cells, strict=True))
    return rows


def test_reference_columns_next_to_the_teacher(knn_table: ComparisonTable) -> None:
    assert knn_table.reference_kinds == ["random_init", "ssl_only", "supervised_only"]
    lines = [line for line in to_markdown(knn_table).splitlines() if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    assert headers[:5] == ["teacher -> student", "teacher", "random_init", "ssl_only",
                           "supervised_only"]
    rows = _markdown_rows(knn_table)
    r18, wrn = rows["dino_r50 -> resnet18"], rows["dino_r50 -> wrn_16_2"]
    # per student architecture, mean ± sample std over the finished seeds (newest run a seed)
    assert r18["random_init"] == "31.0 ± 1.4 (n=2)" and r18["ssl_only"] == "45.0 (n=1)"
    assert r18["supervised_only"] == "—"
    assert wrn["random_init"] == "—" and wrn["supervised_only"] == "**75.0 (n=1)** ‡"
    assert r18["teacher"] == "70.0"
    caption = knn_table.caption
    assert "Cells: the final value (last epoch)." in caption
    assert "References, the row's student without a teacher" in caption
    assert "random_init: untrained" in caption


def test_reference_columns_in_csv_latex_and_html(knn_table: ComparisonTable) -> None:
    frame = comparison_frame(knn_table)
    assert {"reference_random_init", "reference_ssl_only",
            "reference_supervised_only"} <= set(frame.columns)
    r18 = frame[frame["student"] == "resnet18"]
    assert set(r18["reference_random_init"]) == {31.0}
    assert r18["reference_supervised_only"].isna().all()
    back = pd.read_csv(io.StringIO(frame.to_csv(index=False)))
    assert back["reference_ssl_only"].dropna().unique().tolist() == [45.0]
    latex = to_latex(knn_table)
    assert r"random\_init & ssl\_only & supervised\_only" in latex
    assert r"31.0 $\pm$ 1.4 (n=2)" in latex
    html = to_html_table(knn_table)
    assert "<th>random_init</th>" in html and '<td class="num reference">31.0 ± 1.4 (n=2)' in html


def test_best_epoch_table_says_so(pictures: PictureStore, tmp_path: Path) -> None:
    table = _table(pictures, tmp_path, "knn/top1_k10", best=True)
    assert table.value_metric == "knn/top1_k10_best"
    assert "best epoch" in table.caption and "selection on the test set" in table.caption
    assert "knn/top1_k10_best_epoch" in table.caption
    assert comparison_frame(table)["metric"].unique().tolist() == ["knn/top1_k10_best"]
    rows = _markdown_rows(table)
    assert rows["dino_r50 -> resnet18"]["teacher"] == "70.0"  # the teacher's plain value
    assert rows["dino_r50 -> resnet18"]["random_init"] == "31.0 ± 1.4 (n=2)"


def test_best_epoch_of_a_metric_never_evaluated_periodically(pictures: PictureStore,
                                                             tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"eval\.every > 0"):
        build_report(str(pictures.pictures.directory), out_dir=tmp_path / "r",
                     metric="linear/top1", best_epoch=True)
    assert not (tmp_path / "r").exists()


def test_any_evaluator_metric(pictures: PictureStore, tmp_path: Path) -> None:
    result = build_report(str(pictures.pictures.directory), out_dir=tmp_path / "r",
                          metric="linear/top1", axes=[])
    table = result.comparison_markdown
    assert "linear/top1 (%)" in table
    assert f"| {TEACHER_LINEAR:.1f} | 32.0 ± 1.4 (n=2) | 46.0 (n=1) |" in table
    assert all(p.is_file() for p in result.paths)
    assert any(p.name.startswith("chart_") and p.suffix == ".png" for p in result.paths)
