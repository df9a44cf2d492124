"""Learning-rate schedules as multipliers of the base rate (one home for the cosine)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def cosine_factor(position: float, total: float) -> float:
    """``0.5 * (1 + cos(pi * position / total))``: 1 at the start, 0 at ``total``."""
    return 0.5 * (1.0 + math.cos(math.pi * min(position, total) / total))


def step_factor(position: float, milestones: Sequence[float], gamma: float) -> float:
    """``gamma ** (number of milestones reached)``."""
    return float(gamma) ** sum(position >= m for m in milestones)
