"""Search outputs: the Pareto table rows, ``report.json`` and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from archgen.search.latency import TrustReport
from archgen.search.study import ERROR, SAME_AS, WORKER, evaluates, feasible, is_proposal
from archgen.train.checkpoint import write_text_atomic


@dataclass(frozen=True)
class Certified:
    """A Pareto model measured end to end after the search."""

    number: int
    params: dict[str, str]
    quality: float
    predicted_s: float
    measured_s: float
    within_budget: bool


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def build_report(
    *,
    spec_name: str,
    budget_s: float | None,
    workload: dict[str, Any],
    environment: dict[str, str],
    trials: Sequence[FrozenTrial],
    certified: Sequence[Certified],
    trust: TrustReport,
    excluded: Sequence[Any],
    best: Certified | None,
    quality_fidelity: str,
    fidelity_check: dict[str, Any] | None = None,
) -> dict[str, Any]:
    trials = [t for t in trials if not is_proposal(t)]  # bookkeeping, not candidates
    states = {s.name.lower(): sum(t.state is s for t in trials) for s in TrialState}
    # complete = evaluated + repeats (a repeat reuses an earlier trial's result)
    states["evaluated"] = sum(t.state is TrialState.COMPLETE and evaluates(t) for t in trials)
    states["repeats"] = sum(not evaluates(t) for t in trials)
    return {
        "model": spec_name,
        "budget_s": budget_s,
        "workload": workload,
        "environment": environment,
        "quality_fidelity": quality_fidelity,
        "trials": states,
        "failed": [
            {"number": t.number, "params": t.params, "error": t.user_attrs.get(ERROR)}
            for t in trials
            if t.state is TrialState.FAIL
        ],
        "excluded_choices": [asdict(e) for e in excluded],
        "predictor_trust": {k: _finite(v) for k, v in asdict(trust).items()},
        "pareto": [asdict(c) for c in certified],
        "best": asdict(best) if best else None,
        "fidelity_check": fidelity_check,
        "history": [
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "values": t.values,
                "predicted_s": t.user_attrs.get("predicted_s"),
                "measured_s": t.user_attrs.get("measured_s"),
                "worker": t.user_attrs.get(WORKER),  # hostname:pid of the process that ran it
                "same_as": t.user_attrs.get(SAME_AS),  # a repeat: the trial it reused
                "feasible": feasible(t) if t.state is TrialState.COMPLETE else None,
            }
            for t in trials
        ],
    }


def write_plots(
    out: Path,
    trials: Sequence[FrozenTrial],
    certified: Sequence[Certified],
    budget_s: float | None,
    checks: Sequence[tuple[float, float]],
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t.state is TrialState.COMPLETE]
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    ok = [t for t in done if feasible(t)]
    bad = [t for t in done if not feasible(t)]
    ax.scatter([t.values[1] * 1e3 for t in ok], [t.values[0] for t in ok], s=14, label="feasible")
    ax.scatter(
        [t.values[1] * 1e3 for t in bad],
        [t.values[0] for t in bad],
        s=14,
        marker="x",
        label="over budget",
    )
    if certified:
        pts = sorted((c.measured_s * 1e3, c.quality) for c in certified)
        ax.plot(*zip(*pts, strict=True), "k.-", label="Pareto (measured)")
    if budget_s is not None:
        ax.axvline(budget_s * 1e3, color="r", ls="--", label="budget")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("quality")
    ax.legend(fontsize=8)
    ax.set_title("Pareto front")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
    written.append("pareto.png")

    if checks:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        p = [c[0] * 1e3 for c in checks]
        m = [c[1] * 1e3 for c in checks]
        ax.scatter(m, p, s=14)
        lo, hi = min(p + m), max(p + m)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted before measuring (ms)")
        ax.set_title("latency predictor")
        fig.tight_layout()
        fig.savefig(out / "predicted_vs_measured.png", dpi=120)
        plt.close(fig)
        written.append("predicted_vs_measured.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    best = -math.inf
    xs, ys = [], []
    for t in sorted(done, key=lambda t: t.number):
        if feasible(t):
            best = max(best, t.values[0])
        if best > -math.inf:
            xs.append(t.number)
            ys.append(best)
    ax.scatter([t.number for t in done], [t.values[0] for t in done], s=10, alpha=0.5)
    if xs:
        ax.step(xs, ys, where="post", color="k", label="best feasible")
        ax.legend(fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel("quality")
    ax.set_title("optimisation history")
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=120)
    plt.close(fig)
    written.append("history.png")
    return written
