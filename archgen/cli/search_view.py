"""Terminal display of ``archgen search``: live progress, then the Pareto table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from archgen.search.budget import format_seconds
from archgen.search.evaluate import CORES_BUSY
from archgen.search.study import evaluates, feasible, pareto_front

if TYPE_CHECKING:
    from archgen.search.run import SearchOutcome


def progress_line(trials: Sequence[FrozenTrial]) -> str:
    """Counts over the study: complete trials are evaluated candidates; a repeat is a pruned
    trial marked ``same_as`` (search/study.py)."""
    evaluated = [t for t in trials if t.state is TrialState.COMPLETE and evaluates(t)]
    repeats = sum(not evaluates(t) for t in trials)
    qualities = [t.values[0] for t in evaluated if feasible(t)]
    failed = sum(t.state is TrialState.FAIL for t in trials)
    best = f"{max(qualities):.4f}" if qualities else "-"
    return (
        f"candidates evaluated {len(evaluated)}  repeats {repeats}  "
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
        if trial.user_attrs.get(CORES_BUSY):
            self.log(
                f"trial {trial.number}: the cores are busy (another process); measured with "
                f"{trial.user_attrs.get('measured_threads')} thread(s) and flagged"
            )
        self._live.update(Text(progress_line(study_trials)))

    def summary(self, outcome: SearchOutcome) -> None:
        table = Table(
            title="Pareto set (measured end to end after the search, paired with the base model)",
            title_justify="left",
        )
        columns = ("trial", "mixers per slot", "quality", "predicted", "measured", "time", "budget")
        for col in columns:
            table.add_column(col)
        for c in outcome.certified:
            mixers = " ".join(f"{k.split('.')[1]}:{v}" for k, v in c.params.items())
            table.add_row(
                str(c.number),
                mixers,
                f"{c.quality:.4f}",
                f"{c.predicted_ratio:.3f} x",
                f"{c.measured_ratio:.3f} x",
                _seconds(c.measured_s),
                "ok" if c.within_budget else "OVER",
            )
        self.console.print(table)
        trust = outcome.trust
        if trust.n >= 3:
            self.console.print(
                f"latency predictor on {trust.n} measured candidates: Spearman "
                f"{trust.spearman:.3f}, Kendall {trust.kendall:.3f}, MAPE {trust.mape:.1f} %",
                highlight=False,
            )
        measurement = outcome.report.get("measurement") or {}
        calibration = measurement.get("calibration") or {}
        if calibration.get("drift_min") is not None:
            self.console.print(
                f"machine: the base model timed {calibration['drift_min']:.2f}-"
                f"{calibration['drift_max']:.2f}x its first calibration; "
                f"{measurement.get('fewer_thread_measurements', 0)} measurement(s) taken with "
                f"fewer threads (cores busy), {measurement.get('remeasured', 0)} re-measured",
                highlight=False,
            )
        best = outcome.best
        if best is not None:
            self.console.print(
                f"best within budget {_budget(outcome)}: trial {best.number}, quality "
                f"{best.quality:.4f}, measured {best.measured_ratio:.3f} x the base model"
                + (f" ({_seconds(best.measured_s)})" if best.measured_s else "")
                + f" -> {outcome.best_spec}",
                highlight=False,
            )
            winner = outcome.winner
            if winner is not None:
                self.console.print(_winner_line(winner), highlight=False)
        else:
            self.console.print("[bold red]no candidate met the budget when measured[/]")
        self.console.print(f"report: {outcome.out}/report.json, plots: {outcome.out}/*.png")


def _budget(outcome: SearchOutcome) -> str:
    """The budget as a ratio to the base model and in seconds, as far as is known."""
    ratio = outcome.budget.limit_units(outcome.reference_s)
    seconds = outcome.budget.limit_seconds(outcome.reference_s)
    if ratio is None:
        return "-" if seconds is None else format_seconds(seconds)
    return f"{ratio:.3g} x the base model" + (f" ({format_seconds(seconds)})" if seconds else "")


def _seconds(seconds: float | None) -> str:
    return format_seconds(seconds) if seconds else "-"


def _winner_line(winner: Any) -> str:
    """The trained winner's validation: bits per byte of a language model; an image
    classifier's accuracy (higher is better) and loss."""
    if winner.teacher.bpb is None:
        finalized = (
            f", after {winner.finalize_steps} finalisation steps {winner.finalized}"
            if winner.finalized is not None
            else ""
        )
        return (
            f"trained winner: {winner.folder} (validation: teacher {winner.teacher}, assembled "
            f"{winner.assembled}{finalized})"
        )
    finalized = (
        f", after {winner.finalize_steps} finalisation steps {winner.finalized.bpb:.3f}"
        if winner.finalized is not None
        else ""
    )
    return (
        f"trained winner: {winner.folder} (validation bits per byte: teacher "
        f"{winner.teacher.bpb:.3f}, assembled {winner.assembled.bpb:.3f}{finalized})"
    )
