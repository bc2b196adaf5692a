"""CandidateEvaluator and LatencyJudge: when a candidate is measured, and that a measurement is
never repeated. (The rules against single bad measurements: tests/search/test_paired.py.)"""

from __future__ import annotations

import itertools

from archgen.search.budget import Budget
from archgen.search.evaluate import CandidateEvaluator, LatencyJudge, LatencyPolicy
from archgen.search.paired import PairedResult, ReferenceCalibration
from tests.search.fake_worker import LABELS, fake_space

# reference units: the all-attention model of three layers is 1.0
UNITS = {label: cost / (3 * LABELS["attention"][2]) for label, (_, _, cost) in LABELS.items()}


class _SumPredictor:
    """Predicts the sum of each layer's cost; records what it was shown."""

    def __init__(self, space) -> None:
        self.space = space
        self.observed: list[float] = []

    def predict(self, graph) -> float:
        ops = {n.name: n.op for n in graph.nodes}
        return sum(
            UNITS[label]
            for slot in self.space.slots
            for label, (op, _, _) in LABELS.items()
            if ops[slot.node] == op
        )

    def observe(self, graph, measured: float) -> None:
        self.observed.append(measured)


def _paired(ratio: float) -> PairedResult:
    return PairedResult(
        ratio=ratio, rel_error=0.003, reference_s=0.01, model_s=0.01 * ratio, rounds=8,
        rejected=0, attempts=1, utilisation=0.98, threads=2, stable=True, contended=False,
    )  # fmt: skip


def _evaluator(budget: Budget = Budget()):
    space = fake_space(3)
    calls: list[object] = []
    predictor = _SumPredictor(space)

    def measure(graphs) -> list[PairedResult]:
        calls.extend(graphs)
        return [_paired(predictor.predict(g) * 1.1) for g in graphs]  # 10 % above, same ranking

    judge = LatencyJudge(
        space=space, predictor=predictor,  # type: ignore[arg-type]
        measure_paired=measure, budget=budget, calibration=ReferenceCalibration(threads=2),
        workload_threads=2,
    )  # fmt: skip
    return space, CandidateEvaluator(judge, lambda candidate, graph: 1.0), calls


def test_a_remembered_candidate_is_not_measured_again() -> None:
    space, evaluator, calls = _evaluator()
    candidate = {s.node: "mamba" for s in space.slots}
    evaluator.judge.remember(candidate, 0.7, _paired(0.9))
    result = evaluator(candidate)
    assert calls == [] and (result.predicted, result.measured, result.latency) == (0.7, 0.9, 0.9)
    assert evaluator.judge.measure(candidate).measured == 0.9 and calls == []
    # a calibration model's prediction came before the calibration: it is no check of trust
    assert evaluator.judge.checks == []
    other = {**candidate, space.slots[0].node: "swa"}
    checked = evaluator.judge.measure(other)
    assert evaluator.judge.checks == [(checked.predicted, checked.measured)]


def test_candidates_are_measured_until_the_predictor_ranks_well_then_near_the_budget() -> None:
    limit = 0.7
    space, evaluator, calls = _evaluator(Budget(fraction=limit))
    labels = list(LABELS)
    candidates = [
        {s.node: label for s, label in zip(space.slots, combo, strict=True)}
        for combo in itertools.product(labels, repeat=3)
    ]
    judge = evaluator.judge
    policy: LatencyPolicy = judge.policy
    for candidate in candidates[:6]:  # too few checks to trust the predictor
        assert evaluator(candidate).measured is not None
    assert judge.trust().spearman > 0.9 and len(judge.checks) == policy.min_samples
    nears = []
    for candidate in candidates[6:]:
        before = len(calls)
        result = evaluator(candidate)
        near = abs(result.predicted - limit) <= policy.margin * limit
        assert (len(calls) > before) == near == (result.measured is not None), candidate
        nears.append(near)
        if result.measured is None:  # predicted only: the constraint is the prediction's
            assert result.over_budget == result.predicted - limit
    assert any(nears) and not all(nears)  # both cases were exercised


def test_trust_leaves_out_the_calibration_models() -> None:
    import optuna

    from archgen.search.run import _trust

    space = fake_space(3)
    labels = list(LABELS)

    def trial(i: int, predicted: float, measured: float, design: bool):
        params = {s.node: labels[(i + k) % len(labels)] for k, s in enumerate(space.slots)}
        attrs = {"predicted_ratio": predicted, "measured_ratio": measured}
        attrs["calibration_design"] = design
        dist = {s.node: optuna.distributions.CategoricalDistribution(labels) for s in space.slots}
        return optuna.trial.create_trial(
            params=params, distributions=dist, values=[1.0, measured], user_attrs=attrs
        )

    # calibration models predicted before the offset existed: far off; later checks agree
    trials = [trial(i, 0.7 + 0.05 * i, 0.9 - 0.05 * i, True) for i in range(3)]
    trials += [trial(i, 0.8 + 0.04 * i, 0.81 + 0.04 * i, False) for i in range(3, 7)]
    report = _trust(trials, {}, space)
    assert report.n == 4 and report.spearman == 1.0 and report.mape < 2
