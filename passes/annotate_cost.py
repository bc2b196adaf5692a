"""``annotate_cost``: attach each node's :class:`~archgen.ir.cost.NodeCost` at a sequence length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.cost import node_cost
from archgen.ir.graph import Graph
from archgen.passes.base import Pass, PassResult


@dataclass(frozen=True)
class AnnotateCost(Pass):
    name: ClassVar[str] = "annotate_cost"
    requires: ClassVar[tuple[str, ...]] = ("shapes",)
    ensures: ClassVar[tuple[str, ...]] = ("cost",)

    seq_len: int | None = None  # default: the model's max_seq_len
    dtype_bytes: int = 4

    def run(self, graph: Graph) -> PassResult:
        seq_len = self.seq_len or graph.model.max_seq_len
        nodes = tuple(
            n.annotated(cost=node_cost(n, seq_len, self.dtype_bytes), cost_seq_len=seq_len)
            for n in graph.nodes
        )
        return PassResult(graph.with_nodes(nodes), changed=True)
