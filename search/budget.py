"""Latency budgets written by people: ``10ms``, ``2.5 ms``, ``1s``, ``800us``; and, where the
search allows it, ``90%``: a fraction of the spec's base model's latency measured on this machine
(absolute budgets belong to one machine; a relative one travels)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from archgen.errors import ArchgenError


@dataclass(frozen=True)
class RelativeBudget:
    """``fraction`` of the base model's measured latency; resolved by the search."""

    fraction: float

    def resolve(self, base_seconds: float) -> float:
        return self.fraction * base_seconds

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}% of the base model"


_PERCENT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")


def parse_search_budget(text: str) -> float | RelativeBudget:
    """Seconds, or a :class:`RelativeBudget` for ``N%`` (0 < N <= 100)."""
    match = _PERCENT.match(text)
    if match is None:
        return parse_budget(text)
    fraction = float(match.group(1)) / 100
    if not 0 < fraction <= 1:
        raise ArchgenError(
            f"a relative latency budget must be in (0%, 100%], got {text!r}",
            hint="e.g. --budget 90% (of the base model's latency on this machine)",
        )
    return RelativeBudget(fraction)


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
            hint="write a number and a unit: 10ms, 2.5ms, 1s, 800us (archgen search also takes "
            "a percentage of the base model's latency: 90%)",
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):  # 1e400ms reads as inf: no budget at all, not a budget
        raise ArchgenError(
            f"the latency budget {text!r} is too large to be a number",
            hint="write a finite budget such as 10ms",
        )
    if seconds <= 0:
        raise ArchgenError(f"the latency budget must be positive, got {text!r}")
    return seconds


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


@dataclass(frozen=True)
class Budget:
    """A search's latency budget, resolved once from the user's text and held in one place:
    ``fraction`` of the reference (base) model, or ``seconds``, or neither (no budget).

    The search works in reference units (fractions of the reference's latency, measured in
    pairs): a relative budget is its fraction whatever the machine's speed; an absolute one is
    converted through the reference's calibrated seconds, so it follows the calibration."""

    fraction: float | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> Budget:
        if text is None:
            return cls()
        value = parse_search_budget(text)
        if isinstance(value, RelativeBudget):
            return cls(fraction=value.fraction)
        return cls(seconds=value)

    @property
    def is_set(self) -> bool:
        return self.fraction is not None or self.seconds is not None

    def limit_units(self, reference_s: float | None) -> float | None:
        """The budget as a fraction of the reference's latency (None: no budget, or an
        absolute budget before the reference is calibrated)."""
        if self.fraction is not None:
            return self.fraction
        if self.seconds is not None and reference_s:
            return self.seconds / reference_s
        return None

    def limit_seconds(self, reference_s: float | None) -> float | None:
        if self.seconds is not None:
            return self.seconds
        if self.fraction is not None and reference_s:
            return self.fraction * reference_s
        return None

    def __str__(self) -> str:
        if self.fraction is not None:
            return str(RelativeBudget(self.fraction))
        return format_seconds(self.seconds) if self.seconds is not None else "none"
