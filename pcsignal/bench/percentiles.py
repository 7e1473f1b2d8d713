"""Percentiles for the benchmarks' reports."""

from __future__ import annotations

import math
from typing import Optional


def percentile(values: list[float], fraction: float) -> Optional[float]:
    """
    Nearest-rank percentile (fraction in 0..1) of values; None if empty.
    The p95 of 20 values is the 19th smallest, not the largest.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(round(fraction * len(ordered), 9)))
    return ordered[min(rank, len(ordered)) - 1]
