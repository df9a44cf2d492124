"""MLflow -> comparison tables, ablation plots and an HTML report (see docs/CONTRACTS.md).

Entry point: :func:`build_report`, wired to ``ukd report SWEEP``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import write_text
from reports.ablation import (
    Ablation,
    AblationFiles,
    ablation_axes,
    build_ablation,
    plot_ablation,
    write_ablation,
)
from reports.charts import build_comparison_charts, write_comparison_charts
from reports.curves import build_curves, plan_curves, write_curves
from reports.html import build_index_html, frame_table
from reports.parallel import MIN_AXES, build_parallel, varying_axes, write_parallel
from reports.pictures import Picture
from reports.references import reference_values
from reports.render import (
    comparison_frame,
    html_document,
    to_csv,
    to_html,
    to_html_table,
    to_latex,
    to_markdown,
)
from reports.source import (
    ReportError,
    SweepData,
    SweepRef,
    load_metric_histories,
    load_references,
    load_sweep,
    resolve_sweep,
)
from reports.stats import ALPHA, WelchResult, welch_test
from reports.tables import CellStats, ComparisonTable, build_comparison
from reports.transfer import (
    TransferTable,
    build_transfer,
    transfer_csv,
    transfer_frame,
    transfer_latex,
    transfer_markdown,
)
from reports.trials_table import build_trials_frame, trials_csv, trials_table_html

DEFAULT_METRIC = "knn/top1_k10"
REPORT_DIR = "report"

__all__ = [
    "ALPHA",
    "DEFAULT_METRIC",
    "Ablation",
    "AblationFiles",
    "CellStats",
    "ComparisonTable",
    "Picture",
    "ReportError",
    "ReportResult",
    "SweepData",
    "SweepRef",
    "WelchResult",
    "ablation_axes",
    "build_ablation",
    "build_comparison",
    "build_report",
    "comparison_frame",
    "load_sweep",
    "plot_ablation",
    "resolve_sweep",
    "to_csv",
    "to_html",
    "to_html_table",
    "to_latex",
    "to_markdown",
    "welch_test",
    "write_ablation",
]


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote."""

    out_dir: Path
    comparison_markdown: str
    """The comparison table as Markdown (also written to ``comparison.md``)."""
    comparison: dict[str, Path]
    """``{"md", "csv", "tex", "html"}`` -> path."""
    ablations: dict[str, AblationFiles]
    """Axis -> its ``ablation_<axis>.png/.svg/.csv/.md`` files."""
    index_html: Path
    paths: list[Path] = field(default_factory=list)
    """Every file written, in writing order."""
    charts: list[Picture] = field(default_factory=list)
    """Comparison charts ``chart_<teacher>__<student>.png/.svg``, one per pair."""
    curves: list[Picture] = field(default_factory=list)
    """Learning curves ``curves_<teacher>__<student>.png/.svg``, one per pair with histories."""
    parallel: Picture | None = None
    """``parallel.png/.svg`` (only for sweeps with 3 or more varying axes)."""
    trials_csv: Path | None = None
    """``trials.csv``: the per-trial table of index.html."""
    transfer: dict[str, Path] = field(default_factory=dict)
    """``{"md", "csv", "tex", "html"}`` -> the transfer table (sweeps with eval.transfer)."""


def build_report(
    sweep: str,
    out_dir: Path | None = None,
    tracking_uri: str | None = None,
    metric: str = DEFAULT_METRIC,
    axes: list[str] | None = None,
    best_epoch: bool = False,
) -> ReportResult:
    """Write the report of a sweep and return what was written.

    ``sweep``: a sweep output directory (with ``sweep.json``), or with ``tracking_uri`` a parent
    run id or an experiment name. ``out_dir`` defaults to ``<sweep output dir>/report``.
    ``axes``: the ablation axes; None plots every swept axis that varies, ``[]`` none.
    ``best_epoch``: the comparison table's cells are each trial's best periodic evaluation
    (``<metric>_best``) instead of its final value; the caption says so.
    Raises :class:`ReportError` (a ``ValueError``) with a readable message on bad input.
    """
    ref = resolve_sweep(sweep, tracking_uri)
    if out_dir is None:
        if ref.output_dir is None:
            raise ReportError(
                "the sweep's output directory is unknown (no ukd.output_dir tag): pass out_dir"
            )
        out_dir = ref.output_dir / REPORT_DIR
    out_dir = Path(out_dir)
    data = load_sweep(ref)
    if data.runs.empty:
        raise ReportError(f"parent run {ref.parent_run_id} has no trial runs")

    reference_runs = load_references(ref)
    references = reference_values(reference_runs, metric)
    transfer = build_transfer(data, reference_runs)
    table = build_comparison(data, metric, references, best_epoch)
    # Validate every requested axis before writing anything.
    ablations = [build_ablation(data, axis, metric) for axis in _axes(data, axes)]
    charts = build_comparison_charts(table, data, references)
    plan = plan_curves(data, table)
    curves = build_curves(plan, load_metric_histories(ref, plan.wanted))
    parallel = build_parallel(data, metric)
    superseded = {record.run_id for record in table.superseded}
    trials = build_trials_frame(data, metric, superseded)

    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table)
    comparison = {
        "md": write_text(out_dir / "comparison.md", markdown),
        "csv": write_text(out_dir / "comparison.csv", to_csv(table)),
        "tex": write_text(out_dir / "comparison.tex", to_latex(table)),
        "html": write_text(out_dir / "comparison.html", to_html(table)),
    }
    paths = list(comparison.values())
    written: list[tuple[Ablation, AblationFiles]] = []
    for ablation in ablations:
        files = write_ablation(ablation, out_dir)
        written.append((ablation, files))
        paths.extend(files.paths)
    chart_pictures = write_comparison_charts(charts, out_dir)
    curve_pictures = write_curves(curves, plan, out_dir)
    parallel_picture = write_parallel(parallel, out_dir) if parallel is not None else None
    for picture in [*chart_pictures, *curve_pictures, parallel_picture]:
        if picture is not None:
            paths.extend(picture.paths)
    trials_path = write_text(out_dir / "trials.csv", trials_csv(trials))
    paths.append(trials_path)
    transfer_files: dict[str, Path] = {}
    transfer_html = ""
    if transfer is not None:
        transfer_html = transfer_table_html(transfer)
        transfer_files = {
            "md": write_text(out_dir / "transfer.md", transfer_markdown(transfer)),
            "csv": write_text(out_dir / "transfer.csv", transfer_csv(transfer)),
            "tex": write_text(out_dir / "transfer.tex", transfer_latex(transfer)),
            "html": write_text(out_dir / "transfer.html", html_document(
                f"ukd transfer: {data.name}", transfer_html)),
        }
        paths.extend(transfer_files.values())
    page = build_index_html(
        data,
        table,
        written,
        charts=chart_pictures,
        curves=curve_pictures,
        parallel=parallel_picture,
        parallel_note=_parallel_note(data),
        trials_table=trials_table_html(trials, metric),
        transfer_table=transfer_html,
    )
    index = write_text(out_dir / "index.html", page)
    paths.append(index)
    return ReportResult(
        out_dir=out_dir,
        comparison_markdown=markdown,
        comparison=comparison,
        ablations={ablation.axis: files for ablation, files in written},
        index_html=index,
        paths=paths,
        charts=chart_pictures,
        curves=curve_pictures,
        parallel=parallel_picture,
        trials_csv=trials_path,
        transfer=transfer_files,
    )


def transfer_table_html(table: TransferTable) -> str:
    """The transfer table as an HTML table (class ``ukd transfer``), text escaped."""
    return frame_table(transfer_frame(table), caption=table.caption, css_class="ukd transfer")


def _parallel_note(data: SweepData) -> str:
    count = len(varying_axes(data))
    return (
        f"Drawn for sweeps with {MIN_AXES} or more varying axes; this one has {count}."
        if count < MIN_AXES
        else ""
    )


def _axes(data: SweepData, axes: list[str] | None) -> list[str]:
    if axes is None:
        return ablation_axes(data)
    return list(dict.fromkeys(axes))
