"""Comparison table: rows teacher -> student, columns objective (+ swept weights), cells
metric mean ± sample std over seeds with n and the failed / killed / missing trials."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.names import BEST_SUFFIX, EVALUATOR_PREFIXES, teacher_metric
from reports.records import (
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
    SCHEDULED,
    ColumnKey,
    RowKey,
    TrialRecord,
    dedupe,
    expected_cells,
    expected_seeds,
    objective_axes,
    records_from_frame,
    require_metric,
    sweep_axes,
    value_sort_key,
)
from reports.references import ReferenceValue, reference_sort_key
from reports.source import SweepData
from reports.stats import TEST_DESCRIPTION, SampleSummary, WelchResult, welch_test

DAGGER = "†"
ABOVE = "‡"
"""Marks a reference cell above every objective of its row (with bold)."""
PLUS_MINUS = "±"
EMPTY = "—"


@dataclass
class CellStats(SampleSummary):
    """Aggregate of one (row, column) cell over seeds."""

    values: list[float] = field(default_factory=list)
    """Metric of the finished seeds, in seed order."""
    seeds: list[str] = field(default_factory=list)
    expected: int = 0
    failed: int = 0
    killed: int = 0
    running: int = 0
    no_metric: int = 0
    """Finished runs that did not log the metric."""
    missing_seeds: list[str] = field(default_factory=list)
    """Expected seeds with no run at all."""
    best: bool = False

    @property
    def missing(self) -> int:
        return len(self.missing_seeds)


    @property
    def incomplete(self) -> bool:
        return bool(self.failed or self.killed or self.running or self.no_metric or self.missing)

    def issues(self) -> list[str]:
        parts = []
        for count, word in (
            (self.failed, "failed"),
            (self.killed, "killed"),
            (self.running, "running"),
            (self.no_metric, "no metric"),
            (self.missing, "missing"),
        ):
            if count:
                parts.append(f"{count} {word}")
        return parts

    def value_text(self, decimals: int = 1) -> str:
        """``61.2 ± 0.8``, ``61.2`` (one seed) or ``—`` (none)."""
        mean, std = self.mean, self.std
        if mean is None:
            return EMPTY
        if std is None:
            return f"{mean:.{decimals}f}"
        return f"{mean:.{decimals}f} {PLUS_MINUS} {std:.{decimals}f}"

    def count_text(self) -> str:
        """``(n=3)`` or ``(n=2, 1 failed)``."""
        return "(" + ", ".join([f"n={self.n}", *self.issues()]) + ")"

    def text(self, decimals: int = 1) -> str:
        """Plain cell text, e.g. ``61.2 ± 0.8 (n=2, 1 failed) †``."""
        out = f"{self.value_text(decimals)} {self.count_text()}"
        return out + f" {DAGGER}" if self.incomplete else out


@dataclass
class ComparisonTable:
    metric: str
    teacher_metric: str | None
    rows: list[RowKey]
    columns: list[ColumnKey]
    axes: list[str]
    """Objective axes in the column key (e.g. ``loss.lambda``)."""
    cells: dict[tuple[RowKey, ColumnKey], CellStats]
    """Cells of the sweep; an absent key is a combination the sweep does not have."""
    teacher_ref: dict[RowKey, float | None]
    tests: dict[RowKey, tuple[ColumnKey | None, ColumnKey | None, WelchResult]]
    """Per row: (best column, runner-up column, Welch test of best vs runner-up)."""
    seeds: list[str]
    records: list[TrialRecord]
    """One run per (row, column, seed) after :func:`~reports.records.dedupe`."""
    superseded: list[TrialRecord]
    """Runs replaced by a retry of the same trial (not counted in the cells)."""
    decimals: int = 1
    sweep_name: str = ""
    best_epoch: bool = False
    """Cells show ``<metric>_best`` (the best periodic evaluation) instead of the final value
    (the last epoch's)."""
    references: list[ReferenceValue] = field(default_factory=list)
    """Reference rows of the metric (random_init, ssl_only, supervised_only) per student."""

    def cell(self, row: RowKey, column: ColumnKey) -> CellStats | None:
        return self.cells.get((row, column))

    @property
    def value_metric(self) -> str:
        """The metric the cells hold: ``metric``, or ``<metric>_best`` with ``best_epoch``."""
        return self.metric + BEST_SUFFIX if self.best_epoch else self.metric

    @property
    def reference_kinds(self) -> list[str]:
        """The reference columns, in display order (random_init, ssl_only, supervised_only)."""
        kinds = {ref.reference for ref in self.references}
        return sorted(kinds, key=reference_sort_key)

    def reference(self, kind: str, row: RowKey) -> ReferenceValue | None:
        """The reference value of a row's student architecture."""
        return next((r for r in self.references
                     if r.reference == kind and r.student == row.student), None)

    def references_above(self, row: RowKey) -> list[str]:
        """The reference kinds whose mean is above the mean of every objective cell of the
        row: a reference that beats every objective is marked, never hidden."""
        means = [cell.mean for column in self.columns
                 if (cell := self.cell(row, column)) is not None and cell.mean is not None]
        if not means:
            return []
        top = max(means)
        return [kind for kind in self.reference_kinds
                if (ref := self.reference(kind, row)) is not None and ref.mean is not None
                and ref.mean > top]

    def _above_text(self) -> str:
        """The caption's sentence on references above every objective ("" when none)."""
        d = self.decimals
        found = []
        for row in self.rows:
            best = max(cell.mean for column in self.columns
                       if (cell := self.cell(row, column)) is not None
                       and cell.mean is not None) if self.references_above(row) else 0.0
            for kind in self.references_above(row):
                ref = self.reference(kind, row)
                assert ref is not None and ref.mean is not None
                found.append(f"{row.label}: {kind} {ref.mean:.{d}f} > best objective "
                             f"{best:.{d}f}")
        if not found:
            return ""
        return (f"Bold with {ABOVE}: a reference above every objective of its row, the "
                f"teacher adds nothing there on this metric ({'; '.join(found)}).")

    @property
    def caption(self) -> str:
        unit = " (%)" if self.metric.startswith(
            (*EVALUATOR_PREFIXES, *(teacher_metric(p) for p in EVALUATOR_PREFIXES))) else ""
        seeds = ", ".join(self.seeds) if self.seeds else "none"
        if self.best_epoch:
            epoch = (f"Cells: the best epoch's value ({self.value_metric}, the best of the "
                     "periodic evaluations: a selection on the test set, so optimistic; the "
                     "epoch is logged as " + self.metric + "_best_epoch).")
        else:
            epoch = "Cells: the final value (last epoch)."
        parts = [
            f"{self.metric}{unit}: mean {PLUS_MINUS} sample std (ddof=1) over seeds {{{seeds}}}"
            f" ({len(self.seeds)} per cell); n = finished seeds.",
            epoch,
            "Bold: best objective of the row.",
            f"{DAGGER}: trials of the cell failed, were killed, are running or are missing;"
            " they are counted, not averaged.",
            f"Best vs runner-up: {TEST_DESCRIPTION}.",
        ]
        if self.teacher_metric:
            parts.append(f"Teacher: the teacher's own value ({self.teacher_metric}).")
        if self.references:
            described = "; ".join(f"{kind}: {REFERENCE_TEXT.get(kind, 'a reference run')}"
                                  for kind in self.reference_kinds)
            parts.append(f"References, the row's student without a teacher ({described}), "
                         f"evaluated once like the trials' final evaluation: mean "
                         f"{PLUS_MINUS} sample std over seeds.")
            if above := self._above_text():
                parts.append(above)
        prefix = f"Sweep {self.sweep_name}. " if self.sweep_name else ""
        return prefix + " ".join(parts)


REFERENCE_TEXT = {
    "random_init": "untrained, initialised as the trials",
    "ssl_only": "trained by a self-supervised recipe alone",
    "supervised_only": "trained with cross-entropy alone",
}


def build_comparison(data: SweepData, metric: str = "knn/top1_k10",
                     references: Sequence[ReferenceValue] = (),
                     best_epoch: bool = False) -> ComparisonTable:
    """Aggregate the sweep's trial runs into a :class:`ComparisonTable`; ``references``: the
    reference rows of ``metric`` (:func:`reports.references.reference_values`);
    ``best_epoch``: cells of ``<metric>_best`` (the sweep must evaluate every N epochs)."""
    value_metric = metric + BEST_SUFFIX if best_epoch else metric
    require_metric(data.runs, value_metric,
                   "; the best epoch is logged by sweeps with eval.every > 0"
                   if best_epoch else "")
    all_axes = sweep_axes(data)
    axes = objective_axes(all_axes)
    all_records = records_from_frame(data.runs, value_metric, axes, teacher_metric(metric))
    records = dedupe(all_records, axes)
    kept = {r.run_id for r in records}

    expected = expected_cells(data.expected_trials, axes)
    observed = {(r.row, r.column(axes), r.seed) for r in records}
    if expected is not None and not all(
        seed is not None and seed in expected.get((row, col), set()) for row, col, seed in observed
    ):
        expected = None  # trials.yaml does not describe these runs: fall back to seeds
    seeds_seen = {r.seed for r in records if r.seed is not None}
    global_seeds = (expected_seeds(data.expected_trials) or set()) | seeds_seen

    rows: set[RowKey] = {r.row for r in records}
    columns: set[ColumnKey] = {r.column(axes) for r in records}
    if expected is not None:
        rows |= {row for row, _ in expected}
        columns |= {col for _, col in expected}
    row_list = sorted(rows, key=RowKey.sort_key)
    column_list = sorted(columns, key=ColumnKey.sort_key)

    by_cell: dict[tuple[RowKey, ColumnKey], list[TrialRecord]] = {}
    for record in records:
        by_cell.setdefault((record.row, record.column(axes)), []).append(record)

    cells: dict[tuple[RowKey, ColumnKey], CellStats] = {}
    for row in row_list:
        for column in column_list:
            key = (row, column)
            cell_seeds = expected.get(key) if expected is not None else global_seeds
            if cell_seeds is None:
                continue  # not part of the sweep
            cells[key] = _aggregate(by_cell.get(key, []), cell_seeds)

    tests: dict[RowKey, tuple[ColumnKey | None, ColumnKey | None, WelchResult]] = {}
    for row in row_list:
        tests[row] = _mark_best(row, column_list, cells)

    teacher_ref: dict[RowKey, float | None] = {}
    for row in row_list:
        values = [r.teacher_value for r in records if r.row == row and r.teacher_value is not None]
        teacher_ref[row] = statistics.fmean(values) if values else None

    return ComparisonTable(
        metric=metric,
        teacher_metric=(teacher_metric(metric) if any(r.teacher_value is not None
                                                      for r in records) else None),
        rows=row_list,
        columns=column_list,
        axes=axes,
        cells=cells,
        teacher_ref=teacher_ref,
        tests=tests,
        seeds=sorted(global_seeds, key=value_sort_key),
        records=records,
        superseded=[r for r in all_records if r.run_id not in kept],
        sweep_name=data.name,
        best_epoch=best_epoch,
        references=[r for r in references if r.metric == metric and r.mean is not None
                    and any(row.student == r.student for row in row_list)],
    )


def _aggregate(records: Sequence[TrialRecord], seeds: set[str]) -> CellStats:
    cell = CellStats(expected=len(seeds))
    for record in sorted(records, key=lambda r: value_sort_key(r.seed or "")):
        if record.status == FINISHED:
            if record.value is None:
                cell.no_metric += 1
            else:
                cell.values.append(record.value)
                cell.seeds.append(record.seed or "?")
        elif record.status == FAILED:
            cell.failed += 1
        elif record.status == KILLED:
            cell.killed += 1
        elif record.status in (RUNNING, SCHEDULED):
            cell.running += 1
        else:
            cell.failed += 1
    present = {r.seed for r in records if r.seed is not None}
    cell.missing_seeds = sorted(seeds - present, key=value_sort_key)
    return cell


def _mark_best(
    row: RowKey, columns: Sequence[ColumnKey], cells: dict[tuple[RowKey, ColumnKey], CellStats]
) -> tuple[ColumnKey | None, ColumnKey | None, WelchResult]:
    ranked: list[tuple[float, ColumnKey, CellStats]] = []
    for column in columns:
        cell = cells.get((row, column))
        if cell is not None and cell.mean is not None:
            ranked.append((cell.mean, column, cell))
    if not ranked:
        return None, None, WelchResult(0, 0, None, None, "no data")
    ranked.sort(key=lambda item: item[0], reverse=True)
    top = ranked[0][0]
    for mean, _, cell in ranked:
        if mean == top:
            cell.best = True
    best_column, best_cell = ranked[0][1], ranked[0][2]
    if len(ranked) < 2:
        return best_column, None, WelchResult(best_cell.n, 0, None, None, "no runner-up")
    runner_column, runner_cell = ranked[1][1], ranked[1][2]
    return best_column, runner_column, welch_test(best_cell.values, runner_cell.values)
