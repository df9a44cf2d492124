"""The per-trial table: every trial run of the sweep (any status, retries included) with its
varying params, status, the report's metric, the other final metrics, the failure reason and
its MLflow run id; as HTML for index.html and as ``trials.csv``."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Collection, Sequence

import pandas as pd

from common import names
from reports.records import canonical, sweep_axes, text_value, value_sort_key
from reports.source import SweepData

RUN_ID = "run id"
STATUS = "status"
REASON = "failure reason"
FAILURE_EPOCH = "failure epoch"
RETRIED = " (retried)"
_SHOWN_AXES = frozenset({"teacher", "student", "loss.name", "objective"})
"""Axes already shown as their own column."""
_SERIES = (names.LOSS_PREFIX, names.TEACHER_PREFIX, names.PRETRAIN_PREFIX)
_SERIES_NAMES = frozenset({names.LR, names.EPOCH_TIME})


def param_columns(data: SweepData) -> list[str]:
    """The sweep's axes that vary among the runs, less teacher/student/objective."""
    frame = data.runs
    out: list[str] = []
    for axis in sweep_axes(data):
        column = f"params.{axis}"
        if axis in _SHOWN_AXES or column not in frame.columns:
            continue
        if len({canonical(v) for v in frame[column]} - {None}) >= 2:
            out.append(axis)
    return out


def final_metric_columns(frame: pd.DataFrame, metric: str) -> list[str]:
    """Final metrics worth a column besides ``metric``: evaluation metrics and timings, not
    the per-epoch series (loss terms, lr, epoch time) nor the teacher's references."""
    out: list[str] = []
    for column in frame.columns:
        if not str(column).startswith("metrics."):
            continue
        name = str(column).removeprefix("metrics.")
        if name == metric or name.startswith(_SERIES) or name in _SERIES_NAMES:
            continue
        if frame[column].notna().any():
            out.append(name)
    return sorted(out, key=lambda n: (n == names.TRAIN_TIME, n))


def build_trials_frame(
    data: SweepData, metric: str, superseded: Collection[str] = ()
) -> pd.DataFrame:
    """One line per trial run, sorted by pair, objective, params, seed and start time.

    Columns: ``trial``, ``teacher``, ``student``, ``objective``, the varying params, ``status``
    (``FAILED (retried)`` for a run in ``superseded``: replaced by a later run of the same
    trial), ``metric``, the other final metrics, ``failure epoch``, ``failure reason`` and
    ``run id``.
    """
    frame = data.runs
    params = param_columns(data)
    others = final_metric_columns(frame, metric)
    rows: list[dict[str, object]] = []
    for raw in frame.to_dict(orient="records"):
        run_id = str(raw["run_id"])
        status = str(raw.get("status") or "UNKNOWN")
        row: dict[str, object] = {
            "trial": text_value(raw.get("trial_id")) or run_id[:8],
            "teacher": text_value(raw.get("teacher")) or "",
            "student": text_value(raw.get("student")) or "",
            "objective": text_value(raw.get("objective")) or "",
        }
        for axis in params:
            row[axis] = canonical(raw.get(f"params.{axis}")) or ""
        row[STATUS] = status + (RETRIED if run_id in superseded else "")
        row[metric] = _number(raw.get(f"metrics.{metric}"))
        for name in others:
            row[name] = _number(raw.get(f"metrics.{name}"))
        row[FAILURE_EPOCH] = text_value(raw.get("failure_epoch")) or ""
        row[REASON] = text_value(raw.get("failure_reason")) or ""
        row[RUN_ID] = run_id
        row["_start"] = _number(raw.get("start_time")) or 0.0
        rows.append(row)

    def key(row: dict[str, object]) -> tuple[object, ...]:
        return (
            row["teacher"],
            row["student"],
            row["objective"],
            tuple(value_sort_key(str(row[axis])) for axis in params),
            row["_start"],
        )

    rows.sort(key=key)
    columns = ["trial", "teacher", "student", "objective", *params, STATUS, metric, *others]
    columns += [FAILURE_EPOCH, REASON, RUN_ID]
    return pd.DataFrame(rows, columns=columns)


def trials_csv(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def trials_table_html(frame: pd.DataFrame, metric: str, decimals: int = 2) -> str:
    """An HTML table (class ``ukd trials``), all text escaped, run ids in ``<code>``."""
    metric_columns = _numeric_columns(frame, exclude=(RUN_ID,))
    caption = (
        f"Every trial run ({len(frame)}), any status: its varying params, status, {metric} "
        "and the other final metrics (value at the last step), failure reason and MLflow run "
        f"id. {RETRIED.strip()}: replaced by a later run of the same trial."
    )
    out = [
        '<table class="ukd trials">',
        f"<caption>{html.escape(caption)}</caption>",
        "<thead><tr>"
        + "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
        + "</tr></thead>",
        "<tbody>",
    ]
    for values in frame.itertuples(index=False):
        cells: list[str] = []
        status = ""
        for column, value in zip(frame.columns, values, strict=True):
            if column == STATUS:
                status = str(value)
            if column == RUN_ID:
                cells.append(f"<td><code>{html.escape(str(value))}</code></td>")
            elif column in metric_columns:
                cells.append(f'<td class="num">{html.escape(_format(value, decimals))}</td>')
            else:
                cells.append(f"<td>{html.escape(_format(value, decimals))}</td>")
        css = "status-" + status.split(" ", 1)[0].lower() if status else ""
        out.append(f'<tr class="{html.escape(css, quote=True)}">' + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _numeric_columns(frame: pd.DataFrame, exclude: Sequence[str]) -> set[str]:
    return {
        str(c)
        for c in frame.columns
        if c not in exclude and pd.api.types.is_float_dtype(frame[c].dtype)
    }


def _format(value: object, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value)




def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
