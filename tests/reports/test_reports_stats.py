"""Welch's t-test of best vs runner-up."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from reports.stats import ALPHA, WelchResult, format_p, welch_test


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """Independent computation: Welch's t and the Welch-Satterthwaite dof, two-sided p."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = 2.0 * scipy_stats.t.sf(abs(t), dof)
    return t, p


def test_welch_matches_independent_computation() -> None:
    a = [53.0, 55.0, 57.0]
    b = [50.0, 51.0, 52.0]
    result = welch_test(a, b)
    t, p = _welch_by_hand(a, b)
    assert result.t == pytest.approx(t, rel=1e-12)
    assert result.t == pytest.approx(4.0 / math.sqrt(5.0 / 3.0))
    assert result.p == pytest.approx(p, rel=1e-9)
    assert result.significant is bool(p < ALPHA)
    assert result.significant is False  # p ≈ 0.055
    assert result.n_a == 3 and result.n_b == 3


def test_welch_significant_and_not() -> None:
    strong = welch_test([70.0, 70.5, 71.0, 70.2], [60.0, 60.4, 59.8, 60.1])
    assert strong.significant is True
    assert strong.text().endswith(" *")
    weak = welch_test([61.0, 65.0, 57.0], [60.0, 64.0, 56.5])
    assert weak.significant is False
    assert "*" not in weak.text()
    assert weak.text().startswith("p=")


def test_welch_not_available() -> None:
    assert welch_test([60.0], [50.0, 51.0]).text() == "n/a (n<2)"
    assert welch_test([60.0, 61.0], []).available is False
    constant = welch_test([60.0, 60.0], [50.0, 50.0])
    assert constant.p is None and constant.note == "zero variance"


def test_format_p() -> None:
    assert format_p(0.0001) == "<0.001"
    assert format_p(0.01234) == "0.012"
    assert WelchResult(2, 2, None, None).text() == "n/a"
