"""Ablation plots: the metric against one swept axis, one line per objective, one subplot per
teacher -> student pair, error bars = sample std (ddof=1) over seeds."""

from __future__ import annotations

import io
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.atomic import write_bytes, write_text
from reports.records import (
    FINISHED,
    ColumnKey,
    RowKey,
    TrialRecord,
    as_number,
    canonical,
    dedupe,
    objective_axes,
    records_from_frame,
    require_metric,
    sweep_axes,
    value_sort_key,
)
from reports.render import markdown_frame
from reports.source import ReportError, SweepData

ABLATION_COLUMNS = [
    "teacher",
    "student",
    "series",
    "axis",
    "value",
    "mean",
    "std",
    "n",
    "not_finished",
]


@dataclass(frozen=True)
class Ablation:
    axis: str
    metric: str
    frame: pd.DataFrame
    """Columns :data:`ABLATION_COLUMNS`; one line per (pair, series, axis value)."""
    numeric: bool
    """Whether every value of the axis is a number (plotted on a numeric x axis)."""

    @property
    def stem(self) -> str:
        return ablation_stem(self.axis)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        self.frame.to_csv(buffer, index=False, lineterminator="\n")
        return buffer.getvalue()

    def to_markdown(self) -> str:
        caption = (
            f"**Ablation over `{self.axis}`.** {self.metric}: mean ± sample std (ddof=1) over "
            "seeds of the finished trials (n); not_finished = failed, killed, running or "
            f"finished without the metric. Runs without a `{self.axis}` param are left out."
        )
        return caption + "\n\n" + markdown_frame(self.frame)


def ablation_stem(axis: str) -> str:
    """File stem ``ablation_<axis>`` (characters other than ``[A-Za-z0-9._-]`` -> ``_``)."""
    return "ablation_" + re.sub(r"[^A-Za-z0-9._-]", "_", axis)


def ablation_axes(data: SweepData) -> list[str]:
    """Swept axes worth a plot: in ``ukd.axes`` (not seed/teacher/student/objective) and
    with at least two distinct values among the trial runs."""
    axes: list[str] = []
    for axis in objective_axes(sweep_axes(data)):
        column = f"params.{axis}"
        if column in data.runs.columns:
            values = {canonical(v) for v in data.runs[column]} - {None}
            if len(values) >= 2:
                axes.append(axis)
    return axes


def build_ablation(data: SweepData, axis: str, metric: str = "knn/top1_k10") -> Ablation:
    """Aggregate the metric per (pair, series, value of ``axis``).

    A series is the objective with the other swept settings fixed (e.g. ``coss (batch_size=256)``
    when ablating ``loss.lambda``). Runs without the axis param (objectives that do not have it)
    are left out.
    """
    require_metric(data.runs, metric)
    column = f"params.{axis}"
    if column not in data.runs.columns or not data.runs[column].notna().any():
        known = ", ".join(ablation_axes(data)) or "none"
        raise ReportError(f"no trial run has the param {axis!r}; swept axes: {known}")
    others = [a for a in objective_axes(sweep_axes(data)) if a != axis]
    keys = [*others, axis]
    records = [
        r for r in dedupe(records_from_frame(data.runs, metric, keys), keys) if axis in r.params
    ]

    groups: dict[tuple[RowKey, ColumnKey, str], list[TrialRecord]] = {}
    for record in records:
        groups.setdefault((record.row, record.column(others), record.params[axis]), []).append(
            record
        )
    ordered = sorted(
        groups.items(),
        key=lambda item: (item[0][0].sort_key(), item[0][1].sort_key(), value_sort_key(item[0][2])),
    )
    lines = []
    for (row, series, value), members in ordered:
        values = [r.value for r in members if r.status == FINISHED and r.value is not None]
        lines.append(
            {
                "teacher": row.teacher,
                "student": row.student,
                "series": series.label,
                "axis": axis,
                "value": value,
                "mean": statistics.fmean(values) if values else math.nan,
                "std": statistics.stdev(values) if len(values) >= 2 else math.nan,
                "n": len(values),
                "not_finished": len(members) - len(values),
            }
        )
    frame = pd.DataFrame(lines, columns=ABLATION_COLUMNS)
    numeric = bool(len(frame)) and all(as_number(str(v)) is not None for v in frame["value"])
    return Ablation(axis=axis, metric=metric, frame=frame, numeric=numeric)


def plot_ablation(ablation: Ablation) -> Figure:
    """One subplot per teacher -> student pair, one error-bar line per series (Agg canvas)."""
    frame = ablation.frame
    pairs = list(dict.fromkeys(zip(frame["teacher"], frame["student"], strict=True)))
    ncols = max(1, min(3, len(pairs)))
    nrows = max(1, math.ceil(len(pairs) / ncols))
    figure = Figure(figsize=(5.2 * ncols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(figure)
    categories = sorted(set(frame["value"]), key=value_sort_key)
    positions = {value: i for i, value in enumerate(categories)}
    axes_list = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for index, (teacher, student) in enumerate(pairs):
        ax = axes_list[index]
        part = frame[(frame["teacher"] == teacher) & (frame["student"] == student)]
        for series, lines in part.groupby("series", sort=False):
            lines = lines[lines["n"] > 0]
            if lines.empty:
                continue
            if ablation.numeric:
                x = [float(v) for v in lines["value"]]
            else:
                x = [float(positions[v]) for v in lines["value"]]
            ax.errorbar(
                x,
                lines["mean"].tolist(),
                yerr=lines["std"].fillna(0.0).tolist(),
                marker="o",
                capsize=3,
                label=str(series),
            )
        ax.set_title(f"{teacher} → {student}", fontsize=10)
        ax.set_xlabel(ablation.axis)
        ax.set_ylabel(ablation.metric)
        ax.grid(True, alpha=0.3)
        if ablation.numeric:
            numbers = [float(v) for v in categories]
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(categories)), categories)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes_list[len(pairs) :]:
        ax.set_visible(False)
    figure.suptitle(f"{ablation.metric} vs {ablation.axis} (error bars: std over seeds)")
    return figure


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else None
    figure.savefig(buffer, format=fmt, dpi=110, metadata=metadata)
    return buffer.getvalue()


@dataclass(frozen=True)
class AblationFiles:
    axis: str
    png: Path
    svg: Path
    csv: Path
    markdown: Path
    png_bytes: bytes

    @property
    def paths(self) -> list[Path]:
        return [self.png, self.svg, self.csv, self.markdown]


def write_ablation(ablation: Ablation, out_dir: Path) -> AblationFiles:
    """Write ``ablation_<axis>.png/.svg/.csv/.md`` atomically into ``out_dir``."""
    figure = plot_ablation(ablation)
    png = figure_bytes(figure, "png")
    svg = figure_bytes(figure, "svg")
    stem = out_dir / ablation.stem
    return AblationFiles(
        axis=ablation.axis,
        png=write_bytes(stem.with_name(stem.name + ".png"), png),
        svg=write_bytes(stem.with_name(stem.name + ".svg"), svg),
        csv=write_text(stem.with_name(stem.name + ".csv"), ablation.to_csv()),
        markdown=write_text(stem.with_name(stem.name + ".md"), ablation.to_markdown()),
        png_bytes=png,
    )
