"""A reference that beats every objective of its row is never hidden: its cell is bold and
marked ‡ in every format, the caption names it, and the chart draws its line bold with the
mark. The picture store's wrn_16_2 row (coss 66.0) has supervised_only at 75.0; the resnet18
row (best objective 62.0) has random_init 31.0 and ssl_only 45.0 below it."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from reports.charts import build_comparison_charts, write_comparison_charts
from reports.records import RowKey
from reports.references import reference_values
from reports.render import comparison_frame, to_html_table, to_latex, to_markdown
from reports.source import SweepData, load_references, load_sweep, resolve_sweep
from reports.tables import ABOVE, ComparisonTable, build_comparison
from tests.reports.picture_builders import R18, TEACHER, WRN, PictureStore, picture_store

PAIR_R18 = RowKey(TEACHER, R18)
PAIR_WRN = RowKey(TEACHER, WRN)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SweepData:
    store: PictureStore = picture_store(tmp_path_factory)
    return load_sweep(resolve_sweep(store.pictures.directory))


@pytest.fixture(scope="module")
def table(data: SweepData) -> ComparisonTable:
    return build_comparison(data, "knn/top1_k10",
                            reference_values(load_references(data.ref), "knn/top1_k10"))


def test_which_references_are_above(table: ComparisonTable) -> None:
    assert table.references_above(PAIR_WRN) == ["supervised_only"]
    assert table.references_above(PAIR_R18) == []
    # the objective's best is still the best objective of its row
    assert table.tests[PAIR_WRN][0] is not None


def test_markdown_cell_and_caption(table: ComparisonTable) -> None:
    lines = [line for line in to_markdown(table).splitlines() if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(headers, cells, strict=True))
    assert rows[PAIR_WRN.label]["supervised_only"] == f"**75.0 (n=1)** {ABOVE}"
    assert rows[PAIR_R18.label]["random_init"] == "31.0 ± 1.4 (n=2)"
    assert rows[PAIR_R18.label]["ssl_only"] == "45.0 (n=1)"
    assert ABOVE not in rows[PAIR_R18.label]["random_init"] + rows[PAIR_R18.label]["ssl_only"]
    assert (f"{ABOVE}: a reference above every objective of its row" in table.caption
            and f"{PAIR_WRN.label}: supervised_only 75.0 > best objective 66.0"
            in table.caption)
    assert R18 + ":" not in table.caption.split(ABOVE)[-1]


def test_csv_latex_and_html(table: ComparisonTable) -> None:
    frame = pd.read_csv(io.StringIO(comparison_frame(table).to_csv(index=False)))
    wrn, r18 = frame[frame["student"] == WRN], frame[frame["student"] == R18]
    assert set(wrn["reference_supervised_only_above"]) == {1}
    assert set(wrn["reference_random_init_above"]) == {0}
    assert set(r18["reference_random_init_above"]) == {0}
    assert set(r18["reference_ssl_only_above"]) == {0}
    latex = to_latex(table)
    assert r"\textbf{75.0 (n=1)}$^\ddagger$" in latex
    assert r"\textbf{45.0" not in latex and "above every objective" in latex
    html = to_html_table(table)
    assert ('<td class="num reference above" title="above every objective of the row">'
            f'<strong>75.0 (n=1)</strong> <span class="above">{ABOVE}</span></td>') in html
    assert '<td class="num reference">45.0 (n=1)</td>' in html
    assert "above every objective of its row" in html.split("</caption>")[0]


def test_the_chart_shows_it_the_same_way(table: ComparisonTable, data: SweepData,
                                         tmp_path: Path) -> None:
    references = reference_values(load_references(data.ref), "knn/top1_k10")
    charts = {c.row: c for c in build_comparison_charts(table, data, references)}
    assert [(line.label, line.above) for line in charts[PAIR_WRN].lines
            if line.kind == "reference"] == [("supervised_only", True)]
    assert not any(line.above for line in charts[PAIR_R18].lines)
    r18, wrn = write_comparison_charts([charts[PAIR_R18], charts[PAIR_WRN]], tmp_path)
    svg = wrn.svg.read_text(encoding="utf-8")
    assert f"supervised_only: 75.00 (n=1) {ABOVE} above every objective" in svg
    assert f"Bold line marked {ABOVE}: supervised_only (75.00)" in wrn.caption
    assert ABOVE not in r18.svg.read_text(encoding="utf-8") and ABOVE not in r18.caption
