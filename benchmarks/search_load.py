"""The README's main job under load, and what a quiet machine says afterwards.

    python -m benchmarks.search_load summary RUN_DIR [RUN_DIR ...]
    python -m benchmarks.search_load recheck RUN_DIR

``summary`` prints one table row per finished search (its report.json): predictor trust, the
winner and its certified ratio to the base model, candidates recorded infeasible, and the
measurement record (calibration drift, contended measurements). ``recheck`` re-measures, on
what should be a quiet machine, every candidate the search recorded as over budget, each
against the base model as a trial does, and counts those that are in fact within budget (the
issue's "wrongly recorded infeasible"; it must be 0). benchmarks/search_load.sh runs the three
load scenarios and both commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import optuna

from archgen.search.measure import Measurer
from archgen.search.study import BUDGET_CONSTRAINT, evaluates
from archgen.search_api import SearchOptions, plan_search


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def summary(runs: list[Path]) -> None:
    print(
        "| run | Spearman | MAPE | measured | recorded infeasible | winner (trial) | "
        "certified x base | budget x base | drift (min-max) | contended | re-measured |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        r = _report(run)
        trust, best, m = r["predictor_trust"], r.get("best"), r.get("measurement") or {}
        cal = m.get("calibration") or {}
        infeasible = sum(
            1 for h in r["history"] if h.get("feasible") is False and h.get("same_as") is None
        )
        measured = sum(1 for h in r["history"] if h.get("measured_ratio") is not None)
        drift = (
            f"{cal['drift_min']:.2f}-{cal['drift_max']:.2f}"
            if cal.get("drift_min") is not None
            else "-"
        )
        winner = f"{best['number']}" if best else "NONE"
        ratio = f"{best['measured_ratio']:.3f}" if best else "-"
        budget = r.get("budget_ratio")
        # reports written before the key was renamed call it contended_measurements
        fewer = m.get("fewer_thread_measurements", m.get("contended_measurements"))
        print(
            f"| {run.name} | {trust['spearman']:.3f} | {trust['mape']:.1f} % | {measured} | "
            f"{infeasible} | {winner} | {ratio} | "
            f"{budget:.3f} | {drift} | {fewer} | "
            f"{m.get('remeasured')} |"
        )


def recheck(run: Path, spec: str) -> int:
    r = _report(run)
    storage = r["study"]["storage"]
    study = optuna.load_study(study_name=r["study"]["name"], storage=storage)
    limit = r["budget_ratio"]
    over = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE"
        and evaluates(t)
        and t.user_attrs.get("measured_ratio") is not None
        and t.constraints.get(BUDGET_CONSTRAINT, 0) > 0
    ]
    plan = plan_search(spec, SearchOptions(quick=True, out=run))
    measurer = Measurer(plan.workload, reference=plan.space.base)
    wrong = 0
    print(f"{run}: {len(over)} candidate(s) recorded over the budget ({limit:.3f} x base)")
    for t in over:
        (result,) = measurer.measure_against_reference([plan.space.graph_for(t.params)])
        within = result.ratio <= limit
        wrong += within
        print(
            f"  trial {t.number}: recorded {t.user_attrs['measured_ratio']:.3f}, now "
            f"{result.ratio:.3f} ({result.threads} thread(s), utilisation "
            f"{result.utilisation or 0:.2f}){'  WITHIN BUDGET' if within else ''}"
        )
    print(f"wrongly recorded infeasible: {wrong}")
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary")
    s.add_argument("runs", nargs="+", type=Path)
    c = sub.add_parser("recheck")
    c.add_argument("run", type=Path)
    c.add_argument("--spec", default="examples/hybrid.yaml")
    args = parser.parse_args()
    if args.command == "summary":
        summary(args.runs)
    else:
        sys.exit(1 if recheck(args.run, args.spec) else 0)


if __name__ == "__main__":
    main()
