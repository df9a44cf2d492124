"""build_report end to end, from a sweep directory with sweep.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports import ReportError, ReportResult, build_report
from tests.reports.report_builders import Store


@pytest.fixture(scope="module")
def result(store: Store) -> ReportResult:
    return build_report(str(store.root))


def test_writes_everything_into_sweep_report_dir(store: Store, result: ReportResult) -> None:
    assert result.out_dir == store.root.resolve() / "report"
    names = sorted(p.name for p in result.out_dir.iterdir())
    assert names == [
        "ablation_loss.lambda.csv",
        "ablation_loss.lambda.md",
        "ablation_loss.lambda.png",
        "ablation_loss.lambda.svg",
        "chart_dino_r50__mobilenet_v3.png",
        "chart_dino_r50__mobilenet_v3.svg",
        "chart_dino_r50__resnet18.png",
        "chart_dino_r50__resnet18.svg",
        "comparison.csv",
        "comparison.html",
        "comparison.md",
        "comparison.tex",
        "curves_dino_r50__mobilenet_v3.png",
        "curves_dino_r50__mobilenet_v3.svg",
        "curves_dino_r50__resnet18.png",
        "curves_dino_r50__resnet18.svg",
        "index.html",
        "parallel.png",
        "parallel.svg",
        "trials.csv",
    ]
    assert sorted(p.name for p in result.paths) == names
    assert result.index_html == result.out_dir / "index.html"
    assert set(result.comparison) == {"md", "csv", "tex", "html"}
    assert list(result.ablations) == ["loss.lambda"]
    assert [p.stem for p in result.charts] == [
        "chart_dino_r50__mobilenet_v3",
        "chart_dino_r50__resnet18",
    ]
    assert len(result.curves) == 2 and result.parallel is not None
    assert result.trials_csv == result.out_dir / "trials.csv"
    assert result.paths[-1] == result.index_html  # written last
    for path in result.paths:
        assert path.stat().st_size > 0


def test_markdown_returned_and_written(result: ReportResult) -> None:
    assert result.comparison["md"].read_text(encoding="utf-8") == result.comparison_markdown
    assert "**62.0 ± 2.0 (n=3)**" in result.comparison_markdown


def test_index_html_is_self_contained_and_escaped(result: ReportResult) -> None:
    page = result.index_html.read_text(encoding="utf-8")
    # ablation, 2 comparison charts, 2 learning curves, parallel coordinates
    assert page.count('<img src="data:image/png;base64,') == 6
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    # The spec holds "<script>alert('x')</script> & co": shown escaped in a <pre>.
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert '<pre class="spec">' in page
    # Failed / killed / retried / missing trials are listed, with the failure reason.
    assert "CUDA out of memory" in page
    assert "<td>FAILED (retried)</td>" in page and "NaN loss" in page
    assert "<td>KILLED</td>" in page
    assert "<td>MISSING</td>" in page
    # comparison, trials not finished, ablation, all trials
    assert page.count("<table") == 4


def test_explicit_out_dir_axes_metric_and_tracking_uri(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build_report(
        "multi", out_dir=out, tracking_uri=store.uri, metric="knn/top5_k20", axes=["batch_size"]
    )
    assert result.out_dir == out
    assert list(result.ablations) == ["batch_size"]
    assert "knn/top5_k20" in result.comparison_markdown
    assert (out / "ablation_batch_size.png").is_file()
    assert not (out / "ablation_loss.lambda.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    none = build_report("multi", out_dir=tmp_path / "none", tracking_uri=store.uri, axes=[])
    assert none.ablations == {}


def test_errors_write_nothing(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ReportError, match="no trial runs"):
        build_report(str(store.empty.directory), out_dir=out)
    with pytest.raises(ReportError, match="no trial run has the param"):
        build_report(str(store.multi.directory), out_dir=out, axes=["nope"])
    with pytest.raises(ReportError, match="no trial run has the metric"):
        build_report(str(store.multi.directory), out_dir=out, metric="knn/top1_k7")
    assert not out.exists()


def test_report_is_rewritten_in_place(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "again"
    first = build_report(str(store.noyaml.directory), out_dir=out)
    before = {p: p.stat().st_ino for p in first.paths}
    second = build_report(str(store.noyaml.directory), out_dir=out)
    assert sorted(second.paths) == sorted(first.paths)
    # Atomic replace: each file is a new inode, never truncated in place.
    assert all(p.stat().st_ino != before[p] for p in second.paths)
    assert "n/a" in second.comparison_markdown
