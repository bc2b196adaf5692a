"""Search benchmarks on the hybrid example's space (CPU, eager, the spec's workload), in
reference units (latency as a ratio to the spec's base model, measured in pairs with it:
search/paired.py):

1. **Predictor trust**: random candidates, latency predicted from the block table and then
   measured end to end against the base model: Spearman / Kendall rank correlation and MAPE.
2. **Search efficiency**: a small space (the first ``--slots`` slots) evaluated exhaustively with
   the same quality proxy and latency predictor, against Optuna (TPE, constrained) given a third
   of the evaluations, over several seeds: does the search reach the exhaustive best feasible
   quality within 1 %?

    python -m benchmarks.bench_search [--candidates 30] [--budget 0.9] [--slots 3]
        [--measure-repeats 24] [--repeatability] [--skip-efficiency]

The trust candidates are measured all in one call of Measurer.measure_against_reference: every
candidate call sits between two calls of the base model, so each ratio is taken under the same
machine conditions as the others (the ranking being checked is of candidates a few percent
apart, so the measurement it is checked against must be more precise than that).
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import optuna
import torch

from archgen.ir.graph import Graph
from archgen.search.evaluate import LatencyPolicy
from archgen.search.latency import (
    LatencyPredictor,
    LatencyTable,
    graph_signature,
    select_correction,
    trust_report,
)
from archgen.search.measure import Measurer
from archgen.search.paired import PairedResult, PairingPolicy
from archgen.search.quality import AnalyticQuality
from archgen.search.space import SearchSpace
from archgen.search.study import (
    Evaluation,
    StudyConfig,
    evaluates,
    feasible,
    open_study,
    run_worker,
)
from archgen.search_api import SearchOptions, plan_search
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent


def parse_fraction(text: str) -> float:
    """A budget relative to the base model: ``0.9`` or ``90%``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"a budget is a fraction of the base model's latency (0.9) or a percentage (90%), "
            f"got {text!r}"
        )
    value = float(match.group(1)) / (100 if match.group(2) else 1)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the budget must be positive, got {text!r}")
    return value


def clean(r: PairedResult, threads: int) -> bool:
    """A measurement the search would let teach the predictor: stable, uncontended, taken at
    the workload's threads."""
    return r.stable and not r.contended and r.threads == threads


def predictor_trust(
    space: SearchSpace,
    predictor: LatencyPredictor,
    measurer: Measurer,
    n: int,
    seed: int,
    repeat_check: bool = False,
) -> None:
    rng = random.Random(seed)
    threads = measurer.workload.threads
    # As the search does: the base and homogeneous models first, measured together against the
    # base model, fit the in-context factors of the block kinds (LatencyPredictor.calibrate);
    # then the search trusts the predictor only after LatencyPolicy.min_samples end-to-end
    # checks, so the correction is also fitted on that many other random candidates (those
    # measured cleanly: only clean measurements teach the search's predictor).
    baselines = [space.graph_for(c) for c in space.baseline_candidates()]
    design = measurer.measure_design(baselines)
    predictor.calibrate(baselines, [r.ratio for r in design])
    n_fit = LatencyPolicy().min_samples

    def random_graph() -> Graph:
        return space.graph_for({s.node: rng.choice(s.choices).label for s in space.slots})

    fit = [random_graph() for _ in range(n_fit)]
    fit_results = measurer.measure_against_reference(fit)
    taught = 0
    for g, r in zip(fit, fit_results, strict=True):
        if clean(r, threads):
            predictor.observe(g, r.ratio)
            taught += 1
    graphs = [random_graph() for _ in range(n)]
    predicted = [predictor.predict(g) for g in graphs]
    # One call: every candidate paired with the base model in the same rounds, so drift over the
    # minutes this takes cannot decide the ranking of candidates a few percent apart.
    results = measurer.measure_against_reference(graphs)
    measured = [r.ratio for r in results]
    report = trust_report(predicted, measured)
    if repeat_check:
        # The ceiling: how well do two passes of paired measurement of the same candidates agree?
        again = [r.ratio for r in measurer.measure_against_reference(graphs)]
        ceiling = trust_report(again, measured)
        print(
            f"\nrepeatability (the same {n} candidates measured again against the base model): "
            f"Spearman {ceiling.spearman:.3f}, Kendall {ceiling.kendall:.3f}, "
            f"mean |difference| {ceiling.mape:.1f} %"
        )
    flagged = sum(not clean(r, threads) for r in results)
    reference_ms = 1e3 * statistics.median(r.reference_s for r in results)
    print(
        f"\n## Predictor trust ({n} random candidates; in-context factors fitted on "
        f"{len(baselines)} baseline models, correction on those and {taught} of {n_fit} other "
        f"candidates measured cleanly)\n"
    )
    print("| candidates | Spearman | Kendall | MAPE | latency range (x base) |")
    print("|---:|---:|---:|---:|---|")
    print(
        f"| {report.n} | {report.spearman:.3f} | {report.kendall:.3f} | {report.mape:.1f} % | "
        f"{min(measured):.3f} - {max(measured):.3f} |"
    )
    print(
        f"\nbase model {reference_ms:.1f} ms (median during the measurement); "
        f"{flagged} of {n} measurements unstable, contended or at fewer threads"
    )
    print("per candidate, by measured latency (x base): measured / predicted / block sum")
    for m, pr, g in sorted(zip(measured, predicted, graphs, strict=True), key=lambda t: t[0]):
        print(f"  {m:6.3f} / {pr:6.3f} / {predictor.block_sum(g):6.3f}")
    sums = [predictor.block_sum(g) for g in graphs]
    # The same samples without in-context factors: what calibrate() adds, side by side.
    weights, offset, form = select_correction(predictor.samples, predictor.ridge)
    plain = [
        offset + sum(weights.get(k, 1.0) * v for k, v in predictor.table_features(g).items())
        for g in graphs
    ]
    factors = {k[:6]: round(v, 3) for k, v in predictor.context.items()}
    without = trust_report(plain, measured).spearman
    print(
        f"in-context factors per block kind: {factors}\n"
        f"correction ({predictor.correction}, chosen by leave-one-out): offset "
        f"{predictor.offset:.3f} x base, weights {predictor.weights}\n"
        f"Spearman of the plain block sum {trust_report(sums, measured).spearman:.3f}; of the "
        f"predictor without in-context factors ({form}) {without:.3f}"
    )


def efficiency(
    space: SearchSpace,
    predictor: LatencyPredictor,
    quality: AnalyticQuality,
    budget: float | None,
    slots: int,
    seeds: int,
) -> None:
    small = SearchSpace(space.base, space.slots[:slots])

    def evaluate(c, limit: float | None) -> Evaluation:
        g = small.graph_for(c)
        lat = predictor.predict(g)  # reference units
        over = lat - limit if limit is not None else None
        return Evaluation(quality(g), lat, lat, over_budget=over)

    scored = [(c, evaluate(c, None)) for c in small.all_candidates()]
    if budget is None:  # the 40th percentile: a budget that excludes most of the space
        budget = sorted(e.latency for _, e in scored)[int(0.4 * len(scored))]
    feasible_qualities = [e.quality for _, e in scored if e.latency <= budget]
    best = max(feasible_qualities)
    total = len(scored)
    allowed = total // 3
    print(
        f"\n## Search efficiency ({total} candidates, budget {budget:.3f} x base, "
        f"{len(feasible_qualities)} feasible; search gets {allowed} evaluations)\n"
    )
    print("| seed | best feasible found | exhaustive best | gap | evaluations | repeats (free) |")
    print("|---:|---:|---:|---:|---:|---:|")
    hits = 0
    calls: list[dict] = []

    def counted(candidate) -> Evaluation:
        calls.append(candidate)
        return evaluate(candidate, budget)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(f"{tmp}/j.log")
            )
            config = StudyConfig(f"eff-{seed}", allowed, seed=seed)
            study = open_study(storage, config, small.homogeneous_candidates())
            calls.clear()
            run_worker(study, small, counted, config)
            found = max(
                (t.values[0] for t in study.trials if t.values and feasible(t)),
                default=float("nan"),
            )
            repeats = sum(not evaluates(t) for t in study.trials)
        gap = (best - found) / abs(best)
        hits += gap <= 0.01 and len(calls) <= allowed
        print(
            f"| {seed} | {found:.4f} | {best:.4f} | {gap * 100:.2f} % | {len(calls)} | {repeats} |"
        )
    print(f"\nwithin 1 % of the exhaustive best in {hits}/{seeds} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Predictor trust and search efficiency on a spec's search space, latency "
        "as a ratio to the base model."
    )
    parser.add_argument("--spec", default=str(ROOT / "examples" / "hybrid.yaml"))
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument(
        "--budget",
        type=parse_fraction,
        default=None,
        help="latency budget of the efficiency part, relative to the base model: a fraction "
        "(0.9) or a percentage (90%%); default: the 40th percentile of the small space's "
        "predicted latencies",
    )
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trust-seed", type=int, default=0, help="seed of the random candidates")
    parser.add_argument(
        "--measure-repeats",
        type=int,
        default=None,
        help="paired rounds per end-to-end measurement against the base model (default: the "
        "search's, max(24, workload repeats), doubled up to twice while a ratio is not settled; "
        "the baseline models get twice as many)",
    )
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument(
        "--repeatability",
        action="store_true",
        help="measure the trust candidates against the base model twice and report how well "
        "the two passes agree",
    )
    parser.add_argument("--threads", type=int, default=None, help="override the workload's threads")
    args = parser.parse_args()
    plan = plan_search(args.spec, SearchOptions(out=Path(tempfile.mkdtemp())))
    workload = plan.workload
    if args.threads:
        workload = replace(workload, threads=args.threads)
    torch.set_num_threads(workload.threads)
    print(f"machine: {machine()}")
    print(f"space: {args.spec}, {plan.space.size():,} candidates; workload {workload}")
    base = plan.space.base
    policy = PairingPolicy(rounds=args.measure_repeats) if args.measure_repeats else None
    measurer = Measurer(workload, reference=base, policy=policy)
    table = LatencyTable(plan.cache / "latency.sqlite", measurer.environment())
    # As the search does: the reference timed alone first, so that cached block rows whose
    # reference timed far from it now are measured again.
    timing = measurer.time_group([base], repeats=measurer.policy.rounds, threads=workload.threads)
    predictor = LatencyPredictor(
        table, workload, measurer.measure_blocks, reference=graph_signature(base),
        reference_s=None if timing.contended else timing.medians[0],
    )  # fmt: skip
    print(
        f"end-to-end measurements: {measurer.policy.rounds} paired rounds against the base "
        f"model (alone {timing.medians[0] * 1e3:.1f} ms"
        + (", cores contended" if timing.contended else "")
        + ")"
    )
    predictor_trust(
        plan.space,
        predictor,
        measurer,
        args.candidates,
        seed=args.trust_seed,
        repeat_check=args.repeatability,
    )
    if predictor.block_measurements or predictor.stale_rows:
        print(
            f"block table: {predictor.block_measurements} block(s) measured, "
            f"{predictor.stale_rows} stale cached row(s) not used"
        )
    if args.skip_efficiency:
        return
    quality = AnalyticQuality(workload.seq_len)
    efficiency(plan.space, predictor, quality, args.budget, args.slots, args.seeds)


if __name__ == "__main__":
    main()
