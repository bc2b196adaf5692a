"""``archgen convert``: rewrite a trained (or built) model's graph and carry its weights over.

The folder's ``spec.yaml`` gets the new passes appended to ``model.passes``; the rewritten
model is built, and every tensor of the original whose name and shape survive is copied (state
dict names are node names, so a rewrite that keeps a node's name and shapes -- compress_segments'
attention -> checkpoint attention -- keeps its weights). A mixer the rewrite inserts (its
weight path is new) starts with a zero output projection, so the converted model first
computes what the original did wherever the rewrite itself is exact (``compress_segments{s=1}``);
its norms keep their standard initialisation. Nothing is lost silently: a tensor whose shape
changed (initialised afresh) and one with no place in the new model are listed in the result and
in ``manifest.json``.

>>> from archgen.convert import convert
>>> r = convert("runs/tiny", "compress_segments{s=16,local=swa}", "out/scout")  # doctest: +SKIP
>>> len(r.weights.carried), len(r.weights.new), len(r.weights.dropped)  # doctest: +SKIP
(38, 20, 0)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from archgen import api
from archgen.errors import ArchgenError
from archgen.ir.graph import Graph
from archgen.ir.ops import Role
from archgen.spec.expand import resolve_spec, spec_to_data
from archgen.spec.loader import load_spec
from archgen.staging import OutputFolder

if TYPE_CHECKING:
    import torch

    from archgen.backends.torch_model import ArchModel

MIXER_ROLES = (Role.TOKEN_MIXER, Role.CHANNEL_MIXER)
FILES = ["weights.safetensors", "spec.yaml"]


@dataclass(frozen=True)
class Carried:
    """Which tensors of the new model came from where (state-dict names)."""

    carried: list[str]  # copied from the original: same name, same shape
    new: list[str]  # no tensor of that name in the original: initialised
    reshaped: list[str]  # the original has the name with another shape: initialised afresh
    dropped: list[str]  # the original's tensors with no place in the new model
    zeroed: list[str]  # new mixers (node names) started at zero output


@dataclass(frozen=True)
class ConvertResult:
    out_dir: Path
    passes: str  # the folder's whole pipeline (model.passes)
    weights: Carried
    params: int
    spec_hash: str


def carry_weights(source: torch.nn.Module, model: torch.nn.Module) -> Carried:
    """Copy each tensor of ``source`` into ``model``'s same-named, same-shaped one
    (:func:`archgen.train.distill.copy_matching`) and sort out the rest."""
    from archgen.train.distill import copy_matching

    carried = copy_matching(source, model)
    theirs, ours, copied = source.state_dict(), model.state_dict(), set(carried)
    new = [name for name in ours if name not in theirs]
    reshaped = [name for name in ours if name in theirs and name not in copied]
    dropped = [name for name in theirs if name not in ours]
    return Carried(carried, new, reshaped, dropped, [])


def zero_new_mixers(model: ArchModel, original: Graph) -> list[str]:
    """Zero the output projection of every mixer node whose weights ``original`` lacks (by
    weight path: a node a rewrite renamed keeps its weights and is not new); return their names.
    A new mixer without an output projection cannot start at zero: refused."""
    import torch

    known = {n.weight_path for n in original.nodes}
    zeroed = []
    for node in model.graph.nodes:
        if node.op.role not in MIXER_ROLES or node.weight_path in known:
            continue
        proj = model.module_of(node.name).output_projection()
        if proj is None:
            raise ArchgenError(
                f"the new mixer {node.name} ({node.op.kind}) has no output projection, so it "
                "cannot start at zero output and the converted model would not compute what the "
                "original did",
                hint="insert a mixer kind with an output projection (swa, mamba, mamba2)",
            )
        with torch.no_grad():
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()
        zeroed.append(node.name)
    return zeroed


def _model_folder(folder: Path) -> None:
    if not (folder / "spec.yaml").is_file() or not (folder / "weights.safetensors").is_file():
        raise ArchgenError(
            f"{folder} is not a model folder (needs spec.yaml and weights.safetensors)",
            hint="give a folder written by archgen build, train, distill or convert",
        )


def convert(
    folder: str | os.PathLike[str],
    passes: str,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    force: bool = False,
) -> ConvertResult:
    """Apply ``passes`` to the model in ``folder`` (``spec.yaml`` + ``weights.safetensors``) and
    write the converted model to ``out_dir``: a run folder (weights, ``spec.yaml`` with the
    whole pipeline in ``model.passes``, ``manifest.json``) that ``--teacher``, ``--weights``,
    ``distill --init`` and ``export`` accept. New tensors are drawn from ``seed``.

    ``out_dir`` must not exist or be empty; ``force`` lets a previous convert output there be
    replaced, nothing else (:class:`~archgen.staging.OutputFolder`)."""
    from archgen.backends.torch_model import build_model
    from archgen.backends.weights import load_weights, save_weights

    source_dir = Path(folder)
    target = OutputFolder(Path(out_dir), "convert", force=force)
    target.check()
    _model_folder(source_dir)
    spec = load_spec(source_dir / "spec.yaml")
    original = build_model(api.compile_spec(spec))
    load_weights(original, source_dir / "weights.safetensors")  # strict: the folder agrees
    converted_spec = api.with_passes(spec, passes)
    graph = api.compile_spec(converted_spec)
    model = build_model(graph, seed=seed)
    carried = carry_weights(original, model)
    report = replace(carried, zeroed=zero_new_mixers(model, original.graph))
    digest = api.spec_hash(converted_spec)
    params = sum(p.numel() for p in model.parameters())
    with target.staging() as staging:
        save_weights(model, staging / "weights.safetensors", {"spec_hash": digest})
        doc = spec_to_data(resolve_spec(converted_spec))
        doc.pop("search", None)  # data: and train: stay: a distillation's defaults
        (staging / "spec.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        manifest = _manifest(source_dir, spec, passes, converted_spec, graph, params, report)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    assert converted_spec.model.passes is not None  # with_passes recorded them
    return ConvertResult(target.path, converted_spec.model.passes, report, params, digest)


def _manifest(
    source_dir: Path,
    spec: Any,
    passes: str,
    converted: Any,
    graph: Graph,
    params: int,
    report: Carried,
) -> dict[str, Any]:
    return {
        "command": "convert",
        **api._library_versions(),
        "converted_from": str(source_dir),
        "source_spec_hash": api.spec_hash(spec),
        "passes": passes,
        "model_passes": converted.model.passes,
        "spec_hash": api.spec_hash(converted),
        "model": graph.model.name,
        "params": params,
        "weights": {
            "carried": len(report.carried),
            "new": len(report.new),
            "reshaped": len(report.reshaped),
            "dropped": len(report.dropped),
            "zero_output_mixers": report.zeroed,
            "new_tensors": report.new,
            "reshaped_tensors": report.reshaped,
            "dropped_tensors": report.dropped,
        },
        "files": FILES,
    }
