"""Comparison charts: one per teacher -> student pair, every objective column's metric as a
point with an error bar (mean ± sample std over seeds, the seeds as dots), the teacher's own
value (``teacher_<metric>``) and the reference rows as horizontal lines; a reference above
every objective of the pair is drawn bold and marked ‡, as in the table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common import names
from reports.pictures import Picture, save_picture, slug, unique_stems
from reports.records import RowKey, finite_value
from reports.references import ReferenceValue, references_for
from reports.source import SweepData
from reports.stats import SampleSummary
from reports.tables import ABOVE, DAGGER, ComparisonTable

TEACHER_GID = "teacher-line"
REFERENCE_GID_PREFIX = "reference-"
_REFERENCE_STYLES: dict[str, tuple[str, str]] = {
    "random_init": ("#7f7f7f", ":"),
    "ssl_only": ("#9467bd", "-."),
    "supervised_only": ("#8c564b", "-"),
}
_OTHER_REFERENCE_STYLE = ("#17becf", "-.")


@dataclass(frozen=True)
class ChartPoint(SampleSummary):
    """One objective column of a pair."""

    label: str
    values: tuple[float, ...]
    """The finished seeds' values."""
    incomplete: bool
    """Trials of the cell failed, were killed, are running or are missing."""
    best: bool



@dataclass(frozen=True)
class ChartLine:
    """A horizontal line: the teacher (``kind="teacher"``) or a reference row."""

    kind: str
    label: str
    value: float
    n: int
    above: bool = False
    """A reference above every objective of the pair (bold, marked ``ABOVE``)."""

    @property
    def gid(self) -> str:
        """SVG id of the line (``teacher-line``, ``reference-<name>``)."""
        return TEACHER_GID if self.kind == "teacher" else REFERENCE_GID_PREFIX + slug(self.label)


@dataclass(frozen=True)
class ComparisonChart:
    row: RowKey
    metric: str
    points: list[ChartPoint]
    lines: list[ChartLine]
    """The teacher line first (when the runs have ``teacher_<metric>``), then references."""

    @property
    def stem(self) -> str:
        return f"chart_{slug(self.row.teacher)}__{slug(self.row.student)}"


def teacher_values(data: SweepData, metric: str) -> dict[RowKey, float]:
    """Mean of ``teacher_<metric>`` over the trial runs of each pair that logged it."""
    column = f"metrics.{names.teacher_metric(metric)}"
    frame = data.runs
    if column not in frame.columns:
        return {}
    grouped: dict[RowKey, list[float]] = {}
    for teacher, student, value in zip(
        frame["teacher"], frame["student"], frame[column], strict=True
    ):
        number = finite_value(value)
        if number is None:
            continue
        row = RowKey(_label(teacher), _label(student))
        grouped.setdefault(row, []).append(number)
    return {row: statistics.fmean(values) for row, values in grouped.items()}


def build_comparison_charts(
    table: ComparisonTable, data: SweepData, references: Sequence[ReferenceValue] = ()
) -> list[ComparisonChart]:
    """One chart per row of the table (pairs with a single seed included)."""
    teacher = teacher_values(data, table.metric)
    teacher_name = names.teacher_metric(table.metric)
    charts: list[ComparisonChart] = []
    for row in table.rows:
        points: list[ChartPoint] = []
        for column in table.columns:
            cell = table.cell(row, column)
            if cell is None:
                continue
            points.append(
                ChartPoint(
                    label=column.label,
                    values=tuple(cell.values),
                    incomplete=cell.incomplete,
                    best=cell.best,
                )
            )
        lines: list[ChartLine] = []
        if row in teacher:
            lines.append(ChartLine("teacher", f"teacher ({teacher_name})", teacher[row], 0))
        above = table.references_above(row)
        for ref in references_for(references, row.student):
            if ref.metric == table.metric and ref.mean is not None:
                lines.append(ChartLine("reference", ref.reference, ref.mean, ref.n,
                                       ref.reference in above))
        charts.append(ComparisonChart(row=row, metric=table.metric, points=points, lines=lines))
    return charts


def plot_comparison_chart(chart: ComparisonChart) -> Figure:
    """Points with error bars per objective column, seeds as dots, lines for the teacher and
    the references (Agg canvas)."""
    count = max(1, len(chart.points))
    figure = Figure(figsize=(max(6.0, 1.0 * count + 4.0), 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for x, point in enumerate(chart.points):
        color = "#2ca02c" if point.best else "#1f77b4"
        mean = point.mean
        if mean is not None:
            offsets = _dot_offsets(point.n)
            ax.scatter(
                [x + o for o in offsets],
                list(point.values),
                s=14,
                color="#555555",
                alpha=0.55,
                zorder=3,
                linewidths=0,
            )
            ax.errorbar(
                [x],
                [mean],
                yerr=[[point.std or 0.0], [point.std or 0.0]] if point.std is not None else None,
                fmt="o",
                markersize=8,
                capsize=5,
                elinewidth=1.6,
                color=color,
                zorder=4,
            )
    for index, line in enumerate(chart.lines):
        if line.kind == "teacher":
            color, style, width = "black", "--", 1.5
            label = f"{line.label}: {line.value:.2f}"
        else:
            color, style = _REFERENCE_STYLES.get(line.label, _OTHER_REFERENCE_STYLE)
            width = 2.8 if line.above else 1.4
            label = f"{line.label}: {line.value:.2f} (n={line.n})"
            if line.above:
                label += f" {ABOVE} above every objective"
        artist = ax.axhline(
            line.value, color=color, linestyle=style, linewidth=width, label=label, zorder=2 + index
        )
        artist.set_gid(line.gid)
    ticks: list[str] = []
    for point in chart.points:
        text = point.label.replace(" (", "\n(", 1) + f"\nn={point.n}"
        text += f" {DAGGER}" if point.incomplete else ""
        if point.n == 0:
            text += "\n(no finished run)"
        ticks.append(text)
    ax.set_xticks(range(len(chart.points)), ticks)
    if len(chart.points) > 4:
        for tick in ax.get_xticklabels():
            tick.set_rotation(25)
            tick.set_horizontalalignment("right")
    ax.set_xlim(-0.6, max(0.6, len(chart.points) - 0.4))
    ax.set_ylabel(chart.metric)
    ax.set_title(f"{chart.row.teacher} → {chart.row.student}", fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.margins(y=0.1)
    if chart.lines:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if not any(point.values for point in chart.points) and not chart.lines:
        ax.text(0.5, 0.5, "no finished run", transform=ax.transAxes, ha="center")
    return figure


def chart_caption(chart: ComparisonChart) -> str:
    parts = [
        f"{chart.metric} of {chart.row.label}: per objective the mean over seeds with error bars "
        "of ± sample std (ddof=1; none with one seed), each seed as a grey dot, the best in "
        f"green; {DAGGER}: some trials of the cell did not finish."
    ]
    teacher = [line for line in chart.lines if line.kind == "teacher"]
    refs = [line for line in chart.lines if line.kind == "reference"]
    if teacher:
        parts.append(
            f"Dashed black line: the teacher's own value ({names.teacher_metric(chart.metric)})."
        )
    if refs:
        parts.append(
            "Other horizontal lines: reference rows ("
            + ", ".join(line.label for line in refs)
            + "), mean over their seeds."
        )
    above = [line for line in refs if line.above]
    if above:
        parts.append(
            f"Bold line marked {ABOVE}: "
            + ", ".join(f"{line.label} ({line.value:.2f})" for line in above)
            + " above every objective of the pair."
        )
    return " ".join(parts)


def write_comparison_charts(charts: Sequence[ComparisonChart], out_dir: Path) -> list[Picture]:
    """Write ``chart_<teacher>__<student>.png/.svg`` per chart."""
    pictures: list[Picture] = []
    for chart, stem in zip(charts, unique_stems(c.stem for c in charts), strict=True):
        figure = plot_comparison_chart(chart)
        pictures.append(
            save_picture(
                figure,
                out_dir,
                stem,
                title=f"{chart.row.label}: {chart.metric}",
                caption=chart_caption(chart),
            )
        )
    return pictures


def _dot_offsets(count: int) -> list[float]:
    """Horizontal offsets that spread ``count`` seed dots beside the mean marker."""
    if count <= 1:
        return [0.18]
    width = 0.16
    return [0.18 + width * (i / (count - 1) - 0.5) for i in range(count)]


def _label(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return str(value) or "?"


