"""CandidateEvaluator: when a candidate is measured, and that a measurement is never repeated."""

from __future__ import annotations

from archgen.search.evaluate import CandidateEvaluator, LatencyPolicy
from tests.search.fake_worker import LABELS, fake_space

MS = {label: cost * 1e-3 for label, (_, _, cost) in LABELS.items()}


class _SumPredictor:
    """Predicts the sum of each layer's cost; records what it was shown."""

    def __init__(self, space) -> None:
        self.space = space
        self.observed: list[float] = []

    def predict(self, graph) -> float:
        ops = {n.name: n.op for n in graph.nodes}
        return sum(
            MS[label]
            for slot in self.space.slots
            for label, (op, _, _) in LABELS.items()
            if ops[slot.node] == op
        )

    def observe(self, graph, measured: float) -> None:
        self.observed.append(measured)


def _evaluator(budget: float | None = None):
    space = fake_space(3)
    calls: list[object] = []
    predictor = _SumPredictor(space)

    def measure_graph(graph) -> float:
        calls.append(graph)
        return predictor.predict(graph) * 1.1  # measured: 10 % above, same ranking

    evaluator = CandidateEvaluator(
        space=space,
        predictor=predictor,  # type: ignore[arg-type]
        measure_graph=measure_graph,
        quality=lambda candidate, graph: 1.0,
        policy=LatencyPolicy(budget=budget),
    )
    return space, evaluator, calls


def test_a_remembered_candidate_is_not_measured_again() -> None:
    space, evaluator, calls = _evaluator()
    candidate = {s.node: "mamba" for s in space.slots}
    evaluator.remember(candidate, 0.007, 0.009)
    result = evaluator(candidate)
    assert calls == [] and (result.predicted, result.measured, result.latency) == (
        0.007,
        0.009,
        0.009,
    )
    assert evaluator.measure(candidate) == (0.007, 0.009) and calls == []
    assert evaluator.checks == [(0.007, 0.009)]  # one check per candidate


def test_candidates_are_measured_until_the_predictor_ranks_well_then_near_the_budget() -> None:
    import itertools

    space, evaluator, calls = _evaluator(budget=0.009)
    labels = list(LABELS)
    candidates = [
        {s.node: label for s, label in zip(space.slots, combo, strict=True)}
        for combo in itertools.product(labels, repeat=3)
    ]
    policy = evaluator.policy
    for i, candidate in enumerate(candidates[:6]):  # too few checks to trust the predictor
        assert evaluator(candidate).measured is not None
        assert len(calls) == i + 1
    assert evaluator.trust().spearman > 0.9 and len(evaluator.checks) == policy.min_samples
    nears = []
    for candidate in candidates[6:]:
        before = len(calls)
        result = evaluator(candidate)
        near = abs(result.predicted - 0.009) <= policy.margin * 0.009
        assert (len(calls) > before) == near == (result.measured is not None), candidate
        nears.append(near)
    assert any(nears) and not all(nears)  # both cases were exercised
