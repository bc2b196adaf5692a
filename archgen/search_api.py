"""``archgen search``: the user's options and spec turned into a checked, typed
:class:`~archgen.search.run.SearchPlan`; the loop itself lives in :mod:`archgen.search.run`.

Everything that can fail on bad input fails here, before anything is measured or trained.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archgen.errors import ArchgenError
from archgen.paths import cache_dir
from archgen.search.budget import Budget
from archgen.search.run import SearchOutcome, SearchPlan, export_folder, run_search_plan
from archgen.spec.expand import spec_to_data
from archgen.spec.loader import load_spec
from archgen.spec.models import ArchSpec
from archgen.spec.search_space import search_groups, search_proposals
from archgen.staging import OutputFolder, output_folder, probe_writable

__all__ = ["SearchOptions", "SearchOutcome", "cache_dir", "plan_search", "run_search"]

FIDELITIES = ("analytic", "capability", "blockwise")


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
    finalize_steps: int | None = None  # None: search.winner.default_finalize_steps


Log = Callable[[str], None]


def _study_name(spec: ArchSpec, budget: str | None, quick: bool) -> str:
    data = json.dumps(
        {"spec": spec_to_data(spec), "budget": budget, "quick": quick}, sort_keys=True
    )
    return f"{spec.model.name}-{hashlib.sha256(data.encode()).hexdigest()[:10]}"


def _check_export(fmt: str | None) -> None:
    """The winner's export format, known and possible here, before the search (which may take
    hours) rather than after it."""
    if fmt is None:
        return
    from archgen.backends.base import get_backend
    from archgen.errors import UnavailableError
    from archgen.export import FORMAT_BACKEND

    if fmt not in FORMAT_BACKEND:
        raise ArchgenError(
            f"unknown --export format {fmt!r}", hint=f"one of {', '.join(FORMAT_BACKEND)}"
        )
    ok, why = get_backend(FORMAT_BACKEND[fmt]).is_available()
    if not ok:
        raise UnavailableError(f"cannot export the winner as {fmt} on this machine: {why}")


def plan_search(spec_path: str | os.PathLike[str], options: SearchOptions) -> SearchPlan:
    """Everything that can fail on bad input, before measuring or training anything."""
    from archgen.api import compile_spec
    from archgen.backends.base import get_backend
    from archgen.ir.graph import Node
    from archgen.search.space import Choice, SearchSpace
    from archgen.search.timing import Workload

    spec = load_spec(spec_path)
    if spec.search is None:
        raise ArchgenError(
            f"{spec_path}: the spec has no 'search:' section",
            hint="add search.slots listing which layers may change and the choices per layer "
            "(see examples/hybrid.yaml)",
        )
    s = spec.search
    # "is None", not "or": an empty --budget "" or --quality "" is a mistake to report, not a
    # request for the spec's value.
    budget_text = options.budget if options.budget is not None else s.budget
    budget = Budget.parse(budget_text)
    graph = compile_spec(spec)
    fidelity = _fidelity(spec, graph, options.quality)
    _check_export(options.export)
    proposals, _ = search_proposals(spec)
    groups = search_groups(spec)  # an image model's per-stage slots: the nodes of each
    backend = get_backend(s.workload.backend)
    ok, why = backend.is_available()
    if not ok:
        from archgen.errors import UnavailableError

        raise UnavailableError(f"search backend {backend.name!r} is not available here: {why}")

    def supports(op: Any) -> tuple[bool, str]:
        return backend.supports(Node("candidate", op, ("x",)))

    space = SearchSpace.build(
        graph,
        {node: [Choice(label, op) for label, op in choices] for node, choices in proposals.items()},
        supports,
        groups,
    )
    image = graph.model.image  # an image classifier reads batch images of its size
    seq_len = graph.model.max_seq_len if image is not None else s.workload.seq_len
    seq_len = seq_len or graph.model.max_seq_len
    if seq_len > graph.model.max_seq_len:
        raise ArchgenError(
            f"search.workload.seq_len {seq_len} exceeds model.max_seq_len {graph.model.max_seq_len}"
        )
    trials = min(options.trials or s.trials, 24) if options.quick else options.trials or s.trials
    w = s.workload
    workload = Workload(
        batch=w.batch, seq_len=seq_len, phase=w.phase, dtype=w.dtype, backend=w.backend,
        device=w.device, threads=w.threads, repeats=5 if options.quick else w.repeats,
        image_size=image.image_size if image is not None else None,
    )  # fmt: skip
    workload = _task_workload(workload, w, graph.model.task)
    if options.out is not None:
        out = Path(options.out)
    else:
        from archgen.training import default_folder

        out = default_folder(spec.model.name, prefix="search-")
    if out.exists() and not out.is_dir():
        raise ArchgenError(f"{out} exists and is not a folder", hint="choose another folder (-o)")
    probe_writable(out, inside=True)  # created by run_search, and removed if the search fails
    if options.export is not None:  # refused now rather than after the whole search
        OutputFolder(export_folder(out, options.export), "export", force=True).check()
    finalize = options.finalize_steps
    if finalize is None:
        from archgen.search.winner import default_finalize_steps

        finalize = default_finalize_steps(spec, options.quick)
    return SearchPlan(
        spec=spec,
        space=space,
        budget=budget,
        workload=workload,
        trials=trials,
        out=out,
        storage_url=options.storage or f"sqlite:///{(out / 'study.db').resolve()}",
        study_name=_study_name(spec, budget_text, options.quick),
        fidelity=fidelity,
        quick=options.quick,
        seed=options.seed if options.seed is not None else s.seed,
        sampler=s.sampler,
        finalize_steps=finalize,
        export=options.export,
        cache=cache_dir(),
    )


def _fidelity(spec: ArchSpec, graph: Any, given: str | None) -> str:
    """The quality proxy: ``--quality``, else the spec's; a masked-diffusion LM's default is
    ``capability``. Its candidates are trained on a capability task in prompt/answer form with
    their own (LLaDA) objective, which scores what a denoiser must do -- fill masked answers
    from context on both sides; ``blockwise`` distils each block from a next-token teacher on
    clean sequences, which a denoiser never sees, so it is refused for them."""
    assert spec.search is not None
    q = spec.search.quality
    fidelity = given if given is not None else q.fidelity
    if fidelity not in FIDELITIES:
        raise ArchgenError(
            f"unknown quality fidelity {fidelity!r}", hint=f"one of {', '.join(FIDELITIES)}"
        )
    if graph.model.image is not None and fidelity != "blockwise":
        raise ArchgenError(
            f"quality fidelity {fidelity!r} does not apply to image classifiers: analytic ranks "
            "sequence mixers by the past tokens they remember, capability trains on a token "
            "recall task",
            hint="use --quality blockwise (the default): each (layer, choice) block distilled "
            "from the trained base model on its stage's grid",
        )
    diffusion = graph.model.mask_token is not None
    if diffusion and given is None and "fidelity" not in q.model_fields_set:
        fidelity = "capability"  # the default for a masked-diffusion LM (see above)
    if fidelity == "capability":
        from archgen.search.proxies import capability_problem

        if (problem := capability_problem(graph)) is not None:
            raise ArchgenError(
                f"quality fidelity 'capability': {problem}",
                hint="raise model.vocab_size, or use --quality analytic",
            )
    if not diffusion or fidelity != "blockwise":
        return fidelity
    raise ArchgenError(
        f"quality fidelity 'blockwise' does not support {graph.model.task} models yet: its "
        "teacher and block distillation are next-token models on unmasked text",
        hint="use --quality capability (each candidate trained on a recall task with the "
        "masked-diffusion objective) or analytic",
    )


def _task_workload(workload: Any, spec: Any, task: str) -> Any:
    """The workload checked against the model's task; a ``diffusion-decode`` workload gets its
    decoder, generation length and denoiser calls per run (:attr:`Workload.calls`)."""
    from dataclasses import fields, replace

    where = "search.workload"
    diffusion = task == "masked-diffusion-lm"
    if workload.phase == "decode" and diffusion:
        raise ArchgenError(
            f"{where}.phase 'decode' times one causal step; a {task} generates by repeated "
            "denoiser calls",
            hint="use phase: diffusion-decode (with decoder and gen_length) or prefill",
        )
    if workload.phase != "diffusion-decode":
        for name in ("decoder", "gen_length", "calls_per_token"):
            if getattr(spec, name) is not None:
                raise ArchgenError(
                    f"{where}.{name} applies to phase diffusion-decode only "
                    f"(phase is {workload.phase})",
                    hint=f"remove {where}.{name}, or set phase: diffusion-decode",
                )
        return workload
    if not diffusion:
        raise ArchgenError(
            f"{where}.phase diffusion-decode applies to masked-diffusion-lm models; this one "
            f"is a {task}",
            hint="use phase: prefill or decode",
        )
    from archgen.decoding import ConfidenceDecoder, parse_decoder

    policy = parse_decoder(spec.decoder or "localleap")
    gen = spec.gen_length if spec.gen_length is not None else workload.seq_len // 2
    if gen >= workload.seq_len:
        raise ArchgenError(
            f"{where}.gen_length {gen} leaves no prompt in seq_len {workload.seq_len} (the "
            "denoiser reads prompt + generation)",
            hint=f"lower gen_length below {workload.seq_len} or raise seq_len",
        )
    policy.check_length(gen)
    blocks = gen // policy.block
    if isinstance(policy, ConfidenceDecoder):
        if spec.calls_per_token is not None:
            raise ArchgenError(
                f"{where}.calls_per_token: the confidence decoder's calls are fixed "
                f"({-(-policy.block // policy.tokens)} per block of {policy.block})",
                hint="remove calls_per_token",
            )
        calls = blocks * -(-policy.block // policy.tokens)
    else:
        if spec.calls_per_token is None:
            raise ArchgenError(
                f"{where}: the {policy.name} decoder's denoiser calls depend on the trained "
                "model's confidences; give search.workload.calls_per_token",
                hint="measure it with archgen generate --decoder ... (it prints the NFE per "
                f"token), or use decoder: confidence; it lies in [{1 / policy.block:.3g}, 1]",
            )
        if spec.calls_per_token < 1 / policy.block:
            raise ArchgenError(
                f"{where}.calls_per_token {spec.calls_per_token} is below one call per block "
                f"of {policy.block} ({1 / policy.block:.4g}), the fewest a decode can take",
                hint=f"a value in [{1 / policy.block:.4g}, 1]",
            )
        calls = max(blocks, round(gen * spec.calls_per_token))
    options = ",".join(f"{f.name}={getattr(policy, f.name)}" for f in fields(policy))
    return replace(workload, decoder=f"{policy.name}{{{options}}}", gen_length=gen, calls=calls)


def run_search(
    spec_path: str | os.PathLike[str],
    options: SearchOptions,
    *,
    log: Log = print,
    on_trial: Callable[[Any, Any], None] | None = None,
) -> SearchOutcome:
    """Plan, then run (:func:`archgen.search.run.run_search_plan`) in the output folder, which
    is created here and removed again if the search fails before writing anything into it."""
    plan = plan_search(spec_path, options)
    with output_folder(plan.out):
        return run_search_plan(plan, log=log, on_trial=on_trial)
