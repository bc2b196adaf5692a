"""One candidate -> (quality, latency): the predictor where it can be trusted, measurement where
it cannot or where the answer is close to the budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from archgen.ir.graph import Graph
from archgen.search.latency import LatencyPredictor, TrustReport, trust_report
from archgen.search.space import Candidate, SearchSpace
from archgen.search.study import Evaluation


@dataclass
class LatencyPolicy:
    """Measure end to end while the predictor has too few checks or ranks badly, and whenever the
    prediction is within ``margin`` of the budget."""

    min_samples: int = 6
    min_spearman: float = 0.9
    margin: float = 0.15
    budget: float | None = None

    def should_measure(self, predicted: float, trust: TrustReport) -> bool:
        if not trust.trustworthy(self.min_spearman, self.min_samples):
            return True
        if self.budget is None:
            return False
        return abs(predicted - self.budget) <= self.margin * self.budget


@dataclass
class CandidateEvaluator:
    space: SearchSpace
    predictor: LatencyPredictor
    measure_graph: Callable[[Graph], float]
    quality: Callable[[Candidate, Graph], float]
    policy: LatencyPolicy
    # candidates measured end to end in this process, by SearchSpace.key: (predicted, measured),
    # the prediction made *before* the measurement was fed back to the predictor
    known: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def checks(self) -> list[tuple[float, float]]:
        """(predicted, measured) pairs, one per measured candidate: what trust is judged on."""
        return list(self.known.values())

    def trust(self) -> TrustReport:
        return trust_report([p for p, _ in self.checks], [m for _, m in self.checks])

    def remember(self, candidate: Candidate, predicted: float, measured: float) -> None:
        """Record an end-to-end measurement (and the prediction made before it) of ``candidate``,
        so that the candidate is not measured again in this process."""
        self.known[self.space.key(candidate)] = (predicted, measured)

    def measure(self, candidate: Candidate) -> tuple[float, float]:
        """(predicted, measured) seconds of ``candidate``, measured now unless already known."""
        key = self.space.key(candidate)
        if key not in self.known:
            graph = self.space.graph_for(candidate)
            predicted = self.predictor.predict(graph)
            measured = self.measure_graph(graph)
            self.remember(candidate, predicted, measured)
            self.predictor.observe(graph, measured)
        return self.known[key]

    def __call__(self, candidate: Candidate) -> Evaluation:
        graph = self.space.graph_for(candidate)
        predicted = self.predictor.predict(graph)
        measured = None
        key = self.space.key(candidate)
        if key in self.known or self.policy.should_measure(predicted, self.trust()):
            predicted, measured = self.measure(candidate)
        quality = self.quality(candidate, graph)
        return Evaluation(
            quality=quality,
            latency=measured if measured is not None else predicted,
            predicted=predicted,
            measured=measured,
        )
