"""Repeatability of paired measurement (search/paired.py) on the hybrid example's space.

The same random candidates are measured twice, each against the base model exactly as a search
trial measures it (one candidate at a time), the second pass in reverse order; the table gives
the rank agreement of the two passes and how far their ratios differ. ``--fewer-threads`` adds a
third pass at one thread fewer than the workload's, against the first: how well a ratio taken
while the cores are contended (the fallback of search/measure.py) stands for the workload's.

    python -m benchmarks.bench_paired [--candidates 30] [--seed 0] [--fewer-threads]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from scipy.stats import kendalltau, spearmanr

from archgen.search.measure import Measurer
from archgen.search.paired import PairedResult
from archgen.search_api import SearchOptions, plan_search
from benchmarks.common import machine


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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
