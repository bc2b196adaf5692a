"""Search outputs: the Pareto table rows, ``report.json`` and PNG plots.

A trial's values are ``[quality, latency_ratio]``: quality as the fidelity defines it (higher is
better) and latency as a ratio to the base model, measured paired (search/paired.py); seconds are
that ratio times the base model's calibrated latency. The plots draw each evaluated candidate once
(a repeat is a pruned trial, see search/study.py), join only non-dominated points into a front,
mark the trial the search chose, and keep their axes readable when a measurement is an outlier:
points beyond robust limits are drawn at the edge, with a note.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from archgen.search.latency import TrustReport
from archgen.search.study import ERROR, SAME_AS, WORKER, evaluates, feasible
from archgen.train.checkpoint import write_text_atomic


@dataclass(frozen=True)
class Certified:
    """A Pareto model measured end to end after the search, together with the base model."""

    number: int
    params: dict[str, str]
    quality: float
    predicted_ratio: float  # x the base model
    measured_ratio: float  # x the base model, measured paired at certification
    predicted_s: float | None  # the ratios times the base model's calibrated seconds
    measured_s: float | None
    within_budget: bool
    front: int = 1  # which Pareto front it was certified from (search/certify.py)


QUALITY_LABELS = {
    "blockwise": "quality (higher is better):\n− mean normalised blockwise distillation loss",
    "analytic": "quality (higher is better):\nanalytic memory proxy",
    "capability": "quality (higher is better):\nrecall accuracy",
}
LATENCY_LABEL = "latency (x base model)"


def quality_label(fidelity: str) -> str:
    """What the quality axis shows, and which way is better."""
    return QUALITY_LABELS.get(fidelity, f"quality (higher is better):\n{fidelity}")


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def trial_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Trials by Optuna state, and what they mean here: ``evaluated`` candidates (the complete
    trials), ``repeats`` of an evaluated candidate and ``unneeded`` trials (both pruned)."""
    counts = {s.name.lower(): sum(t.state is s for t in trials) for s in TrialState}
    counts["evaluated"] = sum(t.state is TrialState.COMPLETE and evaluates(t) for t in trials)
    counts["repeats"] = sum(not evaluates(t) for t in trials)
    counts["unneeded"] = sum(t.state is TrialState.PRUNED and evaluates(t) for t in trials)
    return counts


def build_report(
    *,
    spec_name: str,
    budget_ratio: float | None,
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
    measurement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``report.json``. ``budget_ratio``: the budget as a ratio to the base model; ``budget_s``:
    the same in seconds (None without a budget); ``measurement``: how latencies were measured."""
    return {
        "model": spec_name,
        "budget_ratio": budget_ratio,
        "budget_s": budget_s,
        "workload": workload,
        "environment": environment,
        "quality_fidelity": quality_fidelity,
        "quality_axis": quality_label(quality_fidelity).replace("\n", " "),
        "latency_axis": LATENCY_LABEL,
        "measurement": measurement,
        "trials": trial_counts(trials),
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
                "values": t.values,  # [quality, latency x the base model]
                "predicted_ratio": t.user_attrs.get("predicted_ratio"),
                "measured_ratio": t.user_attrs.get("measured_ratio"),
                "worker": t.user_attrs.get(WORKER),  # hostname:pid of the process that ran it
                "same_as": t.user_attrs.get(SAME_AS),  # a repeat: the trial whose result stands
                "feasible": feasible(t) if t.state is TrialState.COMPLETE else None,
                "chosen": best is not None and t.number == best.number,
            }
            for t in trials
        ],
    }


# -- what the plots draw (pure, tested without pixels) --------------------------------------


@dataclass(frozen=True)
class Point:
    number: int  # trial
    latency: float  # x the base model
    quality: float
    feasible: bool


@dataclass(frozen=True)
class PlotData:
    points: list[Point]  # each evaluated candidate once, in trial order (study measurements)
    front: list[Point]  # the non-dominated feasible points, by latency
    certified: list[Point]  # the Pareto models as measured at certification
    chosen: Point | None  # the search's answer (as certified)


def _usable(t: FrozenTrial) -> bool:
    return (
        t.state is TrialState.COMPLETE
        and evaluates(t)
        and t.values is not None
        and all(math.isfinite(v) for v in t.values)
    )


def candidate_points(trials: Sequence[FrozenTrial]) -> list[Point]:
    """Each evaluated candidate once (its first complete trial), in trial order."""
    seen: dict[tuple[tuple[str, Any], ...], Point] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if _usable(t):
            key = tuple(sorted(t.params.items()))
            seen.setdefault(key, Point(t.number, t.values[1], t.values[0], feasible(t)))
    return list(seen.values())


def non_dominated(points: Sequence[Point]) -> list[Point]:
    """The points no other point dominates (no slower and no worse, and better in one), sorted by
    latency; of identical points the first. Joined in this order they form the Pareto front."""
    front: list[Point] = []
    best = -math.inf
    for p in sorted(points, key=lambda p: (p.latency, -p.quality)):
        if p.quality > best:
            front.append(p)
            best = p.quality
    return front


def plot_data(
    trials: Sequence[FrozenTrial], certified: Sequence[Certified], chosen: int | None
) -> PlotData:
    points = candidate_points(trials)
    measured = [
        Point(c.number, c.measured_ratio, c.quality, c.within_budget)
        for c in certified
        if math.isfinite(c.measured_ratio)
    ]
    # as certified; a chosen trial that was not certified (not expected) at its study values
    pick = next((p for p in [*measured, *points] if p.number == chosen), None)
    return PlotData(points, non_dominated([p for p in points if p.feasible]), measured, pick)


MIN_POINTS_TO_CLIP = 5


def robust_limits(
    values: Sequence[float], *, keep: Sequence[float] = (), log: bool = False, k: float = 5.0
) -> tuple[float, float] | None:
    """Axis limits that leave out outliers, or None when no value is one (autoscale).

    A value is an outlier beyond ``k`` scaled median absolute deviations from the median (of the
    logarithms with ``log``: latencies are ratios, and a load spike is a factor). The limits
    span the other values and ``keep`` (e.g. the budget), padded; outliers are drawn at their
    edge. With fewer than five values, or no spread (MAD 0), nothing is left out."""
    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if len(finite) < MIN_POINTS_TO_CLIP:
        return None
    xs = [math.log(v) for v in finite] if log else finite
    centre = statistics.median(xs)
    mad = statistics.median(abs(x - centre) for x in xs)
    if mad == 0:
        return None
    spread = k * 1.4826 * mad
    lo, hi = centre - spread, centre + spread
    if log:
        lo, hi = math.exp(lo), math.exp(hi)
    inside = [v for v in finite if lo <= v <= hi]
    if len(inside) == len(finite):
        return None
    shown = inside + [v for v in keep if v is not None and math.isfinite(v)]
    low, high = min(shown), max(shown)
    pad = 0.06 * (high - low) if high > low else 0.05 * max(abs(high), 1e-12)
    return low - pad, high + pad


def clip(value: float, limits: tuple[float, float] | None) -> tuple[float, int]:
    """``value`` within ``limits`` and which side it was beyond (-1 below, 1 above, 0 inside)."""
    if limits is None:
        return value, 0
    lo, hi = limits
    if value < lo:
        return lo, -1
    if value > hi:
        return hi, 1
    return value, 0


# -- drawing ------------------------------------------------------------------------------


def _scatter(
    ax: Any,
    points: Sequence[Point],
    xlim: tuple[float, float] | None,
    ylim: tuple[float, float] | None,
    x: Any,
    beyond: list[str],
    **style: Any,
) -> None:
    """Points inside the limits with ``style``; points beyond drawn at the edge as arrows that
    point outwards, each noted in ``beyond``."""
    inside, edge = [], []
    for p in points:
        px, sx = clip(x(p), xlim)
        py, sy = clip(p.quality, ylim)
        if sx == 0 and sy == 0:
            inside.append((px, py))
        else:
            marker = {1: ">", -1: "<"}[sx] if sx else {1: "^", -1: "v"}[sy]
            edge.append((px, py, marker))
            value = f"{x(p):.3g} x" if sx else f"quality {p.quality:.3g}"
            beyond.append(f"trial {p.number} ({value})")
    label = style.pop("label", None)
    if inside:
        ax.scatter(*zip(*inside, strict=True), label=label, **style)
        label = None
    for px, py, marker in edge:
        ax.scatter([px], [py], label=label, clip_on=False, **{**style, "marker": marker, "s": 40})
        label = None


def _note_beyond(fig: Any, beyond: list[str]) -> float:
    """A note under the plot naming the points drawn at the edge; the figure height it takes."""
    if not beyond:
        return 0.0
    shown = ", ".join(beyond[:6]) + (f" and {len(beyond) - 6} more" if len(beyond) > 6 else "")
    width, height = fig.get_size_inches()
    size = 6.5
    text = textwrap.fill(
        f"beyond the axes, drawn at the edge: {shown}", int(width * 72 / (0.6 * size))
    )
    fig.text(0.01, 0.005, text, fontsize=size, va="bottom")
    return (text.count("\n") + 1) * 1.3 * size / 72 / height


def _limits(
    points: Sequence[Point], extra: Sequence[Point], keep_x: Sequence[float]
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    everything = [*points, *extra]
    xlim = robust_limits([p.latency for p in everything], keep=keep_x, log=True)
    ylim = robust_limits([p.quality for p in everything])
    return xlim, ylim


def _ms_axis(ax: Any, reference_s: float | None) -> None:
    if not reference_s or reference_s <= 0:
        return
    ms = reference_s * 1e3
    top = ax.secondary_xaxis("top", functions=(lambda r: r * ms, lambda m: m / ms))
    top.set_xlabel(f"ms (base model {ms:.3g} ms)", fontsize=8)
    top.tick_params(labelsize=7)


def write_plots(
    out: Path,
    trials: Sequence[FrozenTrial],
    certified: Sequence[Certified],
    budget_ratio: float | None,
    checks: Sequence[tuple[float, float]],
    *,
    reference_s: float | None = None,
    chosen: int | None = None,
    fidelity: str = "blockwise",
) -> list[str]:
    """``pareto.png``, ``predicted_vs_measured.png`` (when there are ``checks``: pairs of
    (predicted, measured) ratios) and ``history.png`` in ``out``; the names written.
    ``chosen``: the trial the search chose; ``reference_s``: the base model's calibrated seconds
    (a ms axis); ``fidelity``: what the quality is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = plot_data(trials, certified, chosen)
    ylabel = quality_label(fidelity)
    written = []

    # pareto.png: every candidate once, the front through non-dominated points only
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    keep_x = [1.0] + ([budget_ratio] if budget_ratio is not None else [])
    xlim, ylim = _limits(data.points, data.certified, keep_x)
    beyond: list[str] = []
    latency = attrgetter("latency")
    ok = [p for p in data.points if p.feasible]
    bad = [p for p in data.points if not p.feasible]
    _scatter(ax, ok, xlim, ylim, latency, beyond, s=16, c="C0", label="candidate within budget")
    _scatter(ax, bad, xlim, ylim, latency, beyond, s=18, c="C1", marker="x", label="over budget")
    if data.front:
        front = [(clip(p.latency, xlim)[0], clip(p.quality, ylim)[0]) for p in data.front]
        ax.plot(*zip(*front, strict=True), "k-", lw=1, drawstyle="steps-post", label="Pareto front")
    if data.certified:
        _scatter(
            ax, data.certified, xlim, ylim, latency, beyond, s=46, facecolors="none",
            edgecolors="k", marker="s", label="certified (re-measured with the base model)",
        )  # fmt: skip
    if data.chosen is not None:
        px, py = clip(data.chosen.latency, xlim)[0], clip(data.chosen.quality, ylim)[0]
        ax.scatter([px], [py], s=160, marker="*", c="gold", edgecolors="k", zorder=5,
                   label=f"chosen: trial {data.chosen.number}")  # fmt: skip
    ax.axvline(1.0, color="0.6", ls=":", lw=1, label="base model")
    if budget_ratio is not None:
        ax.axvline(budget_ratio, color="r", ls="--", lw=1, label=f"budget ({budget_ratio:.3g} x)")
    if xlim:
        ax.set_xlim(*xlim)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(LATENCY_LABEL)
    ax.set_ylabel(ylabel, fontsize=8)
    _ms_axis(ax, reference_s)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"Pareto front: {len(data.points)} candidates", fontsize=10)
    fig.tight_layout(rect=(0, _note_beyond(fig, beyond), 1, 1))
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
    written.append("pareto.png")

    finite = [(p, m) for p, m in checks if math.isfinite(p) and math.isfinite(m)]
    if finite:
        fig, ax = plt.subplots(figsize=(4.8, 4.4))
        values = [v for pair in finite for v in pair]
        lim = robust_limits(values, keep=[1.0], log=True)
        beyond = []
        inside, edge = [], []
        for p, m in finite:
            (cm, sm), (cp, sp) = clip(m, lim), clip(p, lim)
            (inside if sm == 0 and sp == 0 else edge).append((cm, cp))
            if sm or sp:
                beyond.append(f"measured {m:.3g} x (predicted {p:.3g} x)")
        if inside:
            ax.scatter(*zip(*inside, strict=True), s=14, c="C0")
        if edge:
            ax.scatter(
                *zip(*edge, strict=True), s=40, c="C1", marker="D", clip_on=False,
                label="beyond the axes (at the edge)",
            )  # fmt: skip
            ax.legend(fontsize=7)
        lo, hi = lim if lim else (min(values), max(values))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        if lim:
            ax.set_xlim(*lim)
            ax.set_ylim(*lim)
        ax.set_xlabel("measured (x base model)")
        ax.set_ylabel("predicted before measuring (x base model)")
        ax.set_title("latency predictor", fontsize=10)
        fig.tight_layout(rect=(0, _note_beyond(fig, beyond), 1, 1))
        fig.savefig(out / "predicted_vs_measured.png", dpi=120)
        plt.close(fig)
        written.append("predicted_vs_measured.png")

    # history.png: quality by trial; the certified Pareto models and the chosen trial marked
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ylim = robust_limits([p.quality for p in data.points])
    beyond = []
    number = attrgetter("number")
    _scatter(ax, ok, None, ylim, number, beyond, s=14, c="C0", label="within budget")
    _scatter(ax, bad, None, ylim, number, beyond, s=16, c="C1", marker="x", label="over budget")
    pareto = [p for p in data.points if p.number in {c.number for c in data.certified}]
    if pareto:
        _scatter(
            ax, pareto, None, ylim, number, [], s=46, facecolors="none", edgecolors="k",
            marker="s", label="Pareto set (certified)",
        )  # fmt: skip
    if data.chosen is not None:
        y = clip(data.chosen.quality, ylim)[0]
        ax.scatter([data.chosen.number], [y], s=160, marker="*", c="gold", edgecolors="k",
                   zorder=5, label=f"chosen: trial {data.chosen.number}")  # fmt: skip
        ax.annotate(
            f"chosen: trial {data.chosen.number}", (data.chosen.number, y),
            textcoords="offset points", xytext=(6, 6), fontsize=7,
        )  # fmt: skip
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel, fontsize=8)
    if data.points:
        ax.legend(fontsize=7, loc="best")
    ax.set_title("optimisation history (each candidate at its first trial)", fontsize=10)
    fig.tight_layout(rect=(0, _note_beyond(fig, beyond), 1, 1))
    fig.savefig(out / "history.png", dpi=120)
    plt.close(fig)
    written.append("history.png")
    return written
