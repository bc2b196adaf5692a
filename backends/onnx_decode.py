"""Exporting the one-token decode step of a causal LM to ONNX: ``decode_step.onnx``.

The step takes ``input_ids``, per-sequence ``position_ids`` and an ``attention_mask`` (so
left-padded batches decode) and every mixer's state under the names onnxruntime / Optimum
users expect (``past_key_values.N.key|value`` for growing KV caches, ``conv_state.N`` /
``ssm_state.N`` for recurrent states), and returns the logits and the next states. The export
itself goes through :mod:`archgen.backends.onnx_export`'s one exporter.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archgen.backends.base import LowerOptions
from archgen.backends.onnx_export import export_graph, model_metadata
from archgen.backends.onnx_fused import add_norm_translation
from archgen.backends.torch_model import ArchModel
from archgen.ir.graph import Graph
from archgen.ir.ops import Trait


def decode_support(graph: Graph) -> tuple[bool, str]:
    """Whether every node's ``step`` exports as one graph (ops' ``Trait.DECODE_EXPORTABLE``;
    only token mixers can lack it), and if not, which does not and why."""
    if graph.model.image is not None:
        return False, "an image classifier has no token-by-token decode step"
    if graph.model.mask_token is not None:
        return False, (
            f"a {graph.model.task} has no token-by-token decode step (bidirectional mixers); "
            "its decoder loop runs host-side over model.onnx"
        )
    for node in graph.nodes:
        if not node.op.has(Trait.DECODABLE):
            return False, f"{node.name} ({node.op.kind}) has no decode step"
        if not node.op.has(Trait.DECODE_EXPORTABLE):
            return False, f"{node.name} ({node.op.kind}) has no traceable decode step"
    return True, "ok"


# Decode-state tensors' graph input names per mixer kind ({n}: the layer index); the outputs
# are ``present.N.key|value`` for KV caches (Optimum's names) and ``present_<input>`` otherwise.
# Only a cache that grows by one slot per token is called ``past_key_values``: a generic loop
# starts those empty, which would be wrong for the fixed-size caches and recurrent states.
STATE_NAMES: dict[str, tuple[str, ...]] = {
    "attention": ("past_key_values.{n}.key", "past_key_values.{n}.value"),
    "swa": ("window_cache.{n}.key", "window_cache.{n}.value"),
    "checkpoint_attention": ("checkpoint_cache.{n}.key", "checkpoint_cache.{n}.value"),
    "mamba": ("conv_state.{n}", "ssm_state.{n}"),
    "mamba2": ("conv_state.{n}", "ssm_state.{n}"),
}
KV_PREFIX = "past_key_values."

PADDING = (
    "left padding (any layout works): attention_mask[b, t] = 0 marks step t of sequence b as "
    "padding; a padded step leaves recurrent states and fixed caches unchanged and its KV "
    "cache slot is masked out by later steps; position_ids count each sequence's real tokens "
    "(0-based; ignored at padded steps)"
)


def _present(name: str) -> str:
    if name.startswith(KV_PREFIX):
        return "present." + name.removeprefix(KV_PREFIX)
    return "present_" + name


@dataclass(frozen=True)
class StateTensor:
    """One decode-state tensor: the node it belongs to, its graph input and output names, its
    shape in the export example and the dims that grow by one per token (``past``)."""

    node: str
    kind: str
    input: str
    output: str
    shape: tuple[int, ...]
    growing: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        shape: list[int | str] = ["batch", *self.shape[1:]]
        for d in self.growing:
            shape[d] = "past"
        return {"input": self.input, "output": self.output, "node": self.node,
                "kind": self.kind, "shape": shape}  # fmt: skip


@dataclass(frozen=True)
class StateLayout:
    """How the decode state dict flattens to graph inputs: (node, tensors) in graph order, and
    each tensor's names and growing dims."""

    entries: tuple[tuple[str, int], ...]
    tensors: tuple[StateTensor, ...]

    @property
    def growing(self) -> tuple[tuple[int, ...], ...]:
        return tuple(t.growing for t in self.tensors)

    def input_names(self) -> list[str]:
        return [t.input for t in self.tensors]

    def output_names(self) -> list[str]:
        return [t.output for t in self.tensors]

    def flatten(self, state: dict[str, tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
        return [t for node, _ in self.entries for t in state[node]]

    def unflatten(self, flat: list[Any]) -> dict[str, tuple[Any, ...]]:
        out, i = {}, 0
        for node, n in self.entries:
            out[node] = tuple(flat[i : i + n])
            i += n
        return out


def _state_names(graph: Graph, entries: tuple[tuple[str, int], ...]) -> list[str]:
    """Input names of the state tensors: by mixer kind and layer index (``layers.3.*`` -> 3),
    else (an unknown kind, a name without a layer index, a clash) ``state.<node>.<i>``."""
    names = []
    for ordinal, (node, n) in enumerate(entries):
        kind = graph.node(node).op.kind
        found = re.match(r"layers\.(\d+)\.", node)
        patterns = STATE_NAMES.get(kind, ())
        if len(patterns) == n:
            index = int(found.group(1)) if found else ordinal
            names += [p.format(n=index) for p in patterns]
        else:
            names += [f"state.{node}.{i}" for i in range(n)]
    if len(set(names)) < len(names):
        return [f"state.{node}.{i}" for node, n in entries for i in range(n)]
    return names


class DecodeStepModule(nn.Module):
    """``(input_ids [B, 1], position_ids [B, 1], attention_mask [B, past + 1], *state)
    -> (logits [B, 1, V], *new_state)``: one token per sequence, Optimum's input names."""

    def __init__(self, model: ArchModel, layout: StateLayout) -> None:
        super().__init__()
        self.model, self.layout = model, layout

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *flat: torch.Tensor,
    ) -> Any:
        state = self.layout.unflatten(list(flat))
        mask = attention_mask.to(torch.bool)
        logits, new = self.model.step(input_ids[:, 0], state, position_ids[:, 0], mask)
        return (logits[:, None], *self.layout.flatten(new))


def probe_state(model: ArchModel, batch: int) -> tuple[StateLayout, dict[str, tuple]]:
    """Run two eager steps to learn the state layout and which dims grow; returns the layout and
    the state after two steps (the export example: growing dims of size 2, not 0/1)."""
    state0 = model.init_state(batch)
    tokens = torch.zeros(batch, 2, dtype=torch.long)
    state = state0
    for t in range(2):
        _, state = model.step(tokens[:, t], state, torch.tensor(t))
    entries = tuple((node, len(s)) for node, s in state0.items())
    names = _state_names(model.graph, entries)
    tensors = []
    for node, _ in entries:
        for t0, t2 in zip(state0[node], state[node], strict=True):
            growing = tuple(
                d for d, (a, b) in enumerate(zip(t0.shape, t2.shape, strict=True)) if a != b
            )
            name = names[len(tensors)]
            kind = model.graph.node(node).op.kind
            tensors.append(StateTensor(node, kind, name, _present(name), tuple(t2.shape), growing))
    return StateLayout(entries, tuple(tensors)), state


def export_decode(model: ArchModel, path: Path, options: LowerOptions) -> dict[str, Any]:
    assert options.max_seq is not None
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    past = torch.export.Dim("past", min=0, max=options.max_seq)
    with torch.no_grad():
        layout, state = probe_state(model, 2)
    flat = layout.flatten(state)
    # The mask covers the KV cache and the current token; without a growing cache only its
    # last column (the current token) is read, and its length is free.
    grows = any(layout.growing)
    total = past + 1 if grows else torch.export.Dim("mask_len", min=1, max=options.max_seq + 1)
    shapes = tuple({0: batch, **{d: past for d in dims}} for dims in layout.growing)
    growing = dict(zip(layout.input_names(), layout.growing, strict=True))
    metadata = {
        **model_metadata(model.graph, "decode_step"),
        "archgen.decode.state": json.dumps([t.to_json() for t in layout.tensors]),
        "archgen.decode.padding": PADDING,
    }
    example_past = 2  # probe_state ran two steps
    facts = export_graph(
        DecodeStepModule(model, layout).eval(),
        (
            torch.zeros(2, 1, dtype=torch.long),
            torch.full((2, 1), example_past, dtype=torch.long),
            torch.ones(2, example_past + 1, dtype=torch.long),
            *flat,
        ),
        path,
        dynamic_shapes=({0: batch}, {0: batch}, {0: batch, 1: total}, shapes),
        expect_dynamic={
            "input_ids": (0,),
            "position_ids": (0,),
            "attention_mask": (0, 1),
            **{n: (0, *dims) for n, dims in growing.items()},
        },
        input_names=["input_ids", "position_ids", "attention_mask", *layout.input_names()],
        output_names=["logits", *layout.output_names()],
        opset=options.opset,
        translations=add_norm_translation(contrib_ops=options.fused_attention),
        metadata=metadata,
    )
    return {**facts, "dynamic_state_dims": growing}
