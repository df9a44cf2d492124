"""Transfer table: rows the teachers, teacher -> student with each objective, and the
reference rows (random_init, ssl_only, supervised_only) of each student; columns the
downstream datasets (``transfer/<dataset>/<metric>``) and their mean; cells mean ± sample
std (ddof=1) over seeds with n.

A dataset's metric is the one its runs logged: ``top1``, ``mean_per_class`` (Pets,
Flowers-102, Caltech-101) or ``knn_top1`` (kNN mode). "mean" is, per run, the mean over the
datasets (runs missing one are left out of it), then averaged over seeds like a dataset.
A trial retried counts once (its newest finished run); only FINISHED runs count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from common.names import TRANSFER_METRICS, TRANSFER_PREFIX, teacher_metric
from reports.records import (
    FINISHED,
    canonical,
    finite_value,
    objective_axes,
    short_axis,
    sweep_axes,
    text_value,
    value_sort_key,
)
from reports.references import reference_sort_key
from reports.render import latex_escape, markdown_frame
from reports.source import REFERENCE_COLUMN, SweepData
from reports.stats import SampleSummary

MEAN = "mean"
_METRIC = re.compile(r"^metrics\." + re.escape(TRANSFER_PREFIX) + r"(.+)/("
                     + "|".join(TRANSFER_METRICS) + r")$")


@dataclass(frozen=True)
class Sample(SampleSummary):
    """A cell's values over seeds."""

    values: tuple[float, ...]


@dataclass(frozen=True)
class TransferRow:
    """One row: its label, kind (``teacher``, ``trial``, a reference kind) and per column
    the values over seeds."""

    label: str
    kind: str
    cells: dict[str, Sample]


@dataclass(frozen=True)
class TransferTable:
    datasets: tuple[tuple[str, str], ...]  # (dataset, metric), in first-seen order
    rows: tuple[TransferRow, ...]

    @property
    def columns(self) -> list[str]:
        return [d for d, _ in self.datasets] + [MEAN]

    @property
    def caption(self) -> str:
        metrics = ", ".join(f"{d}: {m}" for d, m in self.datasets)
        return (f"Transfer (%; {metrics}): mean ± sample std (ddof=1) over seeds, n = "
                "finished runs; mean: each run's mean over the datasets, then over seeds. "
                "Teacher rows: the teacher's own features; reference rows: the student "
                "without a teacher, evaluated like the trials.")


def transfer_datasets(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, metric) of the ``transfer/<dataset>/<metric>`` columns of a runs frame."""
    out: dict[str, str] = {}
    for column in frame.columns:
        match = _METRIC.match(str(column))
        if match and match.group(1) not in out:
            out[match.group(1)] = match.group(2)
    return list(out.items())


def _metric(dataset: str, metric: str) -> str:
    return f"{TRANSFER_PREFIX}{dataset}/{metric}"


def _values(raw: dict[str, object], datasets: Sequence[tuple[str, str]], prefix: str = ""
            ) -> dict[str, float]:
    out = {d: v for d, m in datasets
           if (v := finite_value(raw.get(f"metrics.{prefix}{_metric(d, m)}"))) is not None}
    if datasets and len(out) == len(datasets):
        out[MEAN] = sum(out.values()) / len(out)
    return out


def _newest(frame: pd.DataFrame, key: str) -> list[dict[str, object]]:
    """FINISHED runs, the newest per ``key`` column value."""
    chosen: dict[object, dict[str, object]] = {}
    for raw in frame.to_dict(orient="records"):
        if raw.get("status") != FINISHED:
            continue
        ident = raw.get(key) or raw.get("run_id")
        start = finite_value(raw.get("start_time")) or 0.0
        if ident not in chosen or start >= (finite_value(chosen[ident].get("start_time"))
                                            or 0.0):
            chosen[ident] = raw
    return list(chosen.values())


def _summaries(per_run: Sequence[dict[str, float]], columns: Sequence[str]
               ) -> dict[str, Sample]:
    return {c: Sample(tuple(r[c] for r in per_run if c in r)) for c in columns
            if any(c in r for r in per_run)}


def build_transfer(data: SweepData, references: pd.DataFrame) -> TransferTable | None:
    """The transfer table of a sweep (None when no run logged a transfer metric)."""
    datasets = transfer_datasets(data.runs)
    if not datasets:
        return None
    columns = [d for d, _ in datasets] + [MEAN]
    axes = objective_axes(sweep_axes(data))
    trials = _newest(data.runs, "trial_id")
    teachers: dict[str, dict[str, float]] = {}
    groups: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for raw in trials:
        teacher, student = text_value(raw.get("teacher")), text_value(raw.get("student"))
        objective = text_value(raw.get("objective"))
        if teacher is None or student is None or objective is None:
            continue
        own = _values(raw, datasets, teacher_metric(""))
        if own and teacher not in teachers:
            teachers[teacher] = own
        settings = [(a, canonical(raw.get(f"params.{a}"))) for a in axes]
        shown = ", ".join(f"{short_axis(a)}={v}" for a, v in settings if v is not None)
        label = f"{objective} ({shown})" if shown else objective
        groups.setdefault((teacher, student, label), []).append(_values(raw, datasets))
    refs: dict[tuple[str, str], list[dict[str, float]]] = {}
    if not references.empty and REFERENCE_COLUMN in references.columns:
        for raw in _newest(references, "tags.ukd.reference_key"):
            student = text_value(raw.get("student"))
            kind = text_value(raw.get(REFERENCE_COLUMN))
            if student is not None and kind is not None:
                refs.setdefault((student, kind), []).append(_values(raw, datasets))
    rows: list[TransferRow] = []
    students_done: set[str] = set()
    for teacher in sorted({t for t, _, _ in groups} | set(teachers)):
        if teacher in teachers:
            rows.append(TransferRow(f"teacher {teacher}", "teacher",
                                    _summaries([teachers[teacher]], columns)))
        for student in sorted({s for t, s, _ in groups if t == teacher}):
            for (_, _, label), per_run in sorted(
                    ((k, v) for k, v in groups.items() if k[0] == teacher and k[1] == student),
                    key=lambda item: value_sort_key(item[0][2])):
                rows.append(TransferRow(f"{teacher} -> {student} {label}", "trial",
                                        _summaries(per_run, columns)))
            if student in students_done:
                continue
            students_done.add(student)
            for (ref_student, kind), per_run in sorted(
                    refs.items(), key=lambda item: reference_sort_key(item[0][1])):
                if ref_student == student:
                    rows.append(TransferRow(f"{student} {kind}", kind,
                                            _summaries(per_run, columns)))
    return TransferTable(tuple(datasets), tuple(rows))


def _text(cell: Sample | None) -> str:
    if cell is None or cell.mean is None:
        return ""
    std = f" ± {cell.std:.2f}" if cell.std is not None else ""
    return f"{cell.mean:.2f}{std} (n={cell.n})"


def transfer_frame(table: TransferTable) -> pd.DataFrame:
    """The table as text cells (Markdown, HTML, LaTeX)."""
    rows = [[row.label, row.kind, *(_text(row.cells.get(c)) for c in table.columns)]
            for row in table.rows]
    return pd.DataFrame(rows, columns=["row", "kind", *table.columns])


def transfer_csv(table: TransferTable) -> str:
    """One line per row: mean, std and n per column."""
    header = ["row", "kind"] + [f"{c}_{s}" for c in table.columns for s in ("mean", "std", "n")]
    lines = [",".join(header)]
    for row in table.rows:
        values = [_csv(row.label), row.kind]
        for c in table.columns:
            cell = row.cells.get(c)
            values += (["", "", "0"] if cell is None else
                       [_num(cell.mean), _num(cell.std), str(cell.n)])
        lines.append(",".join(values))
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def transfer_markdown(table: TransferTable) -> str:
    return f"{table.caption}\n\n{markdown_frame(transfer_frame(table))}"


def transfer_latex(table: TransferTable, label: str = "tab:ukd-transfer") -> str:
    frame = transfer_frame(table)
    spec = "ll" + "r" * len(table.columns)
    lines = ["\\begin{table}[t]", "\\centering", f"\\begin{{tabular}}{{{spec}}}", "\\hline",
             " & ".join(latex_escape(str(c)) for c in frame.columns) + " \\\\", "\\hline"]
    for values in frame.itertuples(index=False):
        lines.append(" & ".join(latex_escape(str(v)) for v in values) + " \\\\")
    lines += ["\\hline", "\\end{tabular}", f"\\caption{{{latex_escape(table.caption)}}}",
              f"\\label{{{label}}}", "\\end{table}"]
    return "\n".join(lines) + "\n"
