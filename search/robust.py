"""Combining latency measurements from several workers so one faulty worker cannot move them.

Nearest-neighbour averaging (NNA) as in MoNNA (Farhadkhani et al., ICML 2023): of ``q``
measurements, of which at most ``f`` may be faulty, keep the ``q - f`` closest to the median and
average them. With ``f = 0`` it is the plain mean; with ``f >= (q - 1) / 2`` it tends to the median.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def nearest_neighbour_average(values: Sequence[float], faulty: int) -> float:
    if not values:
        raise ValueError("no measurements to combine")
    if faulty < 0:
        raise ValueError("faulty must be >= 0")
    keep = max(1, len(values) - faulty)
    center = statistics.median(values)
    closest = sorted(values, key=lambda v: abs(v - center))[:keep]
    return sum(closest) / len(closest)


def robust_combine(values: Sequence[float], faulty_fraction: float = 0.34) -> float:
    """NNA assuming up to ``faulty_fraction`` of the workers may be faulty (at least one when
    there are three or more measurements)."""
    faulty = int(len(values) * faulty_fraction)
    if len(values) >= 3:
        faulty = max(faulty, 1)
    return nearest_neighbour_average(values, faulty)
