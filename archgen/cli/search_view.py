"""Terminal display of ``archgen search``: live progress, then the Pareto table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from archgen.search.budget import format_seconds
from archgen.search.study import evaluates, feasible, pareto_front


def progress_line(trials: Sequence[FrozenTrial]) -> str:
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    evaluated = [t for t in complete if evaluates(t)]
    qualities = [t.values[0] for t in evaluated if feasible(t)]
    failed = sum(t.state is TrialState.FAIL for t in trials)
    best = f"{max(qualities):.4f}" if qualities else "-"
    return (
        f"candidates evaluated {len(evaluated)}  repeats {len(complete) - len(evaluated)}  "
        f"failed {failed}  best feasible quality {best}  Pareto set {len(pareto_front(trials))}"
    )


class SearchView:
    """One live line for the whole study -- all workers' trials, not only this process's:
    candidates evaluated, repeats, failures, best feasible quality, Pareto-set size."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live = Live(Text(""), console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> SearchView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def trial(self, trial: FrozenTrial, study_trials: Sequence[FrozenTrial]) -> None:
        if trial.state is TrialState.FAIL:
            self.log(f"trial {trial.number} failed: {trial.user_attrs.get('archgen:error')}")
        self._live.update(Text(progress_line(study_trials)))

    def summary(self, outcome: Any) -> None:
        report = outcome.report
        budget = report["budget_s"]
        table = Table(
            title="Pareto set (measured end to end after the search)", title_justify="left"
        )
        for col in ("trial", "mixers per slot", "quality", "predicted", "measured", "budget"):
            table.add_column(col)
        for c in report["pareto"]:
            mixers = " ".join(f"{k.split('.')[1]}:{v}" for k, v in c["params"].items())
            table.add_row(
                str(c["number"]),
                mixers,
                f"{c['quality']:.4f}",
                format_seconds(c["predicted_s"]),
                format_seconds(c["measured_s"]),
                "ok" if c["within_budget"] else "OVER",
            )
        self.console.print(table)
        trust = report["predictor_trust"]
        if trust["spearman"] is not None:
            self.console.print(
                f"latency predictor on {trust['n']} measured candidates: Spearman "
                f"{trust['spearman']:.3f}, Kendall {trust['kendall']:.3f}, "
                f"MAPE {trust['mape']:.1f} %",
                highlight=False,
            )
        if outcome.best_spec is not None:
            b = report["best"]
            self.console.print(
                f"best within budget {format_seconds(budget) if budget else '-'}: trial "
                f"{b['number']}, quality {b['quality']:.4f}, measured "
                f"{format_seconds(b['measured_s'])} -> {outcome.best_spec}",
                highlight=False,
            )
        else:
            self.console.print("[bold red]no candidate met the budget when measured[/]")
        self.console.print(f"report: {outcome.out}/report.json, plots: {outcome.out}/*.png")
