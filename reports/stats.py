"""Significance of the best objective of a row over the runner-up (Welch's t-test)."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

ALPHA = 0.05
ALTERNATIVE = "two-sided"
TEST_DESCRIPTION = (
    f"two-sided Welch's t-test (unequal variances) of the best vs the runner-up over seeds, "
    f"* p < {ALPHA:g}; n/a when either has fewer than 2 finished seeds"
)


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of sample ``a`` (best) against ``b`` (runner-up)."""

    n_a: int
    n_b: int
    t: float | None
    p: float | None
    note: str = ""
    """Why there is no result ("n<2", "zero variance", "no runner-up"), empty otherwise."""

    @property
    def available(self) -> bool:
        return self.p is not None

    @property
    def significant(self) -> bool | None:
        return None if self.p is None else self.p < ALPHA

    def text(self) -> str:
        """Short form for a table cell: ``p=0.012 *``, ``p=0.41`` or ``n/a (n<2)``."""
        if self.p is None:
            return f"n/a ({self.note})" if self.note else "n/a"
        return f"p={format_p(self.p)}" + (" *" if self.significant else "")


def format_p(p: float) -> str:
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Two-sided Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``).

    With fewer than two values on either side the result is "n/a"; when both samples have zero
    variance the statistic is undefined and the result is "n/a" as well.
    """
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return WelchResult(n_a, n_b, None, None, "n<2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_ind(list(a), list(b), equal_var=False, alternative=ALTERNATIVE)
    t = float(result.statistic)
    p = float(result.pvalue)
    if not (math.isfinite(t) and math.isfinite(p)):
        return WelchResult(n_a, n_b, None, None, "zero variance")
    return WelchResult(n_a, n_b, t, p)


class SampleSummary:
    """n, mean and sample standard deviation (ddof=1) of ``values`` (one home for the
    statistics every table cell, chart point and reference row shows)."""

    values: Sequence[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None with fewer than two values."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None
