"""Certification walks down the Pareto fronts: when every model of a front measures over budget
at the end (the machine's state moved since the study measured them), the next front is
certified instead of ending without a winner; it stops at the first front with a model within
budget, after a bounded number of fronts, and records everything in the study for other workers."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial

from archgen.search.certify import CERTIFICATION, certify, choose
from archgen.search.paired import PairedResult
from archgen.search.study import BUDGET_CONSTRAINT, pareto_front, pareto_fronts

SLOT = "layers.0.token_mixer"
DIST = {SLOT: CategoricalDistribution([f"m{i}" for i in range(9)])}
BUDGET = 0.9

# (quality, latency ratio recorded by the study); all within budget during the study
ROWS = [
    (-0.10, 0.89),  # 0: front 1
    (-0.20, 0.80),  # 1: front 1
    (-0.15, 0.895),  # 2: front 2 (dominated by 0 only)
    (-0.25, 0.79),  # 3: front 1 (fastest)
    (-0.30, 0.87),  # 4: front 3 (dominated by 1, and by 5 of front 2)
    (-0.22, 0.86),  # 5: front 2 (dominated by 1 only)
]


def _study() -> optuna.Study:
    study = optuna.create_study(
        directions=["maximize", "minimize"], storage=optuna.storages.InMemoryStorage()
    )
    for i, (quality, ratio) in enumerate(ROWS):
        trial = optuna.trial.create_trial(
            params={SLOT: f"m{i}"}, distributions=DIST, values=[quality, ratio],
            constraints={BUDGET_CONSTRAINT: ratio - BUDGET},
        )  # fmt: skip
        study.add_trial(trial)
    return study


def _result(ratio: float) -> PairedResult:
    return PairedResult(
        ratio=ratio, rel_error=0.01, reference_s=0.05, model_s=0.05 * ratio, rounds=48,
        rejected=0, attempts=1, utilisation=1.0, threads=2, stable=True, contended=False,
    )  # fmt: skip


class FakeMeasure:
    """Certification-time ratios per trial number; records which fronts were measured."""

    def __init__(self, ratios: dict[int, float]) -> None:
        self.ratios = ratios
        self.calls: list[list[int]] = []

    def __call__(self, front: Sequence[FrozenTrial]) -> list[PairedResult]:
        self.calls.append([t.number for t in front])
        return [_result(self.ratios[t.number]) for t in front]


def _certify(study: optuna.Study, measure: FakeMeasure, count: int = 3) -> tuple[list, bool]:
    return certify(
        study, pareto_fronts(study.trials, count), measure=measure,
        predicted=lambda t: t.values[1], limit=lambda: BUDGET, seconds=lambda r: 0.05 * r,
    )  # fmt: skip


def test_fronts_are_successive_non_dominated_layers() -> None:
    study = _study()
    fronts = [[t.number for t in f] for f in pareto_fronts(study.trials, 5)]
    assert fronts == [[3, 1, 0], [5, 2], [4]]  # each sorted by latency
    assert [t.number for t in pareto_front(study.trials)] == fronts[0]
    assert [[t.number for t in f] for f in pareto_fronts(study.trials, 2)] == fronts[:2]


def test_a_front_over_budget_hands_over_to_the_next_one() -> None:
    study = _study()
    # front 1 measures 5-10 % slower at the end: all over 0.9; front 2 has one model within
    measure = FakeMeasure({3: 0.91, 1: 0.93, 0: 0.97, 5: 0.89, 2: 0.95, 4: 0.80})
    certified, measured_here = _certify(study, measure)
    assert measured_here
    assert measure.calls == [[3, 1, 0], [5, 2]]  # front 3 not measured: front 2 has a winner
    assert [(c.number, c.front, c.within_budget) for c in certified] == [
        (3, 1, False), (1, 1, False), (0, 1, False), (5, 2, True), (2, 2, False),
    ]  # fmt: skip
    best = choose(certified)
    assert best is not None and (best.number, best.front) == (5, 2)
    recorded = study.user_attrs[CERTIFICATION]
    assert recorded["front"] == [3, 1, 0]
    assert len(recorded["measurements"]) == 5


def test_a_front_with_a_model_within_budget_is_the_only_one_measured() -> None:
    study = _study()
    measure = FakeMeasure({3: 0.80, 1: 0.93, 0: 0.97, 5: 0.85, 2: 0.85, 4: 0.80})
    certified, _ = _certify(study, measure)
    assert measure.calls == [[3, 1, 0]]
    assert {c.front for c in certified} == {1}
    best = choose(certified)
    assert best is not None and best.number == 3


def test_the_walk_is_bounded_and_may_end_without_a_winner() -> None:
    study = _study()
    measure = FakeMeasure({n: 1.2 for n in range(len(ROWS))})
    certified, _ = _certify(study, measure, count=2)
    assert measure.calls == [[3, 1, 0], [5, 2]]  # front 3 exists but is beyond the bound
    assert choose(certified) is None


def test_another_worker_reuses_the_recorded_walk() -> None:
    study = _study()
    first = FakeMeasure({3: 0.91, 1: 0.93, 0: 0.97, 5: 0.89, 2: 0.95, 4: 0.80})
    certified, _ = _certify(study, first)
    again = FakeMeasure({n: 0.5 for n in range(len(ROWS))})  # would pick another winner
    reused, measured_here = _certify(study, again)
    assert not measured_here and again.calls == []
    assert reused == certified
    assert choose(reused) == choose(certified)
