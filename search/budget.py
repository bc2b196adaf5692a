"""Latency budgets written by people: ``10ms``, ``2.5 ms``, ``1s``, ``800us``."""

from __future__ import annotations

import re

from archgen.errors import ArchgenError

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]+)\s*$")


def parse_budget(text: str) -> float:
    """Seconds from a budget string.

    >>> parse_budget("10ms")
    0.01
    """
    match = _PATTERN.match(text)
    if not match or match.group(2) not in _UNITS:
        raise ArchgenError(
            f"cannot read the latency budget {text!r}",
            hint="write a number and a unit: 10ms, 2.5ms, 1s, 800us",
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ArchgenError(f"the latency budget must be positive, got {text!r}")
    return seconds


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"
