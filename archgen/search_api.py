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
from archgen.search.run import SearchOutcome, SearchPlan, run_search_plan
from archgen.spec.expand import spec_to_data
from archgen.spec.loader import load_spec
from archgen.spec.models import ArchSpec
from archgen.spec.search_space import search_proposals
from archgen.staging import output_folder, probe_writable

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
    fidelity = options.quality if options.quality is not None else s.quality.fidelity
    if fidelity not in FIDELITIES:
        raise ArchgenError(
            f"unknown quality fidelity {fidelity!r}", hint=f"one of {', '.join(FIDELITIES)}"
        )
    _check_export(options.export)
    graph = compile_spec(spec)
    if graph.model.mask_token is not None:
        # the quality proxies and the teacher are next-token models
        raise ArchgenError(
            f"search does not support {graph.model.task} models yet",
            hint="archgen train / generate --decoder work on them",
        )
    proposals, _ = search_proposals(spec)
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
    )
    seq_len = s.workload.seq_len or spec.model.max_seq_len
    if seq_len > spec.model.max_seq_len:
        raise ArchgenError(
            f"search.workload.seq_len {seq_len} exceeds model.max_seq_len {spec.model.max_seq_len}"
        )
    trials = min(options.trials or s.trials, 24) if options.quick else options.trials or s.trials
    w = s.workload
    workload = Workload(
        batch=w.batch, seq_len=seq_len, phase=w.phase, dtype=w.dtype, backend=w.backend,
        device=w.device, threads=w.threads, repeats=5 if options.quick else w.repeats,
    )  # fmt: skip
    if options.out is not None:
        out = Path(options.out)
    else:
        from archgen.training import default_folder

        out = default_folder(spec.model.name, prefix="search-")
    if out.exists() and not out.is_dir():
        raise ArchgenError(f"{out} exists and is not a folder", hint="choose another folder (-o)")
    probe_writable(out, inside=True)  # created by run_search, and removed if the search fails
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
