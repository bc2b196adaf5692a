"""Paired, relative latency measurement: every model timed call by call between calls of a
*reference* (the spec's base model), and recorded as a ratio to it.

Why ratios. On a shared 2-core VM a model's latency moves by 10-40 % between the start and the
end of a search (and by 3-6x while another process competes for the cores); what does not move
is how two models compare when they are timed in alternation, each call next to a call of the
other. So a candidate's latency is ``ratio x reference seconds``: the ratio comes from calls
made under the same conditions, and the reference's seconds from its own calibration
(:class:`ReferenceCalibration`). A relative budget (``90%``) is checked on the ratio alone.

Why robust. A load spike lengthens single calls by 10-20x. Each round gives one ratio per
model (its call divided by the mean of the reference calls around it); ratios beyond
``outlier_mads`` median absolute deviations of the median are rejected, the ratio is the median
of the rest, and a measurement whose relative standard error is still above
``max_rel_error`` is repeated with more rounds (at most ``max_attempts`` times in all) and
flagged *unstable* if it never settles.

Why utilisation. Torch's intra-op threads spin while they wait for each other, so with
``threads`` threads on ``threads`` cores one other busy process slows a model 3-6x and the
process's CPU time falls below ``threads`` x wall time (0.98 quiet, 0.62 with one busy loop on
the AMD EPYC VM). A measurement below ``contended_below`` is *contended*: it is not the
workload's latency, and the caller measures again with fewer threads (:mod:`.measure`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float: ...

    def cpu(self) -> float:
        """CPU seconds used by this process (all threads)."""
        ...


class SystemClock:
    def wall(self) -> float:
        return time.perf_counter()

    def cpu(self) -> float:
        return time.process_time()


# One timed call of a model: seconds.
Call = Callable[[], float]


@dataclass(frozen=True)
class PairingPolicy:
    """How long a paired measurement runs and when it is believed.

    On the AMD EPYC VM, idle, one round's ratio of two hybrid models scatters by ~12 % (calls of
    one model range 51-100 ms within seconds, with rare 1-2 s stalls): 24 rounds give a ratio
    to ~2.5 %, and an unsettled measurement doubles its rounds up to twice."""

    rounds: int = 24
    max_attempts: int = 3  # each further attempt doubles the rounds
    outlier_mads: float = 3.5
    max_rel_error: float = 0.02  # relative standard error of a ratio that counts as stable
    # CPU time / (threads x wall time): 0.89-0.98 idle, 0.55-0.64 beside one busy loop
    contended_below: float = 0.8
    min_mad: float = 0.002  # relative MAD floor: equal models would reject everything else

    def contended(self, utilisation: float | None) -> bool:
        """Whether a timing at this CPU utilisation had the cores to itself (None: unknown)."""
        return utilisation is not None and utilisation < self.contended_below


@dataclass(frozen=True)
class PairedResult:
    """One model against the reference."""

    ratio: float  # model latency / reference latency, robust over the kept rounds
    rel_error: float  # relative standard error of ``ratio``
    reference_s: float  # median seconds of the reference's calls during this measurement
    model_s: float  # median seconds of the model's calls (as timed, under whatever load)
    rounds: int
    rejected: int  # rounds rejected as outliers
    attempts: int
    utilisation: float | None  # CPU time / (threads x wall); None where it means nothing
    threads: int
    stable: bool
    contended: bool

    def to_json(self) -> dict[str, float | int | bool | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RobustRatio:
    value: float
    rel_error: float
    kept: int
    rejected: int


def robust_ratio(ratios: Sequence[float], policy: PairingPolicy) -> RobustRatio:
    """Median of ``ratios`` after rejecting those beyond ``outlier_mads`` scaled MADs, and its
    relative standard error (1.2533 sigma / sqrt(n), sigma from the MAD: the median's)."""
    if not ratios:
        raise ValueError("no ratios")
    center = statistics.median(ratios)
    mad = 1.4826 * statistics.median(abs(r - center) for r in ratios)
    mad = max(mad, policy.min_mad * abs(center))
    kept = [r for r in ratios if abs(r - center) <= policy.outlier_mads * mad]
    value = statistics.median(kept)
    if len(kept) >= 3:
        sigma = 1.4826 * statistics.median(abs(r - value) for r in kept)
        rel_error = 1.2533 * sigma / math.sqrt(len(kept)) / value if value else math.inf
    else:
        rel_error = math.inf
    return RobustRatio(value, rel_error, len(kept), len(ratios) - len(kept))


@dataclass
class _Series:
    ratios: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


def measure_paired(
    reference: Call,
    models: Sequence[Call],
    *,
    threads: int,
    policy: PairingPolicy = PairingPolicy(),
    clock: Clock | None = None,
    cpu_meaningful: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[PairedResult]:
    """Time ``models`` against ``reference`` in rounds ``R M1 R M2 R ... Mk R``; ``log`` hears
    when measurements are repeated (on a busy machine that is where the minutes go).

    Every model call sits between two reference calls and its round ratio is its time over
    their mean: a slow spell that covers a few calls moves both sides. Calls are assumed warm.
    ``cpu_meaningful``: False for cost models and GPUs, where CPU time says nothing of
    contention."""
    clock = clock or SystemClock()
    series = [_Series() for _ in models]
    ref_times: list[float] = []
    cpu_used = wall_used = 0.0
    rounds = policy.rounds
    # every round the attempts could take: the most a measurement can gather
    most_rounds = policy.rounds * (2**policy.max_attempts - 1)
    done: list[PairedResult | None] = [None] * len(models)
    for attempt in range(1, policy.max_attempts + 1):
        pending = [i for i, d in enumerate(done) if d is None]
        wall0, cpu0 = clock.wall(), clock.cpu()
        for _ in range(rounds):
            before = reference()
            ref_times.append(before)
            for i in pending:
                t = models[i]()
                after = reference()
                ref_times.append(after)
                series[i].times.append(t)
                series[i].ratios.append(t / ((before + after) / 2))
                before = after
        cpu_used += clock.cpu() - cpu0
        wall_used += clock.wall() - wall0
        utilisation = cpu_used / (threads * wall_used) if cpu_meaningful and wall_used else None
        contended = policy.contended(utilisation)
        for i in pending:
            r = robust_ratio(series[i].ratios, policy)
            stable = r.rel_error <= policy.max_rel_error
            # the error falls as 1/sqrt(rounds): if even every round left could not bring it
            # under the bound, more attempts only cost time (minutes on a busy machine)
            hopeless = (
                r.rel_error * math.sqrt(len(series[i].ratios) / most_rounds) > policy.max_rel_error
            )
            # a contended measurement is not repeated here: the caller re-measures it with fewer
            # threads, which more rounds at these threads would not fix
            if stable or contended or hopeless or attempt == policy.max_attempts:
                done[i] = PairedResult(
                    ratio=r.value,
                    rel_error=r.rel_error,
                    reference_s=statistics.median(ref_times),
                    model_s=statistics.median(series[i].times),
                    rounds=len(series[i].ratios),
                    rejected=r.rejected,
                    attempts=attempt,
                    utilisation=utilisation,
                    threads=threads,
                    stable=stable,
                    contended=contended,
                )
        if all(d is not None for d in done):
            break
        rounds *= 2
        if log is not None:
            left = sum(d is None for d in done)
            log(f"  {left} measurement(s) not settled yet: {rounds} more rounds")
    return [d for d in done if d is not None]


@dataclass
class ReferenceCalibration:
    """The reference model's latency in seconds at the workload's threads on an uncontended
    machine: what turns ratios into seconds (and an absolute budget into a ratio).

    Set by the first clean timing; every later clean paired measurement is an observation of
    it. The machine's speed moves (turbo, neighbours on the host, thermal state): when the last
    ``confirm`` clean observations all lie more than ``tolerance`` away on the same side, the
    calibration moves to their median. Contended observations and those at fallback threads
    are counted, never used."""

    threads: int
    seconds: float | None = None
    tolerance: float = 0.10
    confirm: int = 2
    first_s: float | None = None
    recalibrations: int = 0
    observed: list[float] = field(default_factory=list)  # reference seconds, clean timings
    contended: int = 0
    _window_start: int = 0  # observations before this one were judged by a past calibration

    def observe(self, reference_s: float, threads: int, contended: bool) -> bool:
        """Record one observation; whether the calibration moved."""
        if contended or threads != self.threads:
            self.contended += 1
            return False
        self.observed.append(reference_s)
        if self.seconds is None:
            self.seconds = self.first_s = reference_s
            self._window_start = len(self.observed)
            return True
        recent = self.observed[max(self._window_start, len(self.observed) - self.confirm) :]
        if len(recent) < self.confirm:
            return False
        rel = [r / self.seconds - 1 for r in recent]
        if all(x > self.tolerance for x in rel) or all(x < -self.tolerance for x in rel):
            self.seconds = statistics.median(recent)
            self.recalibrations += 1
            self._window_start = len(self.observed)
            return True
        return False

    def observe_result(self, result: PairedResult) -> bool:
        return self.observe(result.reference_s, result.threads, result.contended)

    def drift(self) -> dict[str, float | int | None]:
        """How much the machine moved during the study: clean reference timings relative to
        the first calibration, and how often the calibration moved or the cores were busy."""
        rel = [r / self.first_s for r in self.observed] if self.first_s else []
        return {
            "reference_first_s": self.first_s,
            "reference_now_s": self.seconds,
            "drift_min": min(rel) if rel else None,
            "drift_max": max(rel) if rel else None,
            "recalibrations": self.recalibrations,
            "contended_reference_timings": self.contended,  # skipped: cores busy
        }
