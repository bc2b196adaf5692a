"""One candidate -> (quality, latency): the predictor where it can be trusted, measurement where
it cannot or where the answer is close to the budget; and no decision on one bad measurement.

Latencies here are in *reference units*: fractions of the reference (base) model's latency,
measured in pairs with it (search/paired.py). Seconds are ``units x`` the reference's
calibrated seconds (:class:`~archgen.search.paired.ReferenceCalibration`).

What a measurement must survive before it is recorded (:meth:`LatencyJudge.measure`):

* **disagreeing with the prediction** by more than the predictor's recent error: measured
  again; with two that disagree with each other, a third, and the median is recorded;
* **over budget**: a second, confirming measurement; over budget is recorded only when the
  recorded value exceeds the limit by more than its uncertainty (a contended measurement, taken
  with fewer threads than the workload's, carries a larger one);
* **unstable or contended** measurements are recorded on the trial but never fed to the
  predictor's refit.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from archgen.ir.graph import Graph
from archgen.search.budget import Budget
from archgen.search.latency import LatencyPredictor, TrustReport, trust_report
from archgen.search.paired import PairedResult, ReferenceCalibration
from archgen.search.space import Candidate, SearchSpace
from archgen.search.study import Evaluation

# Models timed against the reference: graphs -> one paired result each (Measurer).
PairedMeasurer = Callable[[Sequence[Graph]], list[PairedResult]]

# A ratio measured with fewer threads than the workload's (the cores were busy) stands for the
# workload's ratio only this well: on the AMD EPYC VM, idle, eight hybrid candidates' ratios at
# 1 thread were 0-14 % below their 2-thread ratios (median 6 %; benchmarks/results/
# search_load.md). Lower, so a fallback measurement errs towards "within budget": it is never
# what makes a candidate infeasible, and certification asks it to fit with this allowance.
FALLBACK_THREADS_UNCERTAINTY = 0.08
CORES_BUSY = "cores_busy"  # trial attribute


@dataclass(frozen=True)
class LatencyPolicy:
    """Measure end to end while the predictor has too few checks or ranks badly, and whenever the
    prediction is within ``margin`` of the budget; re-measure what disagrees with the predictor
    by more than ``disagree_factor`` x its recent error (and at least ``disagree_floor``)."""

    min_samples: int = 6
    min_spearman: float = 0.9
    margin: float = 0.15
    disagree_factor: float = 3.0
    disagree_floor: float = 0.05
    recent: int = 8  # checks the recent error is taken over
    agree: float = 0.03  # two measurements within this (relative) confirm each other

    def should_measure(self, predicted: float, limit: float | None, trust: TrustReport) -> bool:
        if not trust.trustworthy(self.min_spearman, self.min_samples):
            return True
        if limit is None:
            return False
        return abs(predicted - limit) <= self.margin * limit


@dataclass(frozen=True)
class LatencyCheck:
    """A candidate's latency as recorded: the prediction made before measuring, and the
    measurement(s) that survived the rules above (reference units)."""

    predicted: float
    measured: float
    measurements: tuple[PairedResult, ...]
    uncertainty: float  # relative: what ``measured`` may be off by
    # every measurement stable and taken at the workload's threads on uncontended cores: what
    # the predictor may learn from
    clean: bool
    # one of the models the predictor was calibrated on (LatencyPredictor.calibrate): its
    # prediction came before the calibration, so it says nothing of the predictor's trust
    design: bool = False

    @property
    def threads(self) -> int:
        return min(m.threads for m in self.measurements)


@dataclass
class LatencyJudge:
    """Measures candidates against the reference and decides what is recorded."""

    space: SearchSpace
    predictor: LatencyPredictor
    measure_paired: PairedMeasurer
    budget: Budget
    calibration: ReferenceCalibration
    workload_threads: int
    policy: LatencyPolicy = LatencyPolicy()
    # candidates measured in this process, by SearchSpace.key
    known: dict[str, LatencyCheck] = field(default_factory=dict)
    remeasured: int = 0  # extra measurements taken by the rules

    @property
    def checks(self) -> list[tuple[float, float]]:
        """(predicted, measured) pairs, one per candidate measured after the predictor's
        calibration: what trust is judged on."""
        return [(c.predicted, c.measured) for c in self.known.values() if not c.design]

    def trust(self) -> TrustReport:
        return trust_report([p for p, _ in self.checks], [m for _, m in self.checks])

    def limit(self) -> float | None:
        """The budget in reference units, now."""
        return self.budget.limit_units(self.calibration.seconds)

    def seconds(self, units: float) -> float | None:
        return units * self.calibration.seconds if self.calibration.seconds else None

    def recent_error(self) -> float | None:
        """Median relative error of the predictor on the last checks (None with too few)."""
        checks = self.checks[-self.policy.recent :]
        if len(checks) < 4:
            return None
        return statistics.median(abs(p - m) / m for p, m in checks)

    def remember(self, candidate: Candidate, predicted: float, result: PairedResult) -> None:
        """Record a measurement of the calibration design as this candidate's (so it is not
        measured again); it is no check of the predictor."""
        self.known[self.space.key(candidate)] = LatencyCheck(
            predicted, result.ratio, (result,), self._uncertainty([result]),
            self._clean([result]), design=True,
        )  # fmt: skip

    def fallback_allowance(self, result: PairedResult) -> float:
        """What ``result`` may be off by for being taken at fallback threads."""
        return FALLBACK_THREADS_UNCERTAINTY if result.threads != self.workload_threads else 0.0

    def _uncertainty(self, results: Sequence[PairedResult]) -> float:
        spread = max(2 * r.rel_error for r in results)
        return max(spread, 0.01) + max(self.fallback_allowance(r) for r in results)

    def _clean(self, results: Sequence[PairedResult]) -> bool:
        return all(
            r.stable and not r.contended and r.threads == self.workload_threads for r in results
        )

    def _one(self, graph: Graph) -> PairedResult:
        (result,) = self.measure_paired([graph])
        self.calibration.observe_result(result)
        return result

    def _disagrees(self, predicted: float, measured: float) -> bool:
        error = self.recent_error()
        if error is None:
            return False
        bound = max(self.policy.disagree_factor * error, self.policy.disagree_floor)
        return abs(measured - predicted) / predicted > bound

    def _over(self, value: float, uncertainty: float) -> bool:
        limit = self.limit()
        return limit is not None and value > limit * (1 + uncertainty)

    def measure(
        self, candidate: Candidate, *, graph: Graph | None = None, predicted: float | None = None
    ) -> LatencyCheck:
        """``candidate``'s latency, measured now unless already known, by the rules above
        (``graph`` and ``predicted``: its graph and prediction, where the caller has them)."""
        key = self.space.key(candidate)
        if key in self.known:
            return self.known[key]
        graph = graph if graph is not None else self.space.graph_for(candidate)
        predicted = predicted if predicted is not None else self.predictor.predict(graph)
        results = [self._one(graph)]
        first = results[0].ratio
        if self._disagrees(predicted, first) or self._over(first, self._uncertainty(results)):
            results.append(self._one(graph))
            a, b = results[0].ratio, results[1].ratio
            if abs(a - b) / min(a, b) > self.policy.agree:
                results.append(self._one(graph))
            self.remeasured += len(results) - 1
        measured = statistics.median(r.ratio for r in results)
        check = LatencyCheck(
            predicted, measured, tuple(results), self._uncertainty(results), self._clean(results)
        )
        self.known[key] = check
        if check.clean:
            self.predictor.observe(graph, measured)
        return check

    def over_budget(self, check: LatencyCheck) -> float | None:
        """The Optuna constraint (> 0: infeasible), in reference units: by how much the
        latency exceeds the limit beyond its uncertainty."""
        limit = self.limit()
        if limit is None:
            return None
        return check.measured - limit * (1 + check.uncertainty)

    def predicted_over_budget(self, predicted: float) -> float | None:
        limit = self.limit()
        return None if limit is None else predicted - limit


@dataclass
class CandidateEvaluator:
    """What a study trial calls: quality from the proxy, latency from the judge."""

    judge: LatencyJudge
    quality: Callable[[Candidate, Graph], float]

    def __call__(self, candidate: Candidate) -> Evaluation:
        judge = self.judge
        graph = judge.space.graph_for(candidate)
        predicted = judge.predictor.predict(graph)
        quality = self.quality(candidate, graph)
        key = judge.space.key(candidate)
        if key in judge.known or judge.policy.should_measure(
            predicted, judge.limit(), judge.trust()
        ):
            check = judge.measure(candidate, graph=graph, predicted=predicted)
            return Evaluation(
                quality=quality,
                latency=check.measured,
                predicted=check.predicted,
                measured=check.measured,
                over_budget=judge.over_budget(check),
                extra=_attrs(judge, check),
            )
        seconds = judge.seconds(predicted)
        return Evaluation(
            quality=quality,
            latency=predicted,
            predicted=predicted,
            over_budget=judge.predicted_over_budget(predicted),
            extra={"predicted_s": seconds},
        )


def _attrs(judge: LatencyJudge, check: LatencyCheck) -> dict[str, object]:
    """What a trial records of its measurement, beyond the two ratios."""
    return {
        "calibration_design": check.design,
        "predicted_s": judge.seconds(check.predicted),
        "measured_s": judge.seconds(check.measured),
        "latency_uncertainty": check.uncertainty,
        "measurements": len(check.measurements),
        "measured_threads": check.threads,
        "clean_measurement": check.clean,
        # the cores were busy: measured with fewer threads than the workload's (said live)
        CORES_BUSY: check.threads < judge.workload_threads,
    }
