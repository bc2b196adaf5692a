"""The search loop: a typed :class:`SearchPlan` in, a typed :class:`SearchOutcome` out.

Order of work, so that every mistake surfaces before anything expensive runs and every
latency is measured against the same reference (the spec's base model, search/paired.py):

1. the storage is opened (a bad URL fails at once);
2. the reference is timed alone: its calibrated seconds, and whether the cores are busy;
3. block latencies (cached across searches; a cached row measured under load, at other
   threads or against a reference that times differently now is measured again);
4. the base and homogeneous models, measured against the reference, calibrate the predictor;
5. the budget is checked against the cheapest candidate's *measured* latency;
6. the quality proxy is prepared (teacher training and distillation, cached);
7. Optuna trials (search/study.py), each judged by search/evaluate.py;
8. certification: the Pareto models measured together with the reference, once per study
   (search/certify.py), and the winner chosen from it;
9. the winner assembled with trained weights (search/winner.py), report, plots, export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

from archgen.errors import ArchgenError
from archgen.ir.graph import Graph
from archgen.search.budget import Budget, format_seconds
from archgen.search.latency import TrustReport
from archgen.search.report import Certified
from archgen.search.space import Candidate, SearchSpace
from archgen.search.timing import Workload
from archgen.search.winner import Winner
from archgen.spec.models import ArchSpec

if TYPE_CHECKING:
    from archgen.search.evaluate import LatencyJudge
    from archgen.search.measure import Measurer

Log = Callable[[str], None]
# Fronts certification may walk down when a whole front measures over budget: the next fronts
# hold the next-best models; each step costs one paired measurement of a front, so it is bounded.
CERTIFIED_FRONTS = 3
OnTrial = Callable[[FrozenTrial, Sequence[FrozenTrial]], None]


@dataclass(frozen=True)
class SearchPlan:
    """Everything a search needs, checked: built by ``archgen.search_api.plan_search``."""

    spec: ArchSpec
    space: SearchSpace
    budget: Budget
    workload: Workload
    trials: int
    out: Path
    storage_url: str
    study_name: str
    fidelity: str  # analytic, capability or blockwise
    quick: bool
    seed: int
    sampler: str
    finalize_steps: int  # end-to-end distillation of the assembled winner; 0 skips
    export: str | None  # export format for the winner, or None
    cache: Path


@dataclass(frozen=True)
class SearchOutcome:
    out: Path
    budget: Budget
    reference_s: float | None  # the reference's calibrated seconds at the end
    certified: list[Certified]
    best: Certified | None
    best_spec: Path | None
    best_model: Path | None  # OUT/best/: the winner with trained weights
    winner: Winner | None  # how best/ was made (bits per byte before and after finalisation)
    trust: TrustReport
    report: dict[str, Any]  # what report.json holds


def run_search_plan(
    plan: SearchPlan, *, log: Log = print, on_trial: OnTrial | None = None
) -> SearchOutcome:
    from archgen.search.certify import certify, choose, study_lock
    from archgen.search.evaluate import CandidateEvaluator, LatencyJudge
    from archgen.search.latency import (
        LatencyPredictor,
        LatencyTable,
        block_signature,
        graph_signature,
    )
    from archgen.search.measure import Measurer
    from archgen.search.paired import ReferenceCalibration
    from archgen.search.report import build_report, write_json_atomic, write_plots
    from archgen.search.storage import open_storage, quiet_optuna, redact
    from archgen.search.study import StudyConfig, open_study, pareto_fronts, run_worker, worker_id

    quiet_optuna()
    storage = open_storage(plan.storage_url)
    space, workload = plan.space, plan.workload
    for e in space.excluded:
        log(f"excluded {e.node} = {e.label}: {e.reason}")
    log(
        f"search space: {len(space.slots)} slots, {space.size():,} candidates; "
        f"budget {plan.budget}; study {plan.study_name} in "
        f"{redact(plan.storage_url, plan.storage_url)}"
    )

    if workload.phase == "diffusion-decode":  # what "latency" means in this search
        log(f"workload: {workload.describe()}")

    # 2. The reference, alone.
    reference = space.base
    measurer = Measurer(workload, reference=reference, log=log)
    calibration = ReferenceCalibration(threads=workload.threads)
    timing = measurer.time_group(
        [reference], repeats=measurer.policy.rounds, threads=workload.threads
    )
    calibration.observe(timing.medians[0], timing.threads, timing.contended)
    if timing.contended:
        log(
            f"the cores are busy: this process got {timing.utilisation:.0%} of the "
            f"{workload.threads} thread(s) it ran; measurements are taken with fewer threads "
            "and flagged until they are free"
        )
    else:
        log(f"reference (the spec's base model) measures {format_seconds(timing.medians[0])}")

    # 3. Block table: every (slot, choice) block once, all measured together in one
    # interleaved run with the stem and the reference; identical blocks share one measurement.
    table = LatencyTable(plan.cache / "latency.sqlite", measurer.environment())
    predictor = LatencyPredictor(
        table, workload, measurer.measure_blocks, reference=graph_signature(reference),
        worker=worker_id(), reference_s=calibration.seconds,
    )  # fmt: skip
    log("measuring block latencies (cached across searches)...")
    # A slot over several nodes (an image model's per-stage slot) costs the sum of its blocks.
    variants: dict[str, list[tuple[str, Graph, tuple[str, ...]]]] = {}
    base_or_first = space.base_candidate() or {s.node: s.choices[0].label for s in space.slots}
    for slot in space.slots:
        found = [space.base.node(n).block for n in slot.targets]
        blocks = tuple(dict.fromkeys(b for b in found if b is not None))
        assert len(blocks) == len(set(found))  # every slot's nodes lie inside blocks
        for choice in slot.choices:
            g = space.graph_for({**base_or_first, slot.node: choice.label})
            variants.setdefault(slot.node, []).append((choice.label, g, blocks))
    predictor.ensure_blocks([(g, b) for v in variants.values() for _, g, bs in v for b in bs])
    cheapest: Candidate = {
        node: min(v, key=lambda t: sum(predictor.block_cost(t[1], b) for b in t[2]))[0]
        for node, v in variants.items()
    }
    stale = f", {predictor.stale_rows} stale cached row(s) not used" if predictor.stale_rows else ""
    log(f"  {predictor.block_measurements} block(s) measured, the rest from the cache{stale}")

    # 4. The predictor's in-context design, measured against the reference.
    judge = LatencyJudge(
        space=space, predictor=predictor, measure_paired=measurer.measure_against_reference,
        budget=plan.budget, calibration=calibration, workload_threads=workload.threads,
    )  # fmt: skip
    kind_names = {
        block_signature(g, b): label for v in variants.values() for label, g, bs in v for b in bs
    }
    _calibrate(space.baseline_candidates(), judge, measurer, kind_names, log)
    limit_s = plan.budget.limit_seconds(calibration.seconds)
    if plan.budget.is_set:
        now = (
            f"{format_seconds(limit_s)} now"
            if limit_s
            else "in seconds not known yet (every timing of the base model so far was taken "
            "on busy cores); the search goes on in ratios to the base model"
        )
        log(f"budget {plan.budget}: {now}")

    # 5. The cheapest candidate, measured: a budget below it cannot be met by any candidate.
    check = judge.measure(cheapest)
    log(f"cheapest candidate measures {check.measured:.3f} x the base model")
    limit = judge.limit()
    if limit is not None and check.measured > limit * (1 + check.uncertainty):
        cheapest_s = judge.seconds(check.measured)
        raise ArchgenError(
            f"the budget ({plan.budget}) is below the measured latency of the cheapest "
            f"candidate ({check.measured:.3f} x the base model"
            + (f", {format_seconds(cheapest_s)}" if cheapest_s else "")
            + f"; {workload.shape_key()} on {workload.backend}/{workload.device}, "
            f"{workload.threads} thread(s))",
            hint="raise --budget, shorten search.workload.seq_len, or add cheaper choices"
            if workload.image_size is None
            else "raise --budget, or add cheaper choices",
        )

    # 6-7. Quality, then the study.
    with _training_threads(measurer, log):
        quality, quality_info = _quality(plan, log)
    config = StudyConfig(
        name=plan.study_name, n_trials=plan.trials, seed=plan.seed, sampler=plan.sampler
    )
    study = open_study(storage, config, space.baseline_candidates())
    setup_checks = {
        key: (c.predicted, c.measured) for key, c in judge.known.items() if not c.design
    }
    run_worker(study, space, CandidateEvaluator(judge, quality), config, on_trial=on_trial)

    # 8. Certification, once per study; down to the next front when a whole front is over.
    trials = study.get_trials(deepcopy=False)
    fronts = pareto_fronts(trials, CERTIFIED_FRONTS)
    graphs = {t.number: space.graph_for(t.params) for front in fronts for t in front}

    def announce(rank: int, front: Sequence[FrozenTrial]) -> None:
        if rank == 1:
            log(f"certifying {len(front)} Pareto model(s) against the base model...")
        else:
            log(
                f"  none of front {rank - 1} is within budget when measured: certifying the "
                f"next front ({len(front)} model(s), front {rank} of at most {CERTIFIED_FRONTS})"
            )

    def measure_front(ts: Sequence[FrozenTrial]) -> list[Any]:
        results = measurer.measure_against_reference(
            [graphs[t.number] for t in ts], rounds=2 * measurer.policy.rounds
        )
        for r in results:
            calibration.observe_result(r)
        return results

    with study_lock(storage, plan.storage_url, plan.study_name):
        certified, measured_here = certify(
            study, fronts, measure=measure_front,
            predicted=lambda t: predictor.predict(graphs[t.number]),
            limit=judge.limit, seconds=judge.seconds, allowance=judge.fallback_allowance,
            on_front=announce,
        )  # fmt: skip
    if not measured_here:
        log("  as certified by another worker of this study")
    best = choose(certified)

    # 9. Outputs.
    best_spec = None
    winner: Winner | None = None
    if best is not None:
        best_spec = plan.out / "best.yaml"
        _write_best(best_spec, space.graph_for(best.params), plan.spec)
        with _training_threads(measurer, log):
            winner = _winner(plan, best, log)
    best_model = winner.folder if winner is not None else None
    trust = _trust(trials, setup_checks, space)
    measurement = {
        "reference": "the spec's base model",
        "calibration": calibration.drift(),
        "fewer_thread_measurements": measurer.fewer_thread_measurements,
        "remeasured": judge.remeasured,
        "stale_block_rows": predictor.stale_rows,
        "predictor_correction": predictor.correction,
    }
    report = build_report(
        spec_name=plan.spec.model.name,
        budget_ratio=judge.limit(),
        budget_s=plan.budget.limit_seconds(calibration.seconds),
        workload=asdict(workload),
        environment=measurer.environment(),
        trials=trials,
        certified=certified,
        trust=trust,
        excluded=space.excluded,
        best=best,
        quality_fidelity=plan.fidelity,
        measurement=measurement,
    )
    storage_shown = redact(plan.storage_url, plan.storage_url)  # never a password in a report
    report["study"] = {"name": plan.study_name, "storage": storage_shown}
    report["quality"] = quality_info
    report["winner"] = winner.to_json() if winner is not None else None
    if plan.fidelity == "blockwise" and not plan.quick and plan.spec.search is not None:
        q = plan.spec.search.quality
        if q.finalist_steps > 0:
            from archgen.search.proxies import finalist_check

            top = sorted(certified, key=lambda c: -c.quality)[: q.finalists]
            report["fidelity_check"] = finalist_check(
                plan.spec, [(c.params, c.quality) for c in top], space, plan.cache,
                q.finalist_steps, log,
            )  # fmt: skip
    write_json_atomic(plan.out / "report.json", report)
    write_plots(
        plan.out, trials, certified, judge.limit(), judge.checks,
        reference_s=calibration.seconds, chosen=best.number if best else None,
        fidelity=plan.fidelity,
    )  # fmt: skip
    if best is not None and plan.export:
        report["export"] = _export_best(best_spec, best_model, plan.out, plan.export, log)
        write_json_atomic(plan.out / "report.json", report)
    return SearchOutcome(
        out=plan.out, budget=plan.budget, reference_s=calibration.seconds, certified=certified,
        best=best, best_spec=best_spec, best_model=best_model, winner=winner, trust=trust,
        report=report,
    )  # fmt: skip


def _calibrate(
    baselines: list[Candidate],
    judge: LatencyJudge,
    measurer: Measurer,
    kind_names: dict[str, str],
    log: Log,
) -> None:
    """Measure the base and homogeneous models against the reference, as the predictor's
    in-context design (LatencyPredictor.calibrate); the study's baseline trials then reuse
    these measurements."""
    if not baselines:
        return
    graphs = [judge.space.graph_for(c) for c in baselines]
    log(f"measuring {len(baselines)} baseline model(s) against the base model...")
    results = measurer.measure_design(graphs)
    for r in results:
        judge.calibration.observe_result(r)
    before = judge.predictor.calibrate(graphs, [r.ratio for r in results])
    for candidate, predicted, result in zip(baselines, before, results, strict=True):
        judge.remember(candidate, predicted, result)
    context = judge.predictor.context
    factors = ", ".join(f"{kind_names.get(k, k[:8])} {v:.2f}" for k, v in context.items())
    log(f"  in-context block factors: {factors or 'none'}")


def _trust(
    trials: Sequence[FrozenTrial], setup_checks: dict[str, tuple[float, float]], space: Any
) -> TrustReport:
    """Rank agreement of predictions made before measuring, one pair per candidate, over every
    measured trial of the study (all runs and workers) and this run's setup measurements --
    except the calibration models, whose predictions came before the calibration."""
    from archgen.search.latency import trust_report
    from archgen.search.study import evaluates

    pairs = dict(setup_checks)
    for t in trials:
        if t.user_attrs.get("calibration_design"):
            continue  # a calibration model, predicted before the calibration
        if t.user_attrs.get("measured_ratio") is not None and evaluates(t):
            pairs[space.key(t.params)] = (
                t.user_attrs["predicted_ratio"], t.user_attrs["measured_ratio"]
            )  # fmt: skip
    checks = list(pairs.values())
    return trust_report([p for p, _ in checks], [m for _, m in checks])


@contextlib.contextmanager
def _training_threads(measurer: Measurer, log: Log) -> Iterator[None]:
    """Train with the cores this process gets now (Measurer.training_threads): with torch's
    default threads on shared cores, a search beside another one trained its teacher 6x slower
    than alone (627 against 3,829 tokens/s on the AMD VM)."""
    from archgen.backends.eager import torch_threads

    threads = measurer.training_threads()
    if threads is not None:
        log(f"the cores are busy: training with {threads} thread(s) until this phase ends")
    with torch_threads(threads):
        yield


def _quality(plan: SearchPlan, log: Log) -> tuple[Callable[[Candidate, Graph], float], dict]:
    from archgen.search import proxies
    from archgen.search.quality import AnalyticQuality

    if plan.fidelity == "analytic":
        analytic = AnalyticQuality(plan.workload.seq_len)
        return (lambda candidate, graph: analytic(graph)), {}
    if plan.fidelity == "capability":
        return proxies.capability_quality(plan.spec, plan.quick), {}
    return proxies.blockwise_quality(plan.spec, plan.space, plan.cache, plan.quick, log)


def _write_best(path: Path, graph: Graph, spec: ArchSpec) -> None:
    import yaml

    from archgen.spec.expand import spec_from_graph, spec_to_data
    from archgen.train.checkpoint import write_text_atomic

    data = spec_to_data(spec_from_graph(graph))
    data.pop("search", None)
    header = "# chosen by archgen search; check/build/export accept it\n"
    write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False))


def _winner(plan: SearchPlan, best: Certified, log: Log) -> Winner | None:
    """OUT/best/: the winner with trained weights, where the quality proxy trained any."""
    if plan.fidelity != "blockwise":
        log("no trained weights for the winner: only the blockwise proxy trains blocks")
        return None
    from archgen.search.winner import build_winner

    return build_winner(
        plan.spec, plan.space.graph_for(best.params), best.params, plan.space, plan.cache,
        plan.out, finalize_steps=plan.finalize_steps, quick=plan.quick, log=log,
    )  # fmt: skip


def export_folder(out: Path, fmt: str) -> Path:
    """Where ``--export FMT`` writes the winner: the search owns OUT, so a rerun replaces its
    own previous export there (never other files; archgen.search_api checks it up front)."""
    return out / f"export-{fmt}"


def _export_best(
    best_spec: Path | None, best_model: Path | None, out: Path, fmt: str, log: Log
) -> dict[str, Any]:
    """Export the winner with its trained weights (best/) where there are some, and validate."""
    from archgen.export import export
    from archgen.search.winner import export_winner

    assert best_spec is not None
    target = export_folder(out, fmt)
    if best_model is not None:
        log(f"exporting {best_model} (trained weights) as {fmt} and validating its numerics...")
        result = export_winner(best_model, target, fmt=fmt, force=True)
    else:
        log(f"exporting {best_spec} (seeded weights: nothing trained) as {fmt} and validating...")
        result = export(best_spec, target, fmt=fmt, force=True)  # type: ignore[arg-type]
    log(f"  exported to {result.out_dir}")
    return {"format": fmt, "folder": str(result.out_dir), "files": result.files}
