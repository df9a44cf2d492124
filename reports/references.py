"""Reference rows (random_init, ssl_only, supervised_only): a metric of the reference runs of
:func:`reports.source.load_references`, averaged over seeds per (student, reference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from reports.records import FINISHED, canonical, finite_value, text_value, value_sort_key
from reports.source import REFERENCE_COLUMN
from reports.stats import SampleSummary

REFERENCE_KINDS = ("random_init", "ssl_only", "supervised_only")
"""The known reference rows, in display order (others are kept, after these)."""


@dataclass(frozen=True)
class ReferenceValue(SampleSummary):
    """One reference row's value of a metric for one student architecture."""

    student: str
    reference: str
    metric: str
    values: tuple[float, ...]
    """The metric of each seed (finished runs only; per seed the newest run), in seed order."""
    seeds: tuple[str, ...]



def reference_sort_key(reference: str) -> tuple[int, str]:
    if reference in REFERENCE_KINDS:
        return (REFERENCE_KINDS.index(reference), "")
    return (len(REFERENCE_KINDS), reference)


def reference_values(frame: pd.DataFrame, metric: str) -> list[ReferenceValue]:
    """Mean over seeds of ``metric`` per (student, reference) of a references frame.

    Only FINISHED runs with a finite value count; a seed run twice counts once (the newest
    run); runs without a seed are each their own seed. Runs without ``ukd.student`` or
    ``ukd.reference``, and pairs where no run has the metric, are left out. Sorted by student,
    then :data:`REFERENCE_KINDS` order.
    """
    column = f"metrics.{metric}"
    if frame.empty or column not in frame.columns or REFERENCE_COLUMN not in frame.columns:
        return []
    newest: dict[tuple[str, str, str], tuple[float, float]] = {}
    for raw in frame.to_dict(orient="records"):
        if raw.get("status") != FINISHED:
            continue
        student = text_value(raw.get("student"))
        reference = text_value(raw.get(REFERENCE_COLUMN))
        value = finite_value(raw.get(column))
        if student is None or reference is None or value is None:
            continue
        seed = canonical(raw.get("seed")) or f"run {raw['run_id']}"
        start = finite_value(raw.get("start_time")) or 0.0
        key = (student, reference, seed)
        current = newest.get(key)
        if current is None or start >= current[0]:
            newest[key] = (start, value)
    grouped: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for (student, reference, seed), (_, value) in newest.items():
        grouped.setdefault((student, reference), []).append((seed, value))
    out: list[ReferenceValue] = []
    for (student, reference), seeded in sorted(
        grouped.items(), key=lambda item: (item[0][0], reference_sort_key(item[0][1]))
    ):
        seeded.sort(key=lambda pair: value_sort_key(pair[0]))
        out.append(
            ReferenceValue(
                student=student,
                reference=reference,
                metric=metric,
                values=tuple(v for _, v in seeded),
                seeds=tuple(s for s, _ in seeded),
            )
        )
    return out


def references_for(values: Sequence[ReferenceValue], student: str) -> list[ReferenceValue]:
    """The reference values that apply to a pair with this student architecture."""
    return [value for value in values if value.student == student]




