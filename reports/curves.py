"""Learning curves: per teacher -> student pair, one panel per loss term (``loss/<term>``) and
per periodic evaluation metric, one line per objective column against epoch, the mean over its
seeds with a min-max band.

Histories come from ``MlflowClient.get_metric_history``
(:func:`reports.source.load_metric_histories`), read only for the runs and metrics drawn:
:func:`plan_curves` says which, from the final metrics in the runs frame.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from common import names
from reports.pictures import Picture, save_picture, series_colors, slug, unique_stems
from reports.records import FINISHED, ColumnKey, RowKey, finite_value
from reports.source import History, SweepData
from reports.tables import ComparisonTable

BAND = "min-max over seeds"
"""What the band around each mean curve spans (said in the caption)."""
MARKER_STEPS = 25
"""Curves with at most this many steps also get a marker per step."""
_NOT_EVALUATION = (names.LOSS_PREFIX, names.TEACHER_PREFIX, names.PRETRAIN_PREFIX)
_NOT_EVALUATION_NAMES = frozenset({names.LR, names.EPOCH_TIME, names.TRAIN_TIME})


@dataclass(frozen=True)
class CurvePlan:
    """Which histories to read: the finished runs per pair and objective column, and per run
    the metrics it logged among the loss terms and the evaluation metrics."""

    metric: str
    groups: dict[RowKey, dict[ColumnKey, list[str]]]
    """Run ids per pair and column, columns in table order."""
    loss_metrics: list[str]
    """``loss/total`` first, then the other terms, sorted."""
    eval_metrics: list[str]
    """The report's metric first, then the others with a ``<metric>_best`` sibling."""
    wanted: dict[str, list[str]] = field(default_factory=dict)
    """Run id -> the metrics to read for it (see :func:`reports.source.load_metric_histories`)."""


@dataclass(frozen=True)
class CurveSeries:
    """One objective column's curve of one metric: per step the mean, min and max over its
    runs that logged the step."""

    label: str
    steps: tuple[int, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    runs: int
    """Runs with at least one logged value."""


@dataclass(frozen=True)
class CurvePanel:
    metric: str
    series: list[CurveSeries]


@dataclass(frozen=True)
class PairCurves:
    row: RowKey
    labels: list[str]
    """Every column label of the pair, in table order (fixes each column's colour)."""
    panels: list[CurvePanel]

    @property
    def stem(self) -> str:
        return f"curves_{slug(self.row.teacher)}__{slug(self.row.student)}"


def evaluation_metrics(columns: Sequence[str], metric: str) -> list[str]:
    """Metrics that may be logged periodically: ``metric`` and every metric that has a
    ``<name>_best`` sibling (the best over periodic evaluations); never loss terms, teacher
    references, lr or timings."""
    present = {c.removeprefix("metrics.") for c in columns if c.startswith("metrics.")}
    found = [metric] if metric in present else []
    for name in sorted(present):
        if name.endswith((names.BEST_SUFFIX, names.BEST_EPOCH_SUFFIX)):
            continue
        if name.startswith(_NOT_EVALUATION) or name in _NOT_EVALUATION_NAMES:
            continue
        if name != metric and name + names.BEST_SUFFIX in present:
            found.append(name)
    return found


def loss_metrics(columns: Sequence[str]) -> list[str]:
    """``loss/<term>`` metrics of the runs frame, ``loss/total`` first."""
    terms = sorted(
        c.removeprefix("metrics.")
        for c in columns
        if c.startswith("metrics." + names.LOSS_PREFIX)
        and not c.endswith((names.BEST_SUFFIX, names.BEST_EPOCH_SUFFIX))
    )
    return sorted(terms, key=lambda name: (name != names.LOSS_TOTAL, name))


def plan_curves(data: SweepData, table: ComparisonTable) -> CurvePlan:
    """The histories the curves need: finished runs of the table (one per seed, retries
    left out) and per run only the loss terms and evaluation metrics it logged."""
    columns = [str(c) for c in data.runs.columns]
    losses = loss_metrics(columns)
    evals = evaluation_metrics(columns, table.metric)
    candidates = [*losses, *evals]
    logged: dict[str, list[str]] = {}
    for raw in data.runs.to_dict(orient="records"):
        logged[str(raw["run_id"])] = [
            m for m in candidates if finite_value(raw.get(f"metrics.{m}")) is not None]
    order = {column: index for index, column in enumerate(table.columns)}
    groups: dict[RowKey, dict[ColumnKey, list[str]]] = {row: {} for row in table.rows}
    wanted: dict[str, list[str]] = {}
    for record in table.records:
        if record.status != FINISHED or not logged.get(record.run_id):
            continue
        column = record.column(table.axes)
        groups.setdefault(record.row, {}).setdefault(column, []).append(record.run_id)
        wanted[record.run_id] = logged[record.run_id]
    for row, by_column in groups.items():
        groups[row] = dict(
            sorted(by_column.items(), key=lambda item: order.get(item[0], len(order)))
        )
    return CurvePlan(
        metric=table.metric,
        groups=groups,
        loss_metrics=losses,
        eval_metrics=evals,
        wanted=wanted,
    )


def aggregate_histories(label: str, histories: Sequence[History]) -> CurveSeries | None:
    """Mean, min and max per step over the runs' histories (None when all are empty)."""
    by_step: dict[int, list[float]] = {}
    runs = 0
    for history in histories:
        if history:
            runs += 1
        for step, value in history:
            by_step.setdefault(step, []).append(value)
    if not by_step:
        return None
    steps = sorted(by_step)
    return CurveSeries(
        label=label,
        steps=tuple(steps),
        mean=tuple(statistics.fmean(by_step[s]) for s in steps),
        low=tuple(min(by_step[s]) for s in steps),
        high=tuple(max(by_step[s]) for s in steps),
        runs=runs,
    )


def build_curves(
    plan: CurvePlan, histories: Mapping[str, Mapping[str, History]]
) -> list[PairCurves]:
    """Per pair the panels worth drawing: loss terms with any logged value, evaluation
    metrics that some run logged at more than one step. Pairs without a panel are left out."""
    out: list[PairCurves] = []
    for row, by_column in plan.groups.items():
        labels = [column.label for column in by_column]
        panels: list[CurvePanel] = []
        for metric in [*plan.loss_metrics, *plan.eval_metrics]:
            periodic = metric not in plan.loss_metrics
            series: list[CurveSeries] = []
            repeated = False
            for column, run_ids in by_column.items():
                runs = [histories.get(run_id, {}).get(metric, []) for run_id in run_ids]
                repeated = repeated or any(len(history) > 1 for history in runs)
                curve = aggregate_histories(column.label, runs)
                if curve is not None:
                    series.append(curve)
            if series and (repeated or not periodic):
                panels.append(CurvePanel(metric, series))
        if panels:
            out.append(PairCurves(row=row, labels=labels, panels=panels))
    return out


def plot_curves(curves: PairCurves) -> Figure:
    """One panel per metric, one mean line with a min-max band per column (Agg canvas)."""
    count = len(curves.panels)
    ncols = max(1, min(3, count))
    nrows = max(1, math.ceil(count / ncols))
    figure = Figure(figsize=(4.6 * ncols, 3.3 * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(figure)
    colors = dict(zip(curves.labels, series_colors(len(curves.labels)), strict=True))
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    shown: dict[str, int] = {}
    for ax, panel in zip(axes, curves.panels, strict=False):
        for series in panel.series:
            color = colors.get(series.label, "black")
            marker = "o" if len(series.steps) <= MARKER_STEPS else None
            ax.plot(
                series.steps, series.mean, color=color, marker=marker, markersize=3, linewidth=1.4
            )
            ax.fill_between(
                series.steps, series.low, series.high, color=color, alpha=0.2, linewidth=0
            )
            shown[series.label] = max(shown.get(series.label, 0), series.runs)
        ax.set_title(panel.metric, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    for ax in axes[count:]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=colors[label], linewidth=2, label=f"{label} (n={shown[label]})")
        for label in curves.labels
        if label in shown
    ]
    if handles:
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(4, len(handles)),
            fontsize=8,
            frameon=False,
        )
    figure.suptitle(f"{curves.row.teacher} → {curves.row.student}: mean over seeds, band {BAND}")
    return figure


def curves_caption(curves: PairCurves, plan: CurvePlan) -> str:
    evals = [p.metric for p in curves.panels if p.metric in plan.eval_metrics]
    what = "each loss term"
    if evals:
        what += " and the periodic evaluations of " + ", ".join(evals)
    return (
        f"Learning curves of {curves.row.label}: {what} against epoch; per objective the mean "
        f"over its finished seeds (n in the legend), shaded band: {BAND} (min to max of the "
        "seeds at each epoch)."
    )


def write_curves(curves: Sequence[PairCurves], plan: CurvePlan, out_dir: Path) -> list[Picture]:
    """Write ``curves_<teacher>__<student>.png/.svg`` per pair."""
    pictures: list[Picture] = []
    for pair, stem in zip(curves, unique_stems(c.stem for c in curves), strict=True):
        pictures.append(
            save_picture(
                plot_curves(pair),
                out_dir,
                stem,
                title=f"{pair.row.label}: learning curves",
                caption=curves_caption(pair, plan),
            )
        )
    return pictures


