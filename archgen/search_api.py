"""``archgen search``: latency-budgeted architecture search over a spec's ``search:`` section.

Order of work, so that every user mistake surfaces before anything expensive runs:
budget parsed -> space built (excluded choices listed) -> storage opened -> block latencies
measured (cached on disk across searches) -> budget checked against the cheapest candidate's
*measured* latency -> quality proxy prepared (teacher training and distillation, cached) ->
Optuna trials -> Pareto models measured end to end (certification) -> report, plots, best.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from archgen.errors import ArchgenError
from archgen.ir.graph import Graph
from archgen.search.budget import RelativeBudget, format_seconds
from archgen.spec.expand import spec_from_graph, spec_to_data
from archgen.spec.loader import load_spec
from archgen.spec.models import ArchSpec
from archgen.spec.search_space import search_proposals

if TYPE_CHECKING:
    from archgen.search.evaluate import CandidateEvaluator
    from archgen.search.measure import Measurer
    from archgen.search.space import Candidate


def cache_dir() -> Path:
    return Path(os.environ.get("ARCHGEN_CACHE", Path.home() / ".cache" / "archgen"))


@dataclass(frozen=True)
class SearchOptions:
    budget: str | None = None  # overrides search.budget
    trials: int | None = None  # overrides search.trials
    out: Path | None = None
    storage: str | None = None  # default: sqlite in the output folder
    quick: bool = False
    quality: str | None = None  # overrides search.quality.fidelity
    export: str | None = None  # "onnx": export and validate the winner
    seed: int | None = None


@dataclass(frozen=True)
class SearchOutcome:
    out: Path
    report: dict[str, Any]
    best_spec: Path | None


Log = Callable[[str], None]


def _study_name(spec: ArchSpec, budget: str | None, trials: int, quick: bool) -> str:
    data = json.dumps(
        {"spec": spec_to_data(spec), "budget": budget, "quick": quick}, sort_keys=True
    )
    return f"{spec.model.name}-{hashlib.sha256(data.encode()).hexdigest()[:10]}"


def prepare(spec_path: str | os.PathLike[str], options: SearchOptions) -> dict[str, Any]:
    """Everything that can fail on bad input, before measuring or training anything."""
    from archgen.api import compile_spec
    from archgen.search.budget import parse_search_budget
    from archgen.search.space import Choice, SearchSpace
    from archgen.search.storage import open_storage

    spec = load_spec(spec_path)
    if spec.search is None:
        raise ArchgenError(
            f"{spec_path}: the spec has no 'search:' section",
            hint="add search.slots listing which layers may change and the choices per layer "
            "(see examples/hybrid.yaml)",
        )
    s = spec.search
    budget_text = options.budget or s.budget
    budget = parse_search_budget(budget_text) if budget_text else None
    graph = compile_spec(spec)
    proposals, _ = search_proposals(spec)
    from archgen.backends.base import get_backend

    backend = get_backend(s.workload.backend)
    ok, why = backend.is_available()
    if not ok:
        from archgen.errors import UnavailableError

        raise UnavailableError(f"search backend {backend.name!r} is not available here: {why}")

    def supports(op: Any) -> tuple[bool, str]:
        from archgen.ir.graph import Node

        return backend.supports(Node("candidate", op, ("x",)))

    space = SearchSpace.build(
        graph,
        {node: [Choice(label, op) for label, op in choices] for node, choices in proposals.items()},
        supports,
    )
    seq_len = s.workload.seq_len or spec.model.max_seq_len
    if seq_len > spec.model.max_seq_len:
        raise ArchgenError(
            f"search.workload.seq_len {seq_len} exceeds model.max_seq_len {spec.model.max_seq_len}"
        )
    trials = options.trials or s.trials
    if options.quick:
        trials = min(trials, 24)
    out = Path(options.out or Path("runs") / f"search-{spec.model.name}")
    out.mkdir(parents=True, exist_ok=True)
    storage_url = options.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    storage = open_storage(storage_url)
    return {
        "spec": spec,
        "graph": graph,
        "space": space,
        "budget": budget,
        "budget_text": budget_text,
        "seq_len": seq_len,
        "trials": trials,
        "out": out,
        "storage": storage,
        "storage_url": storage_url,
        "name": _study_name(spec, budget_text, trials, options.quick),
    }


STUDY_BUDGET = "archgen:budget_s"  # a relative budget resolved, shared by the study's workers


def _describe_budget(budget: float | RelativeBudget | None) -> str:
    if budget is None:
        return "none"
    return str(budget) if isinstance(budget, RelativeBudget) else format_seconds(budget)


def _resolve_relative_budget(
    budget: RelativeBudget,
    study: Any,
    base_candidate: Candidate | None,
    evaluator: CandidateEvaluator,
    log: Callable[[str], None],
) -> float:
    """Seconds for ``N%`` of the base model, one value for the whole study: the first one
    resolved (by an earlier run, so a resumed search keeps its budget, or by another worker
    that started at the same time), else from the base model's measured latency."""
    from archgen.search.study import shared_value

    if base_candidate is None:
        raise ArchgenError(
            f"a relative budget ({budget}) needs the spec's base model in the search space",
            hint="give an absolute budget such as --budget 30ms",
        )
    base: list[float] = []

    def from_base_model() -> float:
        base.append(evaluator.measure(base_candidate)[1])
        return budget.resolve(base[0])

    seconds, own = shared_value(study, STUDY_BUDGET, from_base_model)
    if own is None:
        log(f"budget {format_seconds(seconds)} ({budget}, as first resolved)")
        return seconds
    log(f"base model measures {format_seconds(base[0])}: budget {format_seconds(own)} ({budget})")
    if own != seconds:
        log(f"  another worker resolved it first: the study uses {format_seconds(seconds)}")
    return seconds


def _calibrate(
    baselines: list[Candidate],
    evaluator: CandidateEvaluator,
    measurer: Measurer,
    kind_names: dict[str, str],
    log: Log,
) -> None:
    """Measure the base and homogeneous models together, as the predictor's in-context design
    (LatencyPredictor.calibrate); the study's baseline trials then reuse these measurements."""
    from archgen.search.measure import BLOCK_REPEAT_FACTOR

    if not baselines:
        return
    graphs = [evaluator.space.graph_for(c) for c in baselines]
    rounds = measurer.workload.repeats * BLOCK_REPEAT_FACTOR
    log(f"measuring {len(baselines)} baseline model(s) together ({rounds} interleaved rounds)...")
    measured = measurer.measure_design(graphs)
    before = evaluator.predictor.calibrate(graphs, measured)
    for candidate, predicted, seconds in zip(baselines, before, measured, strict=True):
        evaluator.remember(candidate, predicted, seconds)
    context = evaluator.predictor.context
    factors = ", ".join(f"{kind_names.get(k, k[:8])} {v:.2f}" for k, v in context.items())
    log(f"  in-context block factors: {factors or 'none'}")


def run_search(
    spec_path: str | os.PathLike[str],
    options: SearchOptions,
    *,
    log: Log = print,
    on_trial: Callable[[Any, Any], None] | None = None,
) -> SearchOutcome:
    from archgen.search.evaluate import CandidateEvaluator, LatencyPolicy
    from archgen.search.latency import LatencyPredictor, LatencyTable, Workload, block_signature
    from archgen.search.measure import Measurer
    from archgen.search.report import Certified, build_report, write_json_atomic, write_plots
    from archgen.search.storage import quiet_optuna
    from archgen.search.study import (
        StudyConfig,
        open_study,
        pareto_front,
        run_worker,
        worker_id,
    )

    quiet_optuna()
    p = prepare(spec_path, options)
    spec: ArchSpec = p["spec"]
    s = spec.search
    assert s is not None
    space, budget, out = p["space"], p["budget"], p["out"]
    for e in space.excluded:
        log(f"excluded {e.node} = {e.label}: {e.reason}")
    log(
        f"search space: {len(space.slots)} slots, {space.size():,} candidates; "
        f"budget {_describe_budget(budget)}; study {p['name']} "
        f"in {p['storage_url']}"
    )

    w = s.workload
    workload = Workload(
        batch=w.batch,
        seq_len=p["seq_len"],
        phase=w.phase,
        dtype=w.dtype,
        backend=w.backend,
        device=w.device,
        threads=w.threads,
        repeats=5 if options.quick else w.repeats,
    )
    measurer = Measurer(workload)
    table = LatencyTable(cache_dir() / "latency.sqlite", measurer.environment())
    predictor = LatencyPredictor(table, workload, measurer.measure_blocks, worker=worker_id())

    # Block table: every (slot, choice) block once, all measured together in one interleaved
    # run; identical blocks share one measurement.
    log("measuring block latencies (cached across searches)...")
    variants: dict[str, list[tuple[str, Graph, str]]] = {}
    for slot in space.slots:
        block = space.base.node(slot.node).block
        assert block is not None
        for choice in slot.choices:
            g = space.graph_for({**_base_or_first(space), slot.node: choice.label})
            variants.setdefault(slot.node, []).append((choice.label, g, block))
    predictor.ensure_blocks([(g, b) for v in variants.values() for _, g, b in v])
    per_slot_best: dict[str, str] = {
        node: min(v, key=lambda t: predictor.block_seconds(t[1], t[2]))[0]
        for node, v in variants.items()
    }
    log(f"  {predictor.block_measurements} block(s) measured, the rest from the cache")

    # Quality starts as a placeholder: nothing is trained before the budget is known feasible.
    evaluator = CandidateEvaluator(
        space=space,
        predictor=predictor,
        measure_graph=measurer.measure_graph,
        quality=_not_ready,
        policy=LatencyPolicy(budget=None),  # set once the budget is resolved
    )
    base_candidate: Candidate | None = space.base_candidate()
    baselines = space.baseline_candidates()
    kind_names = {block_signature(g, b): label for v in variants.values() for label, g, b in v}
    _calibrate(baselines, evaluator, measurer, kind_names, log)
    config = StudyConfig(
        name=p["name"],
        n_trials=p["trials"],
        seed=options.seed or s.seed,
        sampler=s.sampler,
    )
    study = open_study(p["storage"], config, baselines)
    if isinstance(budget, RelativeBudget):
        budget = _resolve_relative_budget(budget, study, base_candidate, evaluator, log)
    evaluator.policy = LatencyPolicy(budget=budget)
    # The cheapest candidate, measured: a budget below it cannot be met by any candidate.
    _, cheapest_s = evaluator.measure(per_slot_best)
    log(f"cheapest candidate measures {format_seconds(cheapest_s)}")
    if budget is not None and cheapest_s > budget:
        raise ArchgenError(
            f"the budget {format_seconds(budget)} is below the measured latency of the cheapest "
            f"candidate ({format_seconds(cheapest_s)}, {workload.shape_key()} on {w.backend}/"
            f"{w.device}, {w.threads} thread(s))",
            hint="raise --budget, shorten search.workload.seq_len, or add cheaper choices",
        )
    evaluator.quality, quality_info = _quality(spec, p, options, log)

    setup_checks = dict(evaluator.known)
    run_worker(study, space, evaluator, replace(config, budget=budget), on_trial=on_trial)

    # Certification: every Pareto model is measured end to end, now, interleaved (so that the
    # models are compared under the same machine conditions).
    trials = study.get_trials(deepcopy=False)
    front = pareto_front(trials)
    graphs = [space.graph_for(t.params) for t in front]
    certified = []
    for t, graph, measured in zip(front, graphs, measurer.measure_graphs(graphs), strict=True):
        predicted = predictor.predict(graph)
        certified.append(
            Certified(
                number=t.number,
                params=dict(t.params),
                quality=t.values[0],
                predicted_s=predicted,
                measured_s=measured,
                within_budget=budget is None or measured <= budget,
            )
        )
    ok = [c for c in certified if c.within_budget]
    best = max(ok, key=lambda c: (c.quality, -c.measured_s)) if ok else None
    best_path = None
    if best is not None:
        best_path = out / "best.yaml"
        _write_best(best_path, space.graph_for(best.params), spec)
    report = build_report(
        spec_name=spec.model.name,
        budget_s=budget,
        workload=asdict(workload),
        environment=measurer.environment(),
        trials=trials,
        certified=certified,
        trust=_trust(trials, setup_checks, space),
        excluded=space.excluded,
        best=best,
        quality_fidelity=_fidelity(spec, options),
    )
    report["study"] = {"name": p["name"], "storage": p["storage_url"]}
    report["quality"] = quality_info
    q = s.quality
    if q.finalist_steps > 0 and not options.quick and _fidelity(spec, options) == "blockwise":
        from archgen.search_quality import finalist_check

        top = sorted(certified, key=lambda c: -c.quality)[: q.finalists]
        report["fidelity_check"] = finalist_check(
            spec, [(c.params, c.quality) for c in top], space, cache_dir(), q.finalist_steps, log
        )
    write_json_atomic(out / "report.json", report)
    write_plots(out, trials, certified, budget, evaluator.checks)
    if best is not None and options.export:
        report["export"] = _export_best(best_path, out, options.export, log)
        write_json_atomic(out / "report.json", report)
    return SearchOutcome(out, report, best_path)


def _trust(trials: list[Any], setup_checks: dict[str, tuple[float, float]], space: Any) -> Any:
    """Rank agreement of predictions made before measuring, one pair per candidate, over every
    measured trial of the study (all runs and workers) and this run's setup measurements."""
    from archgen.search.latency import trust_report
    from archgen.search.study import evaluates

    pairs = dict(setup_checks)
    for t in trials:
        if t.user_attrs.get("measured_s") is not None and evaluates(t):
            pairs[space.key(t.params)] = (t.user_attrs["predicted_s"], t.user_attrs["measured_s"])
    checks = list(pairs.values())
    return trust_report([p for p, _ in checks], [m for _, m in checks])


def _not_ready(candidate: Any, graph: Graph) -> float:
    raise AssertionError("quality requested before the quality proxy was prepared")


def _base_or_first(space: Any) -> dict[str, str]:
    return space.base_candidate() or {s.node: s.choices[0].label for s in space.slots}


def _fidelity(spec: ArchSpec, options: SearchOptions) -> str:
    assert spec.search is not None
    return options.quality or spec.search.quality.fidelity


def _quality(spec: ArchSpec, p: dict[str, Any], options: SearchOptions, log: Log) -> Any:
    from archgen import search_quality
    from archgen.search.quality import AnalyticQuality

    fidelity = _fidelity(spec, options)
    if fidelity == "analytic":
        analytic = AnalyticQuality(p["seq_len"])
        return (lambda candidate, graph: analytic(graph)), {}
    if fidelity == "capability":
        return search_quality.capability_quality(spec, options.quick), {}
    return search_quality.blockwise_quality(spec, p["space"], cache_dir(), options.quick, log)


def _write_best(path: Path, graph: Graph, spec: ArchSpec) -> None:
    from archgen.train.checkpoint import write_text_atomic

    data = spec_to_data(spec_from_graph(graph))
    data.pop("search", None)
    header = "# chosen by archgen search; check/build/export accept it\n"
    write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False))


def _export_best(best: Path | None, out: Path, fmt: str, log: Log) -> dict[str, Any]:
    """Export the winner's architecture (weights from the default seed) and validate it."""
    from archgen.export import export

    assert best is not None
    log(f"exporting {best} as {fmt} and validating its numerics...")
    # the search owns OUT: a rerun replaces its own previous export (never other files)
    result = export(best, out / f"export-{fmt}", fmt=fmt, force=True)  # type: ignore[arg-type]
    log(f"  exported to {result.out_dir}")
    return {"format": fmt, "folder": str(result.out_dir), "files": result.files}
