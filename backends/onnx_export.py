"""Exporting the eager model to ONNX files: the forward graph, and the one exporter every file
goes through (the decode step's is :mod:`archgen.backends.onnx_decode`).

:func:`export_graph`: ``torch.onnx.export(dynamo=True)``, a check that the
dims asked to be dynamic stayed symbolic, optionally dropping outputs, the model's config in
``metadata_props``, ``onnx.checker``, and an atomic write. Running the files is
:mod:`archgen.backends.onnx`'s job.

The forward graph is traced with every block boundary as an output; the deploy file drops
those outputs (:func:`strip_outputs`) but keeps their values under the block names, so
validation re-exposes them (:func:`with_outputs`) on the very graph that ships.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archgen.atomic import write_atomic
from archgen.backends.base import LowerOptions, UnsupportedError, library_versions
from archgen.backends.eager import BoundaryModule
from archgen.backends.onnx_attention import gqa_translation
from archgen.backends.onnx_fold import fold_weight_products
from archgen.backends.onnx_fused import add_norm_translation
from archgen.backends.onnx_scan import scan_translation
from archgen.backends.torch_model import ArchModel
from archgen.errors import ArchgenError
from archgen.ir.graph import PIXELS, Graph
from archgen.ir.ops import Role
from archgen.mixers.kernels import selective_scan
from archgen.mixers.kernels.ort_selective_scan import DOMAIN, OP_TYPE


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The dynamo exporter prints progress lines and warns about torchvision; keep the log for
    error messages instead of the terminal."""
    log = io.StringIO()
    # torchvision notices, and guard errors torch logs before raising the exception we report
    loggers = [logging.getLogger(n) for n in ("torch.onnx._internal.exporter", "torch._guards")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            yield log
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class SpecialisedError(UnsupportedError):
    """The exporter returned a graph with a static size where a dynamic dim was asked for."""


def _capture_strategy(log: str) -> str | None:
    """How the exporter obtained the graph (it retries other strategies when one fails, e.g.
    ``torch.export.export(..., strict=True)``): recorded so a retry is never silent."""
    done = [ln for ln in log.splitlines() if "Obtain model graph" in ln and "✅" in ln]
    found = re.findall(r"with `([^`]*)`", done[-1]) if done else []
    return found[-1] if found else None


def export_graph(
    module: nn.Module,
    args: tuple[Any, ...],
    path: Path,
    *,
    dynamic_shapes: tuple[Any, ...],
    expect_dynamic: dict[str, tuple[int, ...]],
    input_names: list[str],
    output_names: list[str],
    opset: int | None,
    dim_names: dict[tuple[str, int], str] | None = None,
    translations: dict[Any, Any] | None = None,
    keep_outputs: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Export, check and atomically write one ONNX file; returns facts for the meta.

    ``expect_dynamic`` names the input axes that must stay symbolic: when torch.export cannot
    keep a dim dynamic, the ONNX exporter may fall back to a strategy that specialises it to the
    example's size; that graph would reject every other length, so it is an error here.
    ``dim_names`` renames the symbols of ``(input, axis)`` dims that the exporter named itself
    (``Dim.DYNAMIC`` dims come out as ``s27``), in every shape of the graph. ``translations`` is
    the exporter's ``custom_translation_table``. ``keep_outputs``: the outputs the file keeps
    (:func:`strip_outputs`; default all); ``metadata`` goes to ``metadata_props``."""
    import onnx

    start = time.perf_counter()
    with _quiet_exporter() as log:
        try:
            program = torch.onnx.export(
                module,
                args,
                None,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                custom_translation_table=translations,
                verbose=None,  # progress lines go to the captured log (capture strategy)
            )
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            summary = str(exc).strip().splitlines()
            detail = next((ln for ln in summary if "Exception summary" not in ln and ln), "")
            raise UnsupportedError(
                f"torch.onnx export of {path.name} failed: {type(exc).__name__}: {detail[:500]}",
                hint="the exporter's log: " + " | ".join(log.getvalue().splitlines()[-3:]),
            ) from exc
    proto = program.model_proto
    static = [
        f"{inp.name}[{axis}] = {inp.type.tensor_type.shape.dim[axis].dim_value}"
        for inp in proto.graph.input
        for axis in expect_dynamic.get(inp.name, ())
        if not inp.type.tensor_type.shape.dim[axis].dim_param
    ]
    capture = _capture_strategy(log.getvalue())
    if static:
        raise SpecialisedError(
            f"torch.onnx export of {path.name} made dynamic dims static ({', '.join(static)}): "
            f"torch.export could not keep them symbolic and the exporter applied its suggested "
            f"fixes (graph captured with {capture})"
        )
    _rename_dims(proto, dim_names or {})
    fold_weight_products(proto)  # BatchNorm folded in eval mode: weight * scale -> one weight
    if keep_outputs is not None:
        strip_outputs(proto, keep_outputs)
    set_metadata(proto, metadata or {})

    def save_checked(tmp: str) -> None:  # checked from the file: what onnxruntime will read
        onnx.save_model(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)

    write_atomic(path, save_checked)
    return {
        "file": path.name,
        "export_s": time.perf_counter() - start,
        "capture": capture,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(proto.graph.node),
        "op_counts": dict(Counter(n.op_type for n in proto.graph.node).most_common()),
        "fused_attention_scopes": _scopes(proto, "GroupQueryAttention"),
        "fused_scan_scopes": _scopes(proto, "SelectiveScan"),
        "bytes": path.stat().st_size,
    }


def _scopes(proto: Any, op_type: str) -> list[str]:
    """The torch module scopes of the ``op_type`` nodes (which IR nodes were fused)."""
    return sorted(
        p.value
        for n in proto.graph.node
        if n.op_type == op_type
        for p in n.metadata_props
        if p.key == "pkg.torch.onnx.name_scopes"
    )


def _rename_dims(proto: Any, names: dict[tuple[str, int], str]) -> None:
    """Rename symbolic dims, including inside expressions such as ``8*((s27 + 63)//64)``."""
    inputs = {i.name: i for i in proto.graph.input}
    mapping = {}
    for (name, axis), new in names.items():
        old = inputs[name].type.tensor_type.shape.dim[axis].dim_param
        if old and old != new:
            mapping[old] = new
    if not mapping:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, mapping)) + r")\b")
    graph = proto.graph
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub(lambda m: mapping[m.group(1)], dim.dim_param)


def strip_outputs(proto: Any, keep: list[str]) -> None:
    """Drop the graph outputs not in ``keep``, then the nodes and initializers nothing needs.

    A dropped output's value keeps its name (and its type, moved to ``value_info``) wherever a
    node still consumes it: block boundaries are residual streams the logits depend on, so they
    all stay and :func:`with_outputs` can expose them again."""
    import onnx

    graph = proto.graph
    missing = sorted(set(keep) - {o.name for o in graph.output})
    if missing:
        raise ArchgenError(f"cannot keep outputs {missing}: the graph has no such output")
    outputs = [onnx.ValueInfoProto() for _ in graph.output]
    for copy, out in zip(outputs, graph.output, strict=True):
        copy.CopyFrom(out)
    del graph.output[:]
    graph.output.extend(o for o in outputs if o.name in keep)
    graph.value_info.extend(o for o in outputs if o.name not in keep)
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):  # topological order: consumers come after producers
        if node.attribute and any(a.g.node or a.graphs for a in node.attribute):
            live.append(node)  # a node with subgraphs: keep it, and whatever they read
            needed.update(_names_read(node))
        elif any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    if len(live) < len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(live))
    unused = [i for i in graph.initializer if i.name not in needed]
    for init in unused:
        graph.initializer.remove(init)


def _names_read(node: Any) -> set[str]:
    """Every value name ``node`` and its subgraphs (If/Loop bodies) read."""
    names = set(node.input)
    for attr in node.attribute:
        for sub in [attr.g, *attr.graphs]:
            for inner in sub.node:
                names |= _names_read(inner)
    return names


def with_outputs(proto: Any, names: list[str]) -> Any:
    """A copy of ``proto`` that also outputs the values ``names`` (validation's view of a
    deploy graph: its block boundaries, by the names :func:`strip_outputs` kept)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    missing = [n for n in names if n not in produced]
    if missing:
        raise ArchgenError(
            f"the ONNX graph has no values named {', '.join(missing)} to validate against",
            hint="export it again with this archgen version (model.onnx keeps its block values "
            "under the block names)",
        )
    infos = {v.name: v for v in graph.value_info}
    have = {o.name for o in graph.output}
    for name in names:
        if name not in have:
            info = infos.get(name) or onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None
            )
            graph.output.append(info)
    return out


def set_metadata(proto: Any, props: dict[str, str]) -> None:
    """Set (or replace) ``metadata_props`` entries of an ONNX model."""
    current = {p.key: p for p in proto.metadata_props}
    for key, value in props.items():
        if key in current:
            current[key].value = value
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value


def model_metadata(graph: Graph, role: str) -> dict[str, str]:
    """The model's config as ONNX ``metadata_props`` (strings; the spec hash is added by
    ``archgen export``, which knows the spec)."""
    m = graph.model
    return {
        "archgen.version": library_versions().get("archgen", "unknown"),
        "archgen.graph": role,
        "archgen.model": m.name,
        "archgen.task": str(m.task),
        "archgen.vocab_size": str(m.vocab_size),
        "archgen.d_model": str(m.d_model),
        "archgen.num_layers": str(len(graph.blocks())),
        "archgen.max_seq_len": str(m.max_seq_len),
        "archgen.block_outputs": json.dumps(graph.blocks()),
        **diffusion_metadata(graph),
    }


def diffusion_metadata(graph: Graph) -> dict[str, str]:
    """A masked-diffusion LM's decoding facts: the mask token its decoder fills in, and that
    the decoder loop is the host's (``archgen.decoding``), over ``model.onnx``'s logits."""
    if graph.model.mask_token is None:
        return {}
    return {
        "archgen.mask_token": str(graph.model.mask_token),
        "archgen.decoding": "host-side masked-diffusion decoder (archgen generate --decoder, "
        "archgen.decoding.decode) calling model.onnx once per step; no decode_step graph",
    }


def _example_length(module: nn.Module, max_seq: int) -> int:
    """Length of the export example. Never 0/1 in a dynamic dim (torch.export specialises
    those), and at least two chunks of every chunked scan in ``module``: with one chunk, the
    chunk count is 1 in the trace and may be baked into the graph (a 1x1 chunk-decay matrix)."""
    chunks = [
        m.chunk_size for m in module.modules() if isinstance(getattr(m, "chunk_size", None), int)
    ]
    return min(max_seq, max(8, 2 * max(chunks, default=0) + 1))


def traces_with_dynamic_length(
    module: nn.Module, d_model: int, example_len: int | None = None, max_len: int = 1024
) -> str:
    """ "ok", or why ``module`` ([B, L, D] -> [B, L, D]) exported alone through the same ONNX
    exporter (and the same dynamic-dim rules as :func:`export_forward`) does not keep L
    symbolic."""
    if example_len is None:
        example_len = _example_length(module, max_len)
    seq = torch.export.Dim.DYNAMIC(min=1, max=max(max_len, example_len))
    x = torch.randn(2, example_len, d_model, dtype=_param_dtype(module))
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, (x,), None, dynamo=True, dynamic_shapes=({1: seq},), verbose=None
            )
    except Exception as exc:  # any failure means "does not export"
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if program.model_proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param:
        return "ok"
    return "L was made static by the exporter"


def dynamic_length_culprits(model: ArchModel) -> list[str]:
    """Mixer nodes (one per kind) that torch.export cannot trace with a dynamic length, each
    with the first line of its error: what to fix when the whole model specialises."""
    found, seen = [], set()
    for node in model.graph.nodes:
        if node.op.role not in (Role.TOKEN_MIXER, Role.CHANNEL_MIXER) or node.op.kind in seen:
            continue
        seen.add(node.op.kind)
        module = model.module_of(node.name)
        why = traces_with_dynamic_length(module, model.graph.model.d_model)
        if why != "ok":
            found.append(f"{node.name} ({node.op.kind}): {why}")
    return found


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters()), torch.float32)


def export_forward(
    model: ArchModel, path: Path, options: LowerOptions, *, deploy: bool = False
) -> dict[str, Any]:
    """``tokens -> logits, *block outputs`` (what TensorRT builds from), or with ``deploy``
    ``input_ids -> logits`` (Optimum's input name) with the model config in the metadata."""
    graph = model.graph
    inp = "input_ids" if deploy else "tokens"
    assert options.max_seq is not None, "options must be resolved"
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    if graph.model.image is not None:
        return _export_image_forward(model, path, options, batch, deploy=deploy)
    # DYNAMIC rather than a named Dim: chunked scans pad L to whole chunks, and torch.export
    # cannot prove facts such as ceil(L / Q) * Q >= L that hold for every L; with a named Dim it
    # then refuses, with DYNAMIC it keeps L symbolic and records them as guards (checked by the
    # numerics validation at the profile's min, typical and max lengths).
    seq = torch.export.Dim.DYNAMIC(min=1, max=options.max_seq)
    example_len = _example_length(model, options.max_seq)
    example = torch.randint(0, graph.model.vocab_size, (2, example_len))
    dynamic = options.max_seq >= 2  # a profile of length 1 only: nothing to make dynamic
    form = mamba_scan_form(graph, options)
    metadata = model_metadata(graph, "forward") if deploy else None
    if metadata is not None and form is not None:
        metadata[SCAN_FORM_KEY] = form
    translations = {
        **(gqa_translation() if options.fused_attention else {}),
        **(scan_translation() if options.fused_scan else {}),
        # fused nodes (fuse_kernels): onnxruntime's contrib ops, or standard ops (--portable)
        **add_norm_translation(contrib_ops=options.fused_attention),
    }
    scan_as_op = (
        selective_scan.exported_as_custom_op() if options.fused_scan else contextlib.nullcontext()
    )
    try:
        with scan_as_op:
            facts = export_graph(
                BoundaryModule(model).eval(),
                (example,),
                path,
                dynamic_shapes=({0: batch, 1: seq} if dynamic else {0: batch},),
                expect_dynamic={inp: (0, 1) if dynamic else (0,)},
                dim_names={(inp, 0): "batch", (inp, 1): "seq"} if dynamic else None,
                input_names=[inp],
                output_names=[*graph.outputs, *graph.blocks()],
                opset=options.opset,
                translations=translations or None,
                keep_outputs=list(graph.outputs) if deploy else None,
                metadata=metadata,
            )
    except SpecialisedError as exc:
        culprits = dynamic_length_culprits(model)
        raise SpecialisedError(
            exc.message + (": " + "; ".join(culprits) if culprits else ""),
            hint="these mixers' forward must trace with a symbolic sequence length "
            "(torch.export.export with dynamic_shapes) to export for every length",
        ) from None
    _check_scan_form(path, form, facts)
    return {**facts, "mamba_scan": form}


def _check_scan_form(path: Path, form: str | None, facts: dict[str, Any]) -> None:
    """The metadata must not lie: the scans are in the graph in the form it records."""
    fused = facts["op_counts"].get(OP_TYPE, 0)
    if form is not None and (form == FUSED_SCAN) != (fused > 0):
        raise ArchgenError(
            f"{path.name}: expected the Mamba scans as {form}, the exported graph has {fused} "
            f"{OP_TYPE} node(s)"
        )


# How model.onnx spells Mamba-1's selective scan, recorded in its metadata under SCAN_FORM_KEY:
# one onnxruntime custom-op node per scan (needs archgen's library: backends/onnx_scan.py), or
# the standard-ops ONNX Scan (--portable, TensorRT).
SCAN_FORM_KEY = "archgen.mamba_scan"
FUSED_SCAN = f"{DOMAIN}.{OP_TYPE}"
PORTABLE_SCAN = "onnx.Scan"


# node kinds whose modules run Mamba-1's selective scan (S6): Mamba, and ViM2's two mixers
S6_KINDS = frozenset({"mamba", "selective_token", "selective_channel"})


def mamba_scan_form(graph: Graph, options: LowerOptions) -> str | None:
    """The scan form an export of ``graph`` with ``options`` has; None without S6 nodes."""
    if not any(node.op.kind in S6_KINDS for node in graph.nodes):
        return None
    return FUSED_SCAN if options.fused_scan else PORTABLE_SCAN


def _export_image_forward(
    model: ArchModel, path: Path, options: LowerOptions, batch: Any, *, deploy: bool
) -> dict[str, Any]:
    """An image classifier: ``pixels [batch, S, S, C] -> logits``; only the batch is dynamic
    (the image size is fixed: RaftMLP's weights, for one, are tied to the grid)."""
    graph = model.graph
    image = graph.model.image
    assert image is not None
    shape = (2, image.image_size, image.image_size, image.in_channels)
    example = torch.randn(shape, dtype=_param_dtype(model))
    # ViM2's S6 scans as one onnxruntime node each, as an LM's Mamba scans (an ONNX Scan of
    # small chunk ops ran ViM2-T 7-8x slower than eager: benchmarks/results/vision_latency_cpu.md)
    form = mamba_scan_form(graph, options)
    metadata = model_metadata(graph, "forward") if deploy else None
    if metadata is not None and form is not None:
        metadata[SCAN_FORM_KEY] = form
    translations = {
        **(gqa_translation() if options.fused_attention else {}),
        **(scan_translation() if options.fused_scan else {}),
    }
    scan_as_op = (
        selective_scan.exported_as_custom_op() if options.fused_scan else contextlib.nullcontext()
    )
    with scan_as_op:
        facts = export_graph(
            BoundaryModule(model).eval(),
            (example,),
            path,
            dynamic_shapes=({0: batch},),
            expect_dynamic={PIXELS: (0,)},
            dim_names={(PIXELS, 0): "batch"},
            input_names=[PIXELS],
            output_names=[*graph.outputs, *graph.blocks()],
            opset=options.opset,
            translations=translations or None,
            keep_outputs=list(graph.outputs) if deploy else None,
            metadata=metadata,
        )
    _check_scan_form(path, form, facts)
    return {**facts, "mamba_scan": form}
