"""The live line of ``archgen search``: counts over the whole study (every worker's trials); and
the summary table, in ratios to the base model and in time."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from archgen.cli.search_view import SearchView, progress_line
from archgen.search.study import BUDGET_CONSTRAINT

SLOT = {"layers.0.token_mixer": CategoricalDistribution(["a", "b", "c", "d", "e"])}


def _trial(label: str, quality: float, latency: float, over: float, **attrs) -> FrozenTrial:
    return optuna.trial.create_trial(
        params={"layers.0.token_mixer": label},
        distributions=SLOT,
        values=[quality, latency],
        constraints={BUDGET_CONSTRAINT: over},
        user_attrs=attrs,
    )


def test_progress_line_counts_the_whole_study() -> None:
    trials = [
        _trial("a", 0.5, 0.6, -1.0),  # feasible, on the front
        _trial("b", 0.7, 0.8, -1.0),  # feasible, on the front
        _trial("c", 0.6, 0.9, -1.0),  # feasible, dominated by b
        _trial("d", 0.9, 1.5, 1.0),  # best quality, but over the budget
        optuna.trial.create_trial(  # a repeat of b: pruned, pointing at it
            params={"layers.0.token_mixer": "b"},
            distributions=SLOT,
            state=TrialState.PRUNED,
            user_attrs={"same_as": 1},
        ),
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


def test_summary_shows_ratios_to_the_base_model_and_time() -> None:
    from archgen.search.budget import Budget
    from archgen.search.latency import TrustReport
    from archgen.search.report import Certified
    from archgen.search.run import SearchOutcome

    row = Certified(
        number=8, params={"layers.0.token_mixer": "b"}, quality=-0.08, predicted_ratio=0.85,
        measured_ratio=0.86, predicted_s=0.051, measured_s=0.0516, within_budget=True,
    )  # fmt: skip
    measurement = {
        "calibration": {"drift_min": 0.97, "drift_max": 1.12},
        "fewer_thread_measurements": 3, "remeasured": 2,
    }  # fmt: skip
    outcome = SearchOutcome(
        out=Path("o"), budget=Budget(fraction=0.9), reference_s=0.06, certified=[row], best=row,
        best_spec=Path("o/best.yaml"), best_model=None, winner=None,
        trust=TrustReport(7, 0.93, 0.81, 4.2), report={"measurement": measurement},
    )  # fmt: skip
    console = Console(record=True, width=120)
    SearchView(console).summary(outcome)
    text = console.export_text()
    assert "0.860 x" in text and "51.6 ms" in text and "ok" in text
    assert "best within budget 0.9 x the base model (54 ms): trial 8" in text
    assert "measured 0.860 x the base model (51.6 ms)" in text
    assert "Spearman 0.930" in text and "MAPE 4.2 %" in text
    assert "timed 0.97-1.12x its first calibration; 3 measurement(s)" in text
