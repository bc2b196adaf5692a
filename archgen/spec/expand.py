"""Spec <-> IR.

``graph_from_spec`` expands repeat groups and lays out every block as two pre-norm residual
branches. ``spec_from_graph`` reads a graph back into the canonical spec (repeats expanded,
every default explicit); the round trip spec -> IR -> spec is the identity on canonical specs.
"""

from __future__ import annotations

from typing import Any

from archgen.ir.graph import TOKENS, Graph, GraphBuilder, ModelInfo
from archgen.ir.ops import Embedding, LayerNorm, LMHead, Op, ResidualAdd, RMSNorm, Role
from archgen.spec.loader import build_op
from archgen.spec.models import (
    CHANNEL_MIXER_SPECS,
    TOKEN_MIXER_SPECS,
    ArchSpec,
    LayerSpec,
    ModelSpec,
    RepeatSpec,
    expand_layers,
)

NORMS: dict[str, type[RMSNorm] | type[LayerNorm]] = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


def graph_from_spec(spec: ArchSpec) -> Graph:
    m = spec.model
    if not isinstance(m, ModelSpec):  # image-classification: stages over 2-D grids
        from archgen.spec.vision import graph_from_vision_spec

        return graph_from_vision_spec(spec)
    info = ModelInfo(m.name, m.task, m.vocab_size, m.d_model, m.max_seq_len)
    norm_cls = NORMS[m.norm]
    g = GraphBuilder(info)
    x = g.add("embedding", Embedding(d_model=m.d_model, vocab_size=m.vocab_size), TOKENS)
    for i, (_, layer) in enumerate(expand_layers(m.layers, ("model", "layers"))):
        block = f"layers.{i}"
        for slot, mixer in (("token", layer.token_mixer), ("channel", layer.channel_mixer)):
            if mixer is None:
                continue
            normed = g.add(f"{block}.{slot}_norm", norm_cls(m.d_model, m.norm_eps), x, block=block)
            op = build_op(mixer, m).resolved()
            out = g.add(f"{block}.{slot}_mixer", op, normed, block=block)
            x = g.add(f"{block}.{slot}_residual", ResidualAdd(m.d_model), x, out, block=block)
    x = g.add("final_norm", norm_cls(m.d_model, m.norm_eps), x)
    head = LMHead(d_model=m.d_model, vocab_size=m.vocab_size, tied=m.tie_embeddings)
    return g.build(g.add("logits", head, x))


def _mixer_dict(op: Op) -> dict[str, Any]:
    return {"kind": op.kind, **op.attributes()}


def spec_from_graph(graph: Graph) -> ArchSpec:
    """The canonical spec of ``graph`` (inverse of :func:`graph_from_spec`)."""
    info = graph.model
    if info.image is not None:
        from archgen.spec.vision import vision_spec_from_graph

        return vision_spec_from_graph(graph)
    layers: dict[str, dict[str, Any]] = {}
    norm = next(n.op for n in graph.nodes if n.op.role is Role.NORM)
    head = next(n.op for n in graph.nodes if isinstance(n.op, LMHead))
    for node in graph.nodes:
        if node.block is None:
            continue
        if node.op.role is Role.TOKEN_MIXER:
            layers.setdefault(node.block, {})["token_mixer"] = _mixer_dict(node.op)
        elif node.op.role is Role.CHANNEL_MIXER:
            layers.setdefault(node.block, {})["channel_mixer"] = _mixer_dict(node.op)
    data = {
        "name": info.name,
        "task": info.task,
        "vocab_size": info.vocab_size,
        "d_model": info.d_model,
        "max_seq_len": info.max_seq_len,
        "norm": norm.kind,
        "norm_eps": norm.eps,  # type: ignore[attr-defined]
        "tie_embeddings": head.tied,  # type: ignore[attr-defined]
        "layers": list(layers.values()),
    }
    return ArchSpec.model_validate({"model": data})


def resolve_spec(spec: ArchSpec) -> ArchSpec:
    """``spec`` with every ``auto`` attribute filled in, keeping its repeat groups."""
    m = spec.model
    if not isinstance(m, ModelSpec):
        from archgen.spec.vision import resolve_vision_spec

        return resolve_vision_spec(spec)

    def resolve_mixer(mixer: Any, table: dict[str, Any]) -> Any:
        if mixer is None:
            return None
        return table[mixer.kind].model_validate(_mixer_dict(build_op(mixer, m).resolved()))

    def resolve_items(items: list[LayerSpec | RepeatSpec]) -> list[LayerSpec | RepeatSpec]:
        out: list[LayerSpec | RepeatSpec] = []
        for item in items:
            if isinstance(item, RepeatSpec):
                out.append(item.model_copy(update={"layers": resolve_items(item.layers)}))
            else:
                out.append(
                    LayerSpec(
                        token_mixer=resolve_mixer(item.token_mixer, TOKEN_MIXER_SPECS),
                        channel_mixer=resolve_mixer(item.channel_mixer, CHANNEL_MIXER_SPECS),
                    )
                )
        return out

    model = m.model_copy(update={"layers": resolve_items(m.layers)})
    return spec.model_copy(update={"model": model})


def spec_to_data(spec: ArchSpec) -> dict[str, Any]:
    """Plain data for YAML/JSON output (every field, defaults included)."""
    return spec.model_dump(mode="json")


__all__ = ["ModelSpec", "graph_from_spec", "resolve_spec", "spec_from_graph", "spec_to_data"]
