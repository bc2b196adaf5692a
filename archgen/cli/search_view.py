"""Terminal display of ``archgen search``: live progress, then the Pareto table."""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from archgen.search.budget import format_seconds
from archgen.search.study import evaluates


class SearchView:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.done = 0
        self.repeats = 0
        self.failed = 0
        self.best: float | None = None
        self._live = Live(Text(""), console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> SearchView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def trial(self, trial: FrozenTrial) -> None:
        if trial.state is TrialState.COMPLETE and not evaluates(trial):
            self.repeats += 1
        elif trial.state is TrialState.COMPLETE:
            self.done += 1
            if all(c <= 0 for c in trial.constraints.values()):
                q = trial.values[0]
                self.best = q if self.best is None else max(self.best, q)
        elif trial.state is TrialState.FAIL:
            self.failed += 1
            self.log(f"trial {trial.number} failed: {trial.user_attrs.get('archgen:error')}")
        best = "-" if self.best is None else f"{self.best:.4f}"
        self._live.update(
            Text(
                f"candidates evaluated {self.done}  repeats {self.repeats}  failed {self.failed}"
                f"  best feasible quality {best}"
            )
        )

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
