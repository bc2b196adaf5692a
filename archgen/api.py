"""The typed Python API; every CLI command is a few lines over a function here.

>>> from archgen import api
>>> graph = api.compile_spec("examples/transformer.yaml")  # doctest: +SKIP
>>> api.check("examples/transformer.yaml", seq_len=1024).total.params  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archgen.errors import ArchgenError
from archgen.ir.cost import NodeCost, node_cost
from archgen.ir.graph import Graph
from archgen.ir.ops import Role
from archgen.passes import Pass, full_pipeline, parse_pipeline, run_pipeline
from archgen.passes.base import DumpHook, NoteHook
from archgen.spec.expand import graph_from_spec, resolve_spec, spec_to_data
from archgen.spec.loader import load_spec
from archgen.spec.models import ArchSpec

__version__ = "0.1.0"

SpecLike = str | os.PathLike[str] | ArchSpec


def as_spec(spec: SpecLike) -> ArchSpec:
    return spec if isinstance(spec, ArchSpec) else load_spec(spec)


def spec_hash(spec: ArchSpec) -> str:
    """A stable hash of the resolved ``model:`` section: weights built from specs with equal
    hashes are interchangeable, whatever their ``data:``, ``train:`` or ``search:`` sections."""
    canonical = json.dumps(spec_to_data(resolve_spec(spec))["model"], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


PassesLike = str | Sequence[Pass] | None


def as_passes(passes: PassesLike) -> list[Pass]:
    """A pipeline string (``"compress_segments{s=16,local=swa}"``) or pass list -> passes."""
    if passes is None:
        return []
    return parse_pipeline(passes) if isinstance(passes, str) else list(passes)


def with_passes(spec: SpecLike, passes: str | None) -> ArchSpec:
    """``spec`` with the pipeline ``passes`` appended to its ``model.passes``, so that what is
    written from it (``spec.yaml``, the spec hash) rebuilds the rewritten graph. The text is
    checked here (:class:`~archgen.passes.PassOptionError`) and recorded as written."""
    spec = as_spec(spec)
    if passes is None:
        return spec
    parse_pipeline(passes)
    joined = ",".join(p for p in (spec.model.passes, passes.strip()) if p)
    model = spec.model.model_copy(update={"passes": joined})
    return spec.model_copy(update={"model": model})


def compile_spec(
    spec: SpecLike,
    *,
    seq_len: int | None = None,
    passes: PassesLike = None,
    dump_after: Sequence[str] = (),
    on_dump: DumpHook | None = None,
    on_note: NoteHook | None = None,
) -> Graph:
    """Spec -> IR graph: verified, typed, rewritten by the spec's ``model.passes`` and then by
    ``passes`` (if any), verified and typed again, and costed at ``seq_len``
    (:func:`archgen.passes.full_pipeline`)."""
    spec = as_spec(spec)
    graph = graph_from_spec(spec)
    pipeline = full_pipeline([*as_passes(spec.model.passes), *as_passes(passes)], seq_len)
    return run_pipeline(graph, pipeline, dump_after=dump_after, on_dump=on_dump, on_note=on_note)


@dataclass(frozen=True)
class LayerRow:
    name: str
    token_mixer: str
    channel_mixer: str
    cost: NodeCost


@dataclass(frozen=True)
class CheckReport:
    spec: ArchSpec
    graph: Graph
    seq_len: int
    rows: list[LayerRow]
    total: NodeCost


def check(
    spec: SpecLike,
    *,
    seq_len: int | None = None,
    passes: PassesLike = None,
    on_note: NoteHook | None = None,
) -> CheckReport:
    """Validate a spec and cost it per layer at ``seq_len`` (default: the model's max_seq_len),
    after the rewrites in ``passes`` if any."""
    spec = as_spec(spec)
    if seq_len is not None and seq_len > spec.model.max_seq_len:
        raise ArchgenError(
            f"--seq-len {seq_len} exceeds the model's max_seq_len {spec.model.max_seq_len}",
            hint="raise model.max_seq_len in the spec to cost longer sequences",
        )
    graph = compile_spec(spec, seq_len=seq_len, passes=passes, on_note=on_note)
    seq_len = seq_len or graph.model.max_seq_len
    rows: dict[str, dict[str, Any]] = {}
    for node in graph.nodes:
        key = node.block or node.name
        row = rows.setdefault(key, {"token": "", "channel": "", "cost": None})
        if node.op.role is Role.TOKEN_MIXER:  # a rewritten block may hold two (swa + ...)
            row["token"] = "+".join(filter(None, (row["token"], node.op.kind)))
        elif node.op.role is Role.CHANNEL_MIXER:
            row["channel"] = "+".join(filter(None, (row["channel"], node.op.kind)))
        elif node.block is None:
            row["token"] = node.op.kind
        cost = node_cost(node, seq_len)
        row["cost"] = cost if row["cost"] is None else row["cost"] + cost
    out = [LayerRow(k, r["token"], r["channel"], r["cost"]) for k, r in rows.items()]
    total = out[0].cost
    for r in out[1:]:
        total = total + r.cost
    return CheckReport(spec, graph, seq_len, out, total)


def resolved_yaml(spec: SpecLike) -> str:
    import yaml

    return yaml.safe_dump(spec_to_data(resolve_spec(as_spec(spec))), sort_keys=False)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec format (for editors: yaml-language-server and friends)."""
    schema = ArchSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "archgen spec"
    return schema


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    params: int
    spec_hash: str


def _library_versions() -> dict[str, str]:
    import torch

    return {"archgen": __version__, "torch": torch.__version__}


def build(
    spec: SpecLike,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    passes: str | None = None,
    force: bool = False,
) -> BuildResult:
    """Instantiate the eager model and write ``weights.safetensors``, ``spec.yaml`` (resolved)
    and ``manifest.json`` to ``out_dir``. The folder appears complete or not at all.
    ``passes`` (a pipeline string) rewrites the graph first and is recorded in ``spec.yaml``'s
    ``model.passes``, after the spec's own.

    ``out_dir`` must not exist or be empty; ``force`` lets a previous build output there be
    replaced. Anything else there (a training run, a user's files) is refused before any work
    (:class:`~archgen.errors.ArchgenError`), ``force`` or not."""
    from archgen.backends.torch_model import build_model
    from archgen.backends.weights import save_weights
    from archgen.staging import OutputFolder

    target = OutputFolder(Path(out_dir), "build", force=force)
    target.check()
    spec = with_passes(spec, passes)
    graph = compile_spec(spec)
    model = build_model(graph, seed=seed)
    digest = spec_hash(spec)
    params = sum(p.numel() for p in model.parameters())
    with target.staging() as staging:
        save_weights(model, staging / "weights.safetensors", {"spec_hash": digest})
        (staging / "spec.yaml").write_text(resolved_yaml(spec))
        manifest = {
            "command": "build",
            **_library_versions(),
            "spec_hash": digest,
            "model": graph.model.name,
            "params": params,
            "seed": seed,
            "files": ["weights.safetensors", "spec.yaml"],
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return BuildResult(target.path, params, digest)
