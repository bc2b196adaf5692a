"""Exporting the eager model to ONNX files: the forward graph and the decode-step graph.

Every file goes through :func:`_export`: ``torch.onnx.export(dynamo=True)``, a check that the
dims asked to be dynamic stayed symbolic, ``onnx.checker``, and an atomic write. Running the
files is :mod:`archgen.backends.onnx`'s job.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archgen.backends.base import LowerOptions, UnsupportedError
from archgen.backends.eager import BoundaryModule
from archgen.backends.onnx_attention import gqa_translation
from archgen.backends.torch_model import ArchModel
from archgen.ir.graph import Graph
from archgen.ir.ops import Role, Trait


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


def _export(
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
) -> dict[str, Any]:
    """Export, check and atomically write one ONNX file; returns facts for the meta.

    ``expect_dynamic`` names the input axes that must stay symbolic: when torch.export cannot
    keep a dim dynamic, the ONNX exporter may fall back to a strategy that specialises it to the
    example's size; that graph would reject every other length, so it is an error here.
    ``dim_names`` renames the symbols of ``(input, axis)`` dims that the exporter named itself
    (``Dim.DYNAMIC`` dims come out as ``s27``), in every shape of the graph. ``translations`` is
    the exporter's ``custom_translation_table``."""
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
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {
        "file": path.name,
        "export_s": time.perf_counter() - start,
        "capture": capture,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(proto.graph.node),
        "op_counts": dict(Counter(n.op_type for n in proto.graph.node).most_common()),
        "fused_attention_scopes": sorted(
            p.value
            for n in proto.graph.node
            if n.op_type == "GroupQueryAttention"
            for p in n.metadata_props
            if p.key == "pkg.torch.onnx.name_scopes"
        ),
        "bytes": path.stat().st_size,
    }


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


def export_forward(model: ArchModel, path: Path, options: LowerOptions) -> dict[str, Any]:
    graph = model.graph
    assert options.max_seq is not None, "options must be resolved"
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    # DYNAMIC rather than a named Dim: chunked scans pad L to whole chunks, and torch.export
    # cannot prove facts such as ceil(L / Q) * Q >= L that hold for every L; with a named Dim it
    # then refuses, with DYNAMIC it keeps L symbolic and records them as guards (checked by the
    # numerics validation at the profile's min, typical and max lengths).
    seq = torch.export.Dim.DYNAMIC(min=1, max=options.max_seq)
    example_len = _example_length(model, options.max_seq)
    example = torch.randint(0, graph.model.vocab_size, (2, example_len))
    dynamic = options.max_seq >= 2  # a profile of length 1 only: nothing to make dynamic
    try:
        return _export(
            BoundaryModule(model).eval(),
            (example,),
            path,
            dynamic_shapes=({0: batch, 1: seq} if dynamic else {0: batch},),
            expect_dynamic={"tokens": (0, 1) if dynamic else (0,)},
            dim_names={("tokens", 0): "batch", ("tokens", 1): "seq"} if dynamic else None,
            input_names=["tokens"],
            output_names=[*graph.outputs, *graph.blocks()],
            opset=options.opset,
            translations=gqa_translation() if options.fused_attention else None,
        )
    except SpecialisedError as exc:
        culprits = dynamic_length_culprits(model)
        raise SpecialisedError(
            exc.message + (": " + "; ".join(culprits) if culprits else ""),
            hint="these mixers' forward must trace with a symbolic sequence length "
            "(torch.export.export with dynamic_shapes) to export for every length",
        ) from None


def decode_support(graph: Graph) -> tuple[bool, str]:
    """Whether every node's ``step`` exports as one graph (ops' ``Trait.DECODE_EXPORTABLE``;
    only token mixers can lack it), and if not, which does not and why."""
    for node in graph.nodes:
        if not node.op.has(Trait.DECODABLE):
            return False, f"{node.name} ({node.op.kind}) has no decode step"
        if not node.op.has(Trait.DECODE_EXPORTABLE):
            return False, f"{node.name} ({node.op.kind}) has no traceable decode step"
    return True, "ok"


@dataclass(frozen=True)
class StateLayout:
    """How the decode state dict flattens to graph inputs: (node, tensors) in graph order, and
    the dims of each tensor that grow by one per token."""

    entries: tuple[tuple[str, int], ...]
    growing: tuple[tuple[int, ...], ...]

    def names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{node}.{i}" for node, n in self.entries for i in range(n)]

    def flatten(self, state: dict[str, tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        return [t for node, _ in self.entries for t in state[node]]

    def unflatten(self, flat: list[Any]) -> dict[str, tuple[Any, ...]]:
        out, i = {}, 0
        for node, n in self.entries:
            out[node] = tuple(flat[i : i + n])
            i += n
        return out


class DecodeStepModule(nn.Module):
    """``(token [B], pos [], *state) -> (logits [B, V], *new_state)`` over ArchModel.step."""

    def __init__(self, model: ArchModel, layout: StateLayout) -> None:
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, token: torch.Tensor, pos: torch.Tensor, *flat: torch.Tensor) -> Any:
        logits, new = self.model.step(token, self.layout.unflatten(list(flat)), pos)
        return (logits, *self.layout.flatten(new))


def probe_state(model: ArchModel, batch: int) -> tuple[StateLayout, dict[str, tuple]]:
    """Run two eager steps to learn the state layout and which dims grow; returns the layout and
    the state after two steps (the export example: growing dims of size 2, not 0/1)."""
    state0 = model.init_state(batch)
    tokens = torch.zeros(batch, 2, dtype=torch.long)
    state = state0
    for t in range(2):
        _, state = model.step(tokens[:, t], state, torch.tensor(t))
    entries = tuple((node, len(s)) for node, s in state0.items())
    growing = tuple(
        tuple(d for d, (a, b) in enumerate(zip(t0.shape, t2.shape, strict=True)) if a != b)
        for node, _ in entries
        for t0, t2 in zip(state0[node], state[node], strict=True)
    )
    return StateLayout(entries, growing), state


def export_decode(model: ArchModel, path: Path, options: LowerOptions) -> dict[str, Any]:
    assert options.max_seq is not None
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    past = torch.export.Dim("past", min=0, max=options.max_seq)
    with torch.no_grad():
        layout, state = probe_state(model, 2)
    flat = layout.flatten(state)
    shapes = tuple({0: batch, **{d: past for d in dims}} for dims in layout.growing)
    growing = dict(zip(layout.names("state"), layout.growing, strict=True))
    facts = _export(
        DecodeStepModule(model, layout).eval(),
        (torch.zeros(2, dtype=torch.long), torch.tensor(2), *flat),
        path,
        dynamic_shapes=({0: batch}, None, shapes),
        expect_dynamic={"token": (0,), **{n: (0, *dims) for n, dims in growing.items()}},
        input_names=["token", "pos", *layout.names("state")],
        output_names=["logits", *layout.names("new_state")],
        opset=options.opset,
    )
    return {**facts, "dynamic_state_dims": growing}
