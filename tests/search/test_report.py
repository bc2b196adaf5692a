"""report.json and the plots on a small in-memory study: each candidate once, a front of
non-dominated points only, the chosen trial marked, outliers kept off the axes' scale."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from archgen.search.latency import trust_report
from archgen.search.report import (
    Certified,
    Point,
    build_report,
    candidate_points,
    non_dominated,
    plot_data,
    quality_label,
    robust_limits,
    write_plots,
)
from archgen.search.study import BUDGET_CONSTRAINT, SAME_AS, pareto_front

SLOT = "layers.0.token_mixer"
DIST = {SLOT: CategoricalDistribution([f"m{i}" for i in range(12)])}
BUDGET = 0.9


def _study(rows: list[tuple]) -> optuna.Study:
    """rows: (label, quality, latency ratio) for a complete trial, (label, "same_as", n) for a
    pruned repeat of trial n, ("fail",) for a failed trial."""
    study = optuna.create_study(
        directions=["maximize", "minimize"], storage=optuna.storages.InMemoryStorage()
    )
    for row in rows:
        if row[0] == "fail":
            trial = optuna.trial.create_trial(state=TrialState.FAIL)
        elif row[1] == "same_as":
            trial = optuna.trial.create_trial(
                params={SLOT: row[0]}, distributions=DIST, state=TrialState.PRUNED,
                user_attrs={SAME_AS: row[2]},
            )  # fmt: skip
        else:
            label, quality, ratio = row
            trial = optuna.trial.create_trial(
                params={SLOT: label}, distributions=DIST, values=[quality, ratio],
                constraints={BUDGET_CONSTRAINT: ratio - BUDGET},
                user_attrs={"predicted_ratio": ratio, "measured_ratio": ratio},
            )  # fmt: skip
        study.add_trial(trial)
    return study


ROWS = [
    ("m0", -0.30, 0.70),  # 0: on the front
    ("m1", -0.05, 0.89),  # 1: the study's best feasible quality; over budget when certified
    ("m2", -0.20, 0.80),  # 2: dominated by 3
    ("m3", -0.15, 0.78),  # 3: on the front
    ("m1", "same_as", 1),  # 4: a repeat of 1
    ("m4", -0.02, 1.20),  # 5: over budget
    ("fail",),  # 6
    ("m3", "same_as", 3),  # 7: a repeat of 3
    ("m5", -0.08, 0.87),  # 8: on the front; chosen
    ("m6", -0.25, 20.0),  # 9: a load spike (20x the base model)
]


def _certified(study: optuna.Study) -> list[Certified]:
    ratios = {0: 0.71, 1: 0.95, 3: 0.80, 8: 0.86}  # 1 measured over the budget now
    out = []
    for t in pareto_front(study.trials):
        r = ratios[t.number]
        out.append(
            Certified(t.number, dict(t.params), t.values[0], t.values[1], r, t.values[1] * 0.06,
                      r * 0.06, r <= BUDGET)
        )  # fmt: skip
    return out


def test_repeats_are_not_complete_and_not_among_best_trials() -> None:
    study = _study(ROWS)
    repeats = [t for t in study.trials if SAME_AS in t.user_attrs]
    assert [t.state for t in repeats] == [TrialState.PRUNED, TrialState.PRUNED]
    best = {t.number for t in study.best_trials}
    assert not best & {t.number for t in repeats}
    labels = [t.params[SLOT] for t in study.best_trials]
    assert len(labels) == len(set(labels))
    # the plots draw each evaluated candidate once, repeats and failures not at all
    assert [p.number for p in candidate_points(study.trials)] == [0, 1, 2, 3, 5, 8, 9]


def test_front_joins_only_non_dominated_points() -> None:
    points = [
        Point(0, 0.70, -0.30, True),
        Point(1, 0.85, -0.10, True),
        Point(2, 0.80, -0.20, True),  # dominated by 3 (faster and better)
        Point(3, 0.78, -0.15, True),
        Point(4, 0.78, -0.15, True),  # identical to 3: drawn once
        Point(5, 0.90, -0.12, True),  # dominated by 1
        Point(6, 0.70, -0.35, True),  # as fast as 0, worse
    ]
    assert [p.number for p in non_dominated(points)] == [0, 3, 1]
    assert non_dominated([]) == []
    data = plot_data(_study(ROWS).trials, [], None)
    # infeasible points (5: over budget, 9: the spike) are not on the front
    assert [p.number for p in data.front] == [0, 3, 8, 1]
    assert [p.number for p in data.points] == [0, 1, 2, 3, 5, 8, 9]


def test_history_marks_the_chosen_trial_not_the_best_study_quality() -> None:
    study = _study(ROWS)
    certified = _certified(study)
    assert {c.number for c in certified} == {0, 1, 3, 8}
    data = plot_data(study.trials, certified, chosen=8)
    assert data.chosen is not None and data.chosen.number == 8
    assert data.chosen.latency == pytest.approx(0.86)  # where it was certified
    assert plot_data(study.trials, certified, chosen=None).chosen is None


def test_outliers_are_left_off_the_axis_scale() -> None:
    latencies = [0.80, 0.82, 0.85, 0.88, 0.90, 0.93, 0.95, 1.0, 1.05, 1.10]
    assert robust_limits(latencies, log=True) is None  # nothing to leave out: autoscale
    lo, hi = robust_limits([*latencies, 15.0, 21.0], keep=[0.9, 1.0], log=True)
    assert 0.7 < lo < 0.8 and 1.1 < hi < 1.3  # the 15x and 21x spikes are beyond the axis
    # a kept value (the budget) stays in view even if it is far from the points
    assert robust_limits([*latencies, 15.0], keep=[0.5], log=True)[0] < 0.5
    # quality, linear: one collapsed score does not squash the others
    qualities = [-0.10, -0.12, -0.15, -0.11, -0.14, -0.13, -3.0]
    lo, hi = robust_limits(qualities)
    assert -0.2 < lo < -0.15 and hi > -0.1
    assert robust_limits([1.0, 2.0, 50.0]) is None  # too few points to call one an outlier
    assert robust_limits([1.0] * 6 + [9.0]) is None  # no spread: nothing to scale by


def test_quality_axis_says_what_it_is_and_which_way_is_better() -> None:
    assert "blockwise distillation loss" in quality_label("blockwise")
    assert "recall accuracy" in quality_label("capability")
    assert all("higher is better" in quality_label(f) for f in ("blockwise", "analytic", "x"))


def test_report_and_plots(tmp_path: Path) -> None:
    study = _study(ROWS)
    trials: list[FrozenTrial] = study.trials
    certified = _certified(study)
    best = next(c for c in certified if c.number == 8)
    checks = [(t.values[1], t.values[1] * 1.05) for t in trials if t.state is TrialState.COMPLETE]
    report = build_report(
        spec_name="m", budget_ratio=BUDGET, budget_s=BUDGET * 0.06, workload={},
        environment={}, trials=trials, certified=certified,
        trust=trust_report([p for p, _ in checks], [m for _, m in checks]), excluded=[],
        best=best, quality_fidelity="blockwise", measurement={"reference": "base"},
    )  # fmt: skip
    json.dumps(report)
    counts = report["trials"]
    assert counts["complete"] == counts["evaluated"] == 7
    assert counts["repeats"] == 2 and counts["unneeded"] == 0 and counts["fail"] == 1
    assert report["budget_ratio"] == BUDGET and report["measurement"] == {"reference": "base"}
    assert [h["number"] for h in report["history"] if h["chosen"]] == [8]
    assert report["best"]["measured_ratio"] == pytest.approx(0.86)
    written = write_plots(
        tmp_path, trials, certified, BUDGET, checks, reference_s=0.06, chosen=8,
        fidelity="blockwise",
    )  # fmt: skip
    assert written == ["pareto.png", "predicted_vs_measured.png", "history.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in written)
