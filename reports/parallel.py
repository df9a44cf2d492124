"""Parallel coordinates of a sweep's runs (only for sweeps with 3 or more varying axes): one
vertical axis per varying ``ukd.axes`` key plus the metric, one polyline per run coloured by
the metric.

Categorical axes (and numeric ones with few distinct values, as grid axes have) sit at evenly
spaced positions with their values as tick labels, and each run gets a small fixed vertical
jitter there so that runs sharing a value stay countable; numeric axes with many values and the
metric are linear. Runs without a value sit at ``n/a`` below the axis. All lines are one
``LineCollection`` each, so 500+ runs draw in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reports.pictures import Picture, save_picture
from reports.records import (
    FINISHED,
    TrialRecord,
    as_number,
    canonical,
    dedupe,
    records_from_frame,
    short_axis,
    sweep_axes,
    value_sort_key,
)
from reports.source import SweepData

MIN_AXES = 3
"""Fewest varying axes for which the picture is drawn."""
NA = "n/a"
NA_POSITION = -0.1
"""Vertical position of a missing value (axes span 0..1)."""
ORDINAL_LIMIT = 12
"""Numeric axes with at most this many distinct values are evenly spaced like categories."""
JITTER = 0.08
"""Half-width of the jitter, as a fraction of the distance between neighbouring categories..."""
MAX_JITTER = 0.035
"""... and at most this much of the axis height, so that values never reach ``n/a``."""
MAX_TICKS = 12
STEM = "parallel"


@dataclass(frozen=True)
class ParallelAxis:
    name: str
    categorical: bool
    """Evenly spaced values (categories, or numbers with few distinct values)."""
    ticks: list[tuple[float, str]]
    """(position in 0..1, label); ``n/a`` at :data:`NA_POSITION` when a run lacks the value."""
    positions: list[float]
    """Per run (in :attr:`ParallelData.run_ids` order) its position, jitter included."""


@dataclass(frozen=True)
class ParallelData:
    metric: str
    axes: list[ParallelAxis]
    """The varying sweep axes, then the metric."""
    run_ids: list[str]
    values: list[float | None]
    """Per run the metric (None: the run has none, e.g. it failed)."""
    statuses: list[str]


def varying_axes(data: SweepData) -> list[str]:
    """The sweep's axes (``ukd.axes``, see :func:`~reports.records.sweep_axes`) that take at
    least two distinct values among the trial runs."""
    frame = data.runs
    out: list[str] = []
    for axis in sweep_axes(data):
        column = f"params.{axis}"
        if column in frame.columns and len({canonical(v) for v in frame[column]} - {None}) >= 2:
            out.append(axis)
    return out


def build_parallel(data: SweepData, metric: str, min_axes: int = MIN_AXES) -> ParallelData | None:
    """The coordinates of every run (a retried trial once: its counted run), or None when the
    sweep has fewer than ``min_axes`` varying axes."""
    axes = varying_axes(data)
    if len(axes) < min_axes:
        return None
    records = sorted(
        dedupe(records_from_frame(data.runs, metric, axes), axes),
        key=lambda r: (r.value is not None, r.value or 0.0, r.start_time),
    )
    rng = np.random.default_rng(0)
    built = [_axis(axis, [r.params.get(axis) for r in records], rng) for axis in axes]
    built.append(_metric_axis(metric, records))
    return ParallelData(
        metric=metric,
        axes=built,
        run_ids=[r.run_id for r in records],
        values=[r.value if r.status == FINISHED else None for r in records],
        statuses=[r.status for r in records],
    )


def _axis(name: str, values: Sequence[str | None], rng: np.random.Generator) -> ParallelAxis:
    present = sorted({v for v in values if v is not None}, key=value_sort_key)
    numbers = [as_number(v) for v in present]
    missing = any(v is None for v in values)
    numeric = all(n is not None for n in numbers)
    if numeric and len(present) > ORDINAL_LIMIT:
        floats = [n for n in numbers if n is not None]
        low, high = min(floats), max(floats)
        span = (high - low) or 1.0
        positions = [
            NA_POSITION if v is None else ((as_number(v) or 0.0) - low) / span for v in values
        ]
        locator = MaxNLocator(nbins=6)
        ticks = [
            ((t - low) / span, _number_text(float(t)))
            for t in locator.tick_values(low, high)
            if low <= t <= high
        ]
        if missing:
            ticks.insert(0, (NA_POSITION, NA))
        return ParallelAxis(name, False, ticks, positions)

    slots = {value: _slot(index, len(present)) for index, value in enumerate(present)}
    spacing = 1.0 / max(1, len(present) - 1)
    jitter = min(MAX_JITTER, JITTER * spacing)
    noise = rng.uniform(-jitter, jitter, size=len(values))
    positions = [
        (NA_POSITION if v is None else slots[v]) + float(noise[i]) for i, v in enumerate(values)
    ]
    step = max(1, math.ceil(len(present) / MAX_TICKS))
    ticks = [(slots[v], v) for index, v in enumerate(present) if index % step == 0]
    if missing:
        ticks.insert(0, (NA_POSITION, NA))
    return ParallelAxis(name, True, ticks, positions)


def _metric_axis(metric: str, records: Sequence[TrialRecord]) -> ParallelAxis:
    values = [r.value if r.status == FINISHED else None for r in records]
    finite = [v for v in values if v is not None]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high == low:
        low, high = low - 1.0, high + 1.0
    span = high - low
    positions = [NA_POSITION if v is None else (v - low) / span for v in values]
    ticks = [
        ((t - low) / span, _number_text(float(t)))
        for t in MaxNLocator(nbins=6).tick_values(low, high)
        if low - 1e-9 <= t <= high + 1e-9
    ]
    if any(v is None for v in values):
        ticks.insert(0, (NA_POSITION, NA))
    return ParallelAxis(metric, False, ticks, positions)


def axis_label(axis: str) -> str:
    """Display name of an axis: ``loss.name`` -> ``objective``, ``loss.lambda`` -> ``lambda``."""
    return "objective" if axis == "loss.name" else short_axis(axis)


def _slot(index: int, count: int) -> float:
    return 0.5 if count <= 1 else index / (count - 1)


def _number_text(value: float) -> str:
    return f"{value:g}"


def plot_parallel(pdata: ParallelData) -> Figure:
    """Polylines over the axes, coloured by the metric (viridis; grey: no metric)."""
    count = len(pdata.axes)
    runs = len(pdata.run_ids)
    figure = Figure(figsize=(max(7.0, 1.9 * count + 1.5), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    xs = np.arange(count, dtype=float)
    coords = np.array([axis.positions for axis in pdata.axes], dtype=float).T.reshape(runs, count)
    lines = np.stack([np.broadcast_to(xs, (runs, count)), coords], axis=-1)
    finite = [v for v in pdata.values if v is not None]
    norm = Normalize(min(finite), max(finite)) if finite else Normalize(0.0, 1.0)
    if norm.vmin == norm.vmax:
        norm = Normalize(float(norm.vmin or 0.0) - 1.0, float(norm.vmax or 0.0) + 1.0)
    cmap = matplotlib.colormaps["viridis"]
    alpha = 0.85 if runs <= 40 else max(0.2, min(0.85, 40.0 / runs))
    width = 1.3 if runs <= 40 else 0.8
    have = np.array([v is not None for v in pdata.values], dtype=bool)
    if (~have).any():
        ax.add_collection(
            LineCollection(
                list(lines[~have]),
                colors="#b0b0b0",
                linewidths=width,
                linestyles="--",
                alpha=min(1.0, alpha + 0.1),
                zorder=1,
            )
        )
    if have.any():
        metric_values = np.array([v for v in pdata.values if v is not None], dtype=float)
        ax.add_collection(
            LineCollection(
                list(lines[have]),
                colors=cmap(norm(metric_values)),
                linewidths=width,
                alpha=alpha,
                zorder=2,
            )
        )
    for x, axis in zip(xs, pdata.axes, strict=True):
        ax.axvline(x, color="#333333", linewidth=1.0, zorder=3)
        for position, label in axis.ticks:
            ax.text(
                x - 0.04,
                position,
                label,
                ha="right",
                va="center",
                fontsize=7,
                zorder=4,
                bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.75, "lw": 0},
            )
    ax.set_xlim(-0.45, count - 1 + 0.25)
    ax.set_ylim(NA_POSITION - 0.08, 1.08)
    ax.set_yticks([])
    ax.set_xticks(xs, [axis_label(axis.name) for axis in pdata.axes])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=pdata.metric, pad=0.01)
    failed = int((~have).sum())
    ax.set_title(
        f"{runs} runs over {count - 1} varying axes"
        + (f" ({failed} without {pdata.metric}: grey dashed)" if failed else ""),
        fontsize=10,
    )
    return figure


def parallel_caption(pdata: ParallelData) -> str:
    return (
        f"Parallel coordinates: one line per run (a retried trial once), coloured by "
        f"{pdata.metric}; runs without it (failed, killed, running) grey and dashed at "
        f"{NA}. Categorical axes and numeric axes with at most {ORDINAL_LIMIT} values are evenly "
        f"spaced, with a small fixed vertical jitter so that runs "
        f"sharing a value stay apart; {NA}: the run has no such param."
    )


def write_parallel(pdata: ParallelData, out_dir: Path) -> Picture:
    """Write ``parallel.png/.svg``."""
    return save_picture(
        plot_parallel(pdata),
        out_dir,
        STEM,
        title=f"parallel coordinates: {pdata.metric}",
        caption=parallel_caption(pdata),
    )
