"""The live line of ``archgen search``: counts over the whole study (every worker's trials)."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from archgen.cli.search_view import progress_line

SLOT = {"layers.0.token_mixer": CategoricalDistribution(["a", "b", "c", "d", "e"])}


def _trial(label: str, quality: float, latency: float, over: float, **attrs) -> FrozenTrial:
    return optuna.trial.create_trial(
        params={"layers.0.token_mixer": label},
        distributions=SLOT,
        values=[quality, latency],
        constraints={"latency_over_budget_s": over},
        user_attrs=attrs,
    )


def test_progress_line_counts_the_whole_study() -> None:
    trials = [
        _trial("a", 0.5, 0.010, -1.0),  # feasible, on the front
        _trial("b", 0.7, 0.020, -1.0),  # feasible, on the front
        _trial("c", 0.6, 0.030, -1.0),  # feasible, dominated by b
        _trial("d", 0.9, 0.050, 1.0),  # best quality, but over the budget
        _trial("b", 0.7, 0.020, -1.0, same_as=1),  # a repeat of b
        optuna.trial.create_trial(state=TrialState.FAIL),
        optuna.trial.create_trial(state=TrialState.RUNNING),
    ]
    for number, t in enumerate(trials):
        t.number = number
    line = progress_line(trials)
    assert "candidates evaluated 4 " in line
    assert "repeats 1 " in line
    assert "failed 1 " in line
    assert "best feasible quality 0.7000 " in line  # d is better but infeasible
    assert line.endswith("Pareto set 2")
