"""build_report with the pictures: files, ReportResult and the sections of index.html."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from reports import ReportResult, build_report
from tests.reports.picture_builders import PictureStore, picture_store

IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> PictureStore:
    return picture_store(tmp_path_factory)


@pytest.fixture(scope="module")
def result(pictures: PictureStore, tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    return build_report(
        str(pictures.pictures.directory), out_dir=tmp_path_factory.mktemp("pictures-report")
    )


def test_pictures_written_and_listed(result: ReportResult) -> None:
    stems = [p.stem for p in result.charts] + [p.stem for p in result.curves]
    assert stems == [
        "chart_dino_r50__resnet18",
        "chart_dino_r50__wrn_16_2",
        "curves_dino_r50__resnet18",
        "curves_dino_r50__wrn_16_2",
    ]
    assert result.parallel is not None and result.parallel.stem == "parallel"
    names = {p.name for p in result.paths}
    for stem in [*stems, "parallel"]:
        assert {f"{stem}.png", f"{stem}.svg"} <= names
        assert (result.out_dir / f"{stem}.svg").read_text(encoding="utf-8").count("<svg") == 1
    assert (
        "trials.csv" in names and "comparison.md" in names and "ablation_loss.lambda.png" in names
    )
    assert sorted(p.name for p in result.out_dir.iterdir()) == sorted(names)
    assert len(names) == len(result.paths)


def test_index_embeds_every_picture(result: ReportResult) -> None:
    page = result.index_html.read_text(encoding="utf-8")
    embedded = [base64.b64decode(data) for data in IMG_RE.findall(page)]
    assert page.count("<img") == len(embedded) == 6  # ablation, 2 charts, 2 curves, parallel
    pictures = [*result.charts, *result.curves, result.parallel]
    for picture in pictures:
        assert picture is not None
        assert picture.png.read_bytes() in embedded
        assert f'id="fig-{picture.stem}"' in page
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    for section in ("Learning curves", "Parallel coordinates", "All trials"):
        assert f">{section}</h2>" in page
    assert page.index("fig-chart_dino_r50__resnet18") < page.index("Trials not finished")
    assert "band: min-max over seeds" in page


def test_trials_section_lists_every_run(pictures: PictureStore, result: ReportResult) -> None:
    page = result.index_html.read_text(encoding="utf-8")
    trials = page[page.index('<table class="ukd trials">') :]
    for run_id in pictures.pictures.run_ids:
        assert f"<code>{run_id}</code>" in trials
    assert "<td>NaN loss</td>" in trials
    for run_id in pictures.pictures.reference_ids:
        assert run_id not in page  # reference runs are no trials


def test_other_metric_and_two_axis_sweep(pictures: PictureStore, tmp_path: Path) -> None:
    linear = build_report(
        str(pictures.pictures.directory), out_dir=tmp_path / "linear", metric="linear/top1"
    )
    svg = linear.charts[0].svg.read_text(encoding="utf-8")
    assert "teacher (teacher_linear/top1)" in svg and 'id="reference-random_init"' in svg

    two = build_report(str(pictures.two_axes.directory), out_dir=tmp_path / "two")
    assert two.parallel is None and not (tmp_path / "two" / "parallel.png").exists()
    page = two.index_html.read_text(encoding="utf-8")
    assert "Drawn for sweeps with 3 or more varying axes; this one has 2." in page
    assert page.count("<img") == len(two.charts) + len(two.curves) == 2
    assert not list((tmp_path / "two").glob(".*.tmp"))
