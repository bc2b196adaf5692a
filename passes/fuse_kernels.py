"""``fuse_kernels``: exact rewrites of node groups into fused nodes, each lowered to one kernel.

Rule ``add_norm``: a ``residual_add`` and the norm (``rmsnorm`` / ``layernorm``) that reads its
sum -- the next sub-block's pre-norm, in the same block (token -> channel) or the next one (a
block's last add -> the next block's first norm, the last block's -> the final norm) -- become
one ``add_norm`` node with two outputs, the sum and the normalised sum, under the two old value
names::

    %layers.0.token_residual, %layers.0.channel_norm = add_norm(%embedding, %layers.0.token_mixer)
        {norm=rmsnorm, eps=1e-05} [weights layers.0.channel_norm]

The node takes the add's name and block (so a block still ends with the node whose first value
is the stream leaving it) and the norm's parameters under the norm's checkpoint names
(``[weights ...]``): a checkpoint saved before fusion loads after it, and back. Where several
norms read one sum, the first is fused.

Which backends run this pass by default was decided by measurement
(benchmarks/results/fusion_cpu.md); ``--passes fuse_kernels`` applies it anywhere.
:func:`unfuse` undoes it, for a backend that cannot lower a fused node (with a note).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.edit import replace_nodes, users
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import AddNorm, LayerNorm, ResidualAdd, RMSNorm
from archgen.passes.base import register_pass
from archgen.passes.rewrite import Rewrite, RewritePass, Rule

NORM_KINDS: dict[type, str] = {RMSNorm: "rmsnorm", LayerNorm: "layernorm"}
FUSED_KINDS: tuple[str, ...] = (AddNorm.kind,)


@register_pass
@dataclass(frozen=True)
class FuseKernels(RewritePass):
    """Exact kernel fusion: residual add + the norm after it -> add_norm (two outputs)."""

    name: ClassVar[str] = "fuse_kernels"
    exact: ClassVar[bool] = True

    def rules(self, graph: Graph) -> Sequence[Rule]:
        return [_FuseAddNorm()]


@dataclass(frozen=True)
class _FuseAddNorm:
    name: str = "add_norm"

    def match(self, graph: Graph, node: Node) -> Rewrite | None:
        if type(node.op) is not ResidualAdd:
            return None
        norm = next((u for u in users(graph, node.output) if type(u.op) in NORM_KINDS), None)
        if norm is None:
            return None  # the last add of a graph without a final norm: nothing to fuse
        fused = Node(
            node.name,
            AddNorm(d_model=node.op.d_model, norm=NORM_KINDS[type(norm.op)], eps=norm.op.eps),
            node.inputs,
            node.block,
            weights=norm.weight_path,
            outputs=(node.output, norm.output),
        )
        return Rewrite(
            f"residual_add + {norm.op.kind} %{norm.name} -> add_norm",
            lambda g: replace_nodes(g, [node.name, norm.name], [fused]),
        )


def unfuse(graph: Graph, names: Iterable[str] | None = None) -> Graph:
    """``graph`` with the fused nodes ``names`` (default: all) split back into the nodes they
    replaced, under their old names and weight paths: the same function."""
    wanted = None if names is None else set(names)
    for node in [n for n in graph.nodes if isinstance(n.op, AddNorm)]:
        if wanted is not None and node.name not in wanted:
            continue
        op = node.op
        assert isinstance(op, AddNorm)
        total, normed = node.outputs
        norm_op = (
            RMSNorm(op.d_model, op.eps) if op.norm == "rmsnorm" else LayerNorm(op.d_model, op.eps)
        )
        add = Node(total, ResidualAdd(d_model=op.d_model), node.inputs, node.block)
        weights = node.weight_path if node.weight_path != normed else None
        # the norm goes back to the block of its first reader (the next sub-block's mixer)
        readers = users(graph, normed)
        block = readers[0].block if readers else node.block
        norm = Node(normed, norm_op, (total,), block, weights=weights)
        graph = replace_nodes(graph, [node.name], [add, norm])
    return graph


__all__ = ["FUSED_KINDS", "FuseKernels", "unfuse"]
