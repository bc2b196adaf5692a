"""Repeatability of paired measurement (search/paired.py) on the hybrid example's space.

The same random candidates are measured twice, each against the base model exactly as a search
trial measures it (one candidate at a time), the second pass in reverse order; the table gives
the rank agreement of the two passes and how far their ratios differ. ``--fewer-threads`` adds a
third pass at one thread fewer than the workload's, against the first: how well a ratio taken
while the cores are contended (the fallback of search/measure.py) stands for the workload's.

    python -m benchmarks.bench_paired [--candidates 30] [--seed 0] [--fewer-threads]
        [--raw CALLS.json]
    python -m benchmarks.bench_paired --estimators CALLS.json

``--raw`` also records every timed call of both passes (which model, seconds, in order);
``--estimators`` replays such a record through other ways of turning the calls into a ratio
(ratio of medians, of lower quartiles, of minima, ...) and prints each one's pass-to-pass
agreement, so that an estimator is chosen on measured calls rather than on guesses.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy
from scipy.stats import kendalltau, linregress, spearmanr

import archgen.search.measure as measure_module
from archgen.search.measure import Measurer
from archgen.search.paired import Call, PairedResult, PairingPolicy, robust_ratio
from archgen.search_api import SearchOptions, plan_search
from benchmarks.common import machine


class CallRecorder:
    """Wraps measure_paired's callables: every call's model ("ref" or "model") and seconds, in
    the order they ran, one list per measurement (which candidate a measurement is follows from
    the passes' order: compare_estimators)."""

    def __init__(self) -> None:
        self.measurements: list[list[tuple[str, float]]] = []
        self._inner = measure_module.measure_paired

    def _wrap(self, who: str, call: Call, calls: list[tuple[str, float]]) -> Call:
        def timed() -> float:
            t = call()
            calls.append((who, t))
            return t

        return timed

    def __call__(self, reference: Call, models, **kwargs):  # type: ignore[no-untyped-def]
        calls: list[tuple[str, float]] = []
        self.measurements.append(calls)
        (model,) = models  # bench_paired measures one candidate at a time
        return self._inner(
            self._wrap("ref", reference, calls), [self._wrap("model", model, calls)],
            **kwargs,
        )  # fmt: skip


def one_pass(measurer: Measurer, graphs: list, order: list[int]) -> list[PairedResult]:
    out: dict[int, PairedResult] = {}
    for i in order:
        (out[i],) = measurer.measure_against_reference([graphs[i]])
    return [out[i] for i in range(len(graphs))]


def agreement(a: list[PairedResult], b: list[PairedResult]) -> dict[str, float]:
    x, y = [r.ratio for r in a], [r.ratio for r in b]
    diffs = [abs(p / q - 1) for p, q in zip(x, y, strict=True)]
    return {
        "spearman": float(spearmanr(x, y).statistic),
        "kendall": float(kendalltau(x, y).statistic),
        "median_diff": statistics.median(diffs),
        "max_diff": max(diffs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="examples/hybrid.yaml")
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fewer-threads", action="store_true")
    parser.add_argument("--raw", type=Path, help="also write every timed call here (JSON)")
    parser.add_argument("--estimators", type=Path, help="replay a --raw record; measure nothing")
    args = parser.parse_args()
    if args.estimators:
        compare_estimators(json.loads(args.estimators.read_text()))
        return
    recorder = CallRecorder() if args.raw else None
    if recorder is not None:
        measure_module.measure_paired = recorder  # type: ignore[assignment]
    plan = plan_search(args.spec, SearchOptions(quick=True, out=Path(tempfile.mkdtemp())))
    space = plan.space
    rng = random.Random(args.seed)
    candidates = [
        {s.node: rng.choice(s.choices).label for s in space.slots} for _ in range(args.candidates)
    ]
    graphs = [space.graph_for(c) for c in candidates]
    measurer = Measurer(plan.workload, reference=space.base)
    print(f"# {machine()}; workload {plan.workload}")
    start = time.perf_counter()
    first = one_pass(measurer, graphs, list(range(len(graphs))))
    second = one_pass(measurer, graphs, list(reversed(range(len(graphs)))))
    rows = [("pass 1 vs pass 2", first, second)]
    if args.fewer_threads and plan.workload.threads > 1:
        fewer = Measurer(
            replace(plan.workload, threads=plan.workload.threads - 1), reference=space.base
        )
        rows.append((f"{plan.workload.threads} vs {fewer.workload.threads} threads", first,
                     one_pass(fewer, graphs, list(range(len(graphs))))))  # fmt: skip
    elapsed = time.perf_counter() - start
    if recorder is not None:
        args.raw.write_text(json.dumps({"machine": machine(), "passes": 2,
                                        "candidates": len(graphs),
                                        "measurements": recorder.measurements}))  # fmt: skip
    print("| comparison | n | Spearman | Kendall | median |diff| | max |diff| |")
    print("|---|---|---|---|---|---|")
    for name, a, b in rows:
        s = agreement(a, b)
        print(f"| {name} | {len(a)} | {s['spearman']:.3f} | {s['kendall']:.3f} | "
              f"{100 * s['median_diff']:.2f} % | {100 * s['max_diff']:.2f} % |")  # fmt: skip
    ratios = [r.ratio for r in first]
    flagged = sum(not r.stable or r.contended for r in first + second)
    fallback = sum(r.threads != plan.workload.threads for r in first + second)
    print(
        f"\nratios {min(ratios):.3f}-{max(ratios):.3f} x base; unstable or contended "
        f"{flagged}, at fallback threads {fallback} of {2 * len(first)}; "
        f"reference {1e3 * statistics.median(r.reference_s for r in first):.1f} ms; "
        f"{elapsed:.0f} s"
    )


# -- replaying recorded calls through other estimators ------------------------------------------


def _rounds(calls: list[list]) -> list[tuple[float, float, float]]:
    """(reference before, model, reference after) per round of one measurement: the calls run
    R M R M R ... within an attempt, and each attempt starts with its own reference call."""
    out, before, model = [], None, None
    for who, t in calls:
        if who == "ref":
            if model is not None and before is not None:
                out.append((before, model, t))
            before, model = t, None
        else:
            model = t
    return out


def _quantile(xs: list[float], q: float) -> float:
    return float(numpy.quantile(xs, q))  # linear interpolation between order statistics


ESTIMATORS = {
    "robust median of round ratios (search/paired.py)": lambda r: (
        robust_ratio([m / ((a + b) / 2) for a, m, b in r], PairingPolicy()).value
    ),
    "median of round ratios, no rejection": lambda r: statistics.median(
        m / ((a + b) / 2) for a, m, b in r
    ),
    "ratio of medians": lambda r: (
        statistics.median(m for _, m, _ in r)
        / statistics.median(x for a, _, b in r for x in (a, b))
    ),
    "ratio of lower quartiles": lambda r: (
        _quantile([m for _, m, _ in r], 0.25)
        / _quantile([x for a, _, b in r for x in (a, b)], 0.25)
    ),
    "ratio of 10th percentiles": lambda r: (
        _quantile([m for _, m, _ in r], 0.1) / _quantile([x for a, _, b in r for x in (a, b)], 0.1)
    ),
    "ratio of minima": lambda r: min(m for _, m, _ in r) / min(x for a, _, b in r for x in (a, b)),
    "lower quartile of round ratios": lambda r: _quantile(
        [m / ((a + b) / 2) for a, m, b in r], 0.25
    ),
    "median of ratios to the faster neighbour": lambda r: statistics.median(
        m / min(a, b) for a, m, b in r
    ),
}


def compare_estimators(record: dict) -> None:
    n = record["candidates"]
    measurements = record["measurements"]
    # measurement k of pass 1 is candidate k; pass 2 ran in reverse order (fewer-thread
    # retakes would add measurements: only records without them are replayed)
    if len(measurements) != 2 * n:
        raise SystemExit(f"expected {2 * n} measurements, found {len(measurements)}")
    first = [_rounds(measurements[i]) for i in range(n)]
    second = [_rounds(measurements[2 * n - 1 - i]) for i in range(n)]
    print(f"# replay of {n} candidates x 2 passes; recorded on {record['machine']}")
    print("| estimator | rounds | Spearman | Kendall | median |diff| |")
    print("|---|---|---|---|---|")
    longest = max(len(r) for r in first + second)
    for cap in (24, None) if longest > 24 else (None,):
        for name, estimate in ESTIMATORS.items():
            a = [estimate(r[:cap]) for r in first]
            b = [estimate(r[:cap]) for r in second]
            diffs = [abs(p / q - 1) for p, q in zip(a, b, strict=True)]
            rho, tau = spearmanr(a, b).statistic, kendalltau(a, b).statistic
            print(f"| {name} | {cap or 'all'} | {rho:.3f} | {tau:.3f} | "
                  f"{100 * statistics.median(diffs):.2f} % |")  # fmt: skip
    machine_state(first, second)


def machine_state(first: list[list[tuple[float, float, float]]], second: list) -> None:
    """Does a candidate's ratio move with the machine's state? The reference's median call in
    a measurement says how fast the machine was then; if ratios were immune to it, the change
    of a candidate's ratio between passes would not follow the change of its reference time.

    The last line re-ranks both passes with ratios scaled to one reference speed by the slope
    fitted on these same pairs: an in-sample figure, an upper bound of what such a correction
    could give, not a measurement of it."""
    estimate = ESTIMATORS["robust median of round ratios (search/paired.py)"]
    ratio_a, ratio_b = [estimate(r) for r in first], [estimate(r) for r in second]
    ref_a = [statistics.median(a for a, _, _ in r) for r in first]
    ref_b = [statistics.median(a for a, _, _ in r) for r in second]
    d_ratio = [math.log(q / p) for p, q in zip(ratio_a, ratio_b, strict=True)]
    d_ref = [math.log(q / p) for p, q in zip(ref_a, ref_b, strict=True)]
    fit = linregress(d_ref, d_ratio)
    print(
        f"\nreference call {1e3 * min(ref_a + ref_b):.1f}-{1e3 * max(ref_a + ref_b):.1f} ms "
        f"across measurements; pass-to-pass log change of a ratio against that of its "
        f"reference: Pearson {fit.rvalue:.2f} (p = {fit.pvalue:.1g}), slope {fit.slope:.2f}"
    )
    center = statistics.median(ref_a + ref_b)
    a = [r * (center / f) ** fit.slope for r, f in zip(ratio_a, ref_a, strict=True)]
    b = [r * (center / f) ** fit.slope for r, f in zip(ratio_b, ref_b, strict=True)]
    print(f"ratios scaled to one reference speed (in-sample slope): Spearman "
          f"{spearmanr(a, b).statistic:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
