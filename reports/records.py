"""Per-trial records extracted from the runs frame, and the keys tables and plots group by."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from common.names import (
    PARAM_OBJECTIVE,
    PARAM_SEED,
    PARAM_STUDENT,
    PARAM_TEACHER,
    teacher_metric,
)
from reports.source import ReportError, SweepData

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
RUNNING = "RUNNING"
SCHEDULED = "SCHEDULED"

# Axes that pick the table row (teacher, student), the objective itself, or the repetition.
NON_OBJECTIVE_AXES = frozenset({"teacher", "student", "seed", "loss.name", "objective"})
_BOOKKEEPING_TOKENS = frozenset(
    {"dir", "path", "uri", "trial", "id", "output", "checkpoint", "hash", "device", "workers"}
)


def canonical(value: object) -> str | None:
    """Canonical text of a param value: numbers compare equal whatever their spelling.

    ``"256"`` and ``256.0`` give ``"256"``; ``"0.50"`` gives ``"0.5"``; ``"1e-3"`` gives
    ``"0.001"``; other text is kept; missing values (None / NaN) give None.
    """
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bool):
        return str(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def as_number(value: str) -> float | None:
    """The value as a float when it is numeric, else None."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def value_sort_key(value: str) -> tuple[int, float, str]:
    """Numbers first, in numeric order, then text in lexical order."""
    number = as_number(value)
    if number is None:
        return (1, 0.0, value)
    return (0, number, "")


def short_axis(axis: str) -> str:
    """Display name of an axis: ``loss.lambda`` -> ``lambda``."""
    return axis.removeprefix("loss.")


def is_objective_axis(axis: str) -> bool:
    """Whether a swept axis belongs in the column key (not teacher/student/seed/objective)."""
    return axis not in NON_OBJECTIVE_AXES and not axis.startswith(("teacher.", "student."))


@dataclass(frozen=True)
class RowKey:
    teacher: str
    student: str

    @property
    def label(self) -> str:
        return f"{self.teacher} -> {self.student}"

    def sort_key(self) -> tuple[str, str]:
        return (self.teacher, self.student)


@dataclass(frozen=True)
class ColumnKey:
    """An objective with the values of its swept settings (canonical text)."""

    objective: str
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        if not self.settings:
            return self.objective
        inner = ", ".join(f"{short_axis(axis)}={value}" for axis, value in self.settings)
        return f"{self.objective} ({inner})"

    def setting(self, axis: str) -> str | None:
        return dict(self.settings).get(axis)

    def sort_key(self) -> tuple[object, ...]:
        return (self.objective, tuple((a, value_sort_key(v)) for a, v in self.settings))


@dataclass(frozen=True)
class TrialRecord:
    """One child run, reduced to what tables and plots need."""

    run_id: str
    trial_id: str
    row: RowKey
    objective: str
    params: Mapping[str, str] = field(hash=False)
    """Canonical values of the sweep's axes that this run has (missing axes left out)."""
    seed: str | None
    status: str
    value: float | None
    """Final value of the chosen metric (None when not logged)."""
    teacher_value: float | None
    start_time: float
    failure_reason: str | None = None
    failure_epoch: str | None = None

    def column(self, axes: Sequence[str]) -> ColumnKey:
        settings = tuple((axis, self.params[axis]) for axis in axes if axis in self.params)
        return ColumnKey(self.objective, settings)

    @property
    def finished_with_value(self) -> bool:
        return self.status == FINISHED and self.value is not None


def sweep_axes(data: SweepData) -> list[str]:
    """The sweep's axes: the parent's ``ukd.axes`` tag, else the params that vary across runs."""
    if data.axes is not None:
        return list(data.axes)
    frame = data.runs
    axes: list[str] = []
    for column in frame.columns:
        if not column.startswith("params."):
            continue
        key = column.removeprefix("params.")
        tokens = set(re.split(r"[._]", key.lower()))
        if key not in NON_OBJECTIVE_AXES and tokens & _BOOKKEEPING_TOKENS:
            continue
        values = {canonical(v) for v in frame[column]} - {None}
        if len(values) > 1:
            axes.append(key)
    return axes


def objective_axes(axes: Iterable[str]) -> list[str]:
    return [axis for axis in axes if is_objective_axis(axis)]


def available_metrics(frame: pd.DataFrame) -> list[str]:
    return sorted(
        c.removeprefix("metrics.")
        for c in frame.columns
        if c.startswith("metrics.") and frame[c].notna().any()
    )


def require_metric(frame: pd.DataFrame, metric: str, hint: str = "") -> None:
    column = f"metrics.{metric}"
    if column not in frame.columns or not frame[column].notna().any():
        known = [m for m in available_metrics(frame) if not m.startswith(("loss/", "teacher_"))]
        raise ReportError(
            f"no trial run has the metric {metric!r}; available: {', '.join(known) or 'none'}"
            + hint
        )


def records_from_frame(frame: pd.DataFrame, metric: str, axes: Sequence[str],
                       teacher: str | None = None) -> list[TrialRecord]:
    """Build :class:`TrialRecord` objects for every run of the runs frame; ``teacher``: the
    teacher's reference metric (default ``teacher_<metric>``, logged when the teacher has
    it)."""
    reference = teacher or teacher_metric(metric)
    records: list[TrialRecord] = []
    for raw in frame.to_dict(orient="records"):
        params: dict[str, str] = {}
        for axis in axes:
            value = canonical(raw.get(f"params.{axis}"))
            if value is not None:
                params[axis] = value
        objective = text_value(raw.get("objective")) or "?"
        records.append(
            TrialRecord(
                run_id=str(raw["run_id"]),
                trial_id=text_value(raw.get("trial_id")) or str(raw["run_id"])[:8],
                row=RowKey(text_value(raw.get("teacher")) or "?",
                           text_value(raw.get("student")) or "?"),
                objective=objective,
                params=params,
                seed=canonical(raw.get("seed")),
                status=str(raw.get("status") or "UNKNOWN"),
                value=finite_value(raw.get(f"metrics.{metric}")),
                teacher_value=finite_value(raw.get(f"metrics.{reference}")),
                start_time=finite_value(raw.get("start_time")) or 0.0,
                failure_reason=text_value(raw.get("failure_reason")),
                failure_epoch=text_value(raw.get("failure_epoch")),
            )
        )
    return records


def _status_rank(record: TrialRecord) -> int:
    if record.finished_with_value:
        return 4
    if record.status == FINISHED:
        return 3
    if record.status in (RUNNING, SCHEDULED):
        return 2
    return 1


def dedupe(records: Iterable[TrialRecord], axes: Sequence[str]) -> list[TrialRecord]:
    """Keep one run per (row, column, seed): a retried trial counts once.

    Preference: finished with the metric > finished > running > failed/killed; then the most
    recent start. Runs without a seed are all kept.
    """
    best: dict[tuple[object, ...], TrialRecord] = {}
    for record in records:
        key: tuple[object, ...] = (record.row, record.column(axes), record.seed or record.run_id)
        current = best.get(key)
        if current is None or (_status_rank(record), record.start_time) > (
            _status_rank(current),
            current.start_time,
        ):
            best[key] = record
    return list(best.values())


def expected_cells(
    trials: list[dict[str, str]] | None, axes: Sequence[str]
) -> dict[tuple[RowKey, ColumnKey], set[str]] | None:
    """Expected seeds per (row, column) from ``trials.yaml`` (each trial's flat params), or
    None if it cannot tell."""
    if not trials:
        return None
    cells: dict[tuple[RowKey, ColumnKey], set[str]] = {}
    for trial in trials:
        teacher = _first(trial, PARAM_TEACHER)
        student = _first(trial, PARAM_STUDENT)
        objective = _first(trial, PARAM_OBJECTIVE)
        seed = canonical(trial.get(PARAM_SEED))
        if teacher is None or student is None or objective is None or seed is None:
            return None
        settings = tuple(
            (axis, value) for axis in axes if (value := canonical(trial.get(axis))) is not None
        )
        key = (RowKey(teacher, student), ColumnKey(objective, settings))
        cells.setdefault(key, set()).add(seed)
    return cells


def expected_seeds(trials: list[dict[str, str]] | None) -> set[str] | None:
    """Distinct seeds listed in ``trials.yaml`` (None when it lists none)."""
    if not trials:
        return None
    seeds = {s for trial in trials if (s := canonical(trial.get(PARAM_SEED))) is not None}
    return seeds or None


def _first(mapping: Mapping[str, str], *keys: str) -> str | None:
    for key in keys:
        value = mapping.get(key)
        if value is not None and value != "None":
            return value
    return None


def text_value(value: object) -> str | None:
    """A param / tag value as text; None for missing ones (None, NaN, "")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text or None


def finite_value(value: object) -> float | None:
    """A metric value as a finite float, else None."""
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
