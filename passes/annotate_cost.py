"""``annotate_cost``: attach each node's :class:`~archgen.ir.cost.NodeCost` at a sequence length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.cost import node_cost, node_tokens
from archgen.ir.graph import Graph
from archgen.passes.base import Pass, PassResult, option, register_pass


@register_pass
@dataclass(frozen=True)
class AnnotateCost(Pass):
    name: ClassVar[str] = "annotate_cost"
    requires: ClassVar[tuple[str, ...]] = ("shapes",)
    ensures: ClassVar[tuple[str, ...]] = ("cost",)

    seq_len: int | None = option(
        "sequence length to cost at (default: max_seq_len; an image model: its image size)", None
    )
    dtype_bytes: int = option("bytes per activation / state element", 4)

    def run(self, graph: Graph) -> PassResult:
        seq_len = self.seq_len or graph.model.max_seq_len
        tokens = node_tokens(graph, seq_len)
        nodes = tuple(
            n.annotated(
                cost=node_cost(n, tokens[n.name], self.dtype_bytes), cost_seq_len=tokens[n.name]
            )
            for n in graph.nodes
        )
        changed = any(
            new.annotations != old.annotations for new, old in zip(nodes, graph.nodes, strict=True)
        )
        return PassResult(graph.with_nodes(nodes), changed=changed)
