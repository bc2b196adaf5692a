"""Search benchmarks on the hybrid example's space (CPU, eager, the spec's workload):

1. **Predictor trust**: random candidates, latency predicted from the block table and then
   measured end to end: Spearman / Kendall rank correlation and MAPE.
2. **Search efficiency**: a small space (the first ``--slots`` slots) evaluated exhaustively with
   the same quality proxy and latency predictor, against Optuna (TPE, constrained) given a third
   of the evaluations, over several seeds: does the search reach the exhaustive best feasible
   quality within 1 %?

    python -m benchmarks.bench_search [--candidates 30] [--budget 12ms] [--slots 3]
        [--measure-repeats 100] [--repeatability] [--skip-efficiency]

The trust candidates are measured as the medians of ``--measure-repeats`` interleaved calls
(Measurer.measure_graphs): the ranking being checked is of candidates a few percent apart, so
the measurement it is checked against must be more precise than that.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import optuna
import torch

from archgen.ir.graph import Graph
from archgen.search.evaluate import LatencyPolicy
from archgen.search.latency import (
    LatencyPredictor,
    LatencyTable,
    Workload,
    select_correction,
    trust_report,
)
from archgen.search.measure import Measurer
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
from archgen.search_api import SearchOptions, cache_dir, prepare
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent


def predictor_trust(
    space: SearchSpace,
    predictor: LatencyPredictor,
    measurer: Measurer,
    n: int,
    seed: int,
    repeats: int,
    repeat_check: bool = False,
) -> None:
    rng = random.Random(seed)
    # As the search does: the base and homogeneous models first, measured together, fit the
    # in-context factors of the block kinds (LatencyPredictor.calibrate); then the search trusts
    # the predictor only after LatencyPolicy.min_samples end-to-end checks, so the correction is
    # also fitted on that many other random candidates.
    baselines = [space.graph_for(c) for c in space.baseline_candidates()]
    predictor.calibrate(baselines, measurer.measure_design(baselines))
    n_fit = LatencyPolicy().min_samples

    def random_graph() -> Graph:
        return space.graph_for({s.node: rng.choice(s.choices).label for s in space.slots})

    fit = [random_graph() for _ in range(n_fit)]
    for g, seconds in zip(fit, measurer.measure_graphs(fit, repeats=repeats), strict=True):
        predictor.observe(g, seconds)
    graphs = [random_graph() for _ in range(n)]
    predicted = [predictor.predict(g) for g in graphs]
    # Interleaved rounds (Measurer.measure_graphs): drift over the minutes this takes must not
    # decide the ranking of candidates a few percent apart.
    measured = measurer.measure_graphs(graphs, repeats=repeats)
    report = trust_report(predicted, measured)
    if repeat_check:
        # The ceiling: how well do two measurements of the same candidates agree?
        again = measurer.measure_graphs(graphs, repeats=repeats)
        ceiling = trust_report(again, measured)
        print(
            f"\nrepeatability (the same {n} candidates measured again): Spearman "
            f"{ceiling.spearman:.3f}, Kendall {ceiling.kendall:.3f}, "
            f"mean |difference| {ceiling.mape:.1f} %"
        )
    print(
        f"\n## Predictor trust ({n} random candidates; in-context factors fitted on "
        f"{len(baselines)} baseline models, correction on those and {n_fit} other candidates)\n"
    )
    print("| candidates | Spearman | Kendall | MAPE | latency range (ms) |")
    print("|---:|---:|---:|---:|---|")
    print(
        f"| {report.n} | {report.spearman:.3f} | {report.kendall:.3f} | {report.mape:.1f} % | "
        f"{min(measured) * 1e3:.1f} - {max(measured) * 1e3:.1f} |"
    )
    print("\nper candidate, by measured latency (ms): measured / predicted / block sum")
    for m, pr, g in sorted(zip(measured, predicted, graphs, strict=True), key=lambda t: t[0]):
        print(f"  {m * 1e3:6.1f} / {pr * 1e3:6.1f} / {predictor.block_sum(g) * 1e3:6.1f}")
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
        f"{predictor.offset * 1e3:.2f} ms, weights {predictor.weights}\n"
        f"Spearman of the plain block sum {trust_report(sums, measured).spearman:.3f}; of the "
        f"predictor without in-context factors ({form}) {without:.3f}"
    )


def efficiency(
    space: SearchSpace,
    predictor: LatencyPredictor,
    quality: AnalyticQuality,
    budget: float,
    slots: int,
    seeds: int,
) -> None:
    small = SearchSpace(space.base, space.slots[:slots])

    def evaluate(c) -> Evaluation:
        g = small.graph_for(c)
        lat = predictor.predict(g)
        return Evaluation(quality(g), lat, lat)

    scored = [(c, evaluate(c)) for c in small.all_candidates()]
    if budget is None:  # the 40th percentile: a budget that excludes most of the space
        budget = sorted(e.latency for _, e in scored)[int(0.4 * len(scored))]
    feasible_qualities = [e.quality for _, e in scored if e.latency <= budget]
    best = max(feasible_qualities)
    total = len(scored)
    allowed = total // 3
    print(
        f"\n## Search efficiency ({total} candidates, budget {budget * 1e3:.1f} ms, "
        f"{len(feasible_qualities)} feasible; search gets {allowed} evaluations)\n"
    )
    print("| seed | best feasible found | exhaustive best | gap | evaluations | repeats (free) |")
    print("|---:|---:|---:|---:|---:|---:|")
    hits = 0
    calls: list[dict] = []

    def counted(candidate) -> Evaluation:
        calls.append(candidate)
        return evaluate(candidate)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(f"{tmp}/j.log")
            )
            config = StudyConfig(f"eff-{seed}", allowed, seed=seed, budget=budget)
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default=str(ROOT / "examples" / "hybrid.yaml"))
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--budget", default=None)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trust-seed", type=int, default=0, help="seed of the random candidates")
    parser.add_argument(
        "--measure-repeats",
        type=int,
        default=100,
        help="timed runs per end-to-end measurement of the trust candidates (default 100: on a "
        "2-vCPU VM one call varies by ~15 %%, and 30 random candidates span only ~20 %%)",
    )
    parser.add_argument("--skip-efficiency", action="store_true")
    parser.add_argument(
        "--repeatability",
        action="store_true",
        help="measure the trust candidates twice and report how well the two agree",
    )
    parser.add_argument("--threads", type=int, default=None, help="override the workload's threads")
    args = parser.parse_args()
    p = prepare(args.spec, SearchOptions(out=Path(tempfile.mkdtemp())))
    s = p["spec"].search
    w = s.workload
    workload = Workload(
        batch=w.batch,
        seq_len=p["seq_len"],
        phase=w.phase,
        dtype=w.dtype,
        backend=w.backend,
        device=w.device,
        threads=args.threads or w.threads,
        repeats=w.repeats,
    )
    torch.set_num_threads(workload.threads)
    print(f"machine: {machine()}")
    print(f"space: {args.spec}, {p['space'].size():,} candidates; workload {workload}")
    measurer = Measurer(workload)
    table = LatencyTable(cache_dir() / "latency.sqlite", measurer.environment())
    predictor = LatencyPredictor(table, workload, measurer.measure_blocks)
    repeats = args.measure_repeats
    print(f"end-to-end measurements: median of {repeats} timed runs")
    predictor_trust(
        p["space"],
        predictor,
        measurer,
        args.candidates,
        seed=args.trust_seed,
        repeats=repeats,
        repeat_check=args.repeatability,
    )
    from archgen.search.budget import parse_budget

    budget = parse_budget(args.budget) if args.budget else None
    if args.skip_efficiency:
        return
    efficiency(p["space"], predictor, AnalyticQuality(p["seq_len"]), budget, args.slots, args.seeds)


if __name__ == "__main__":
    main()
