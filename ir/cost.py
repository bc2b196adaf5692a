"""Cost summaries of a graph: exact parameters, FLOPs, activation and decode-state bytes."""

from __future__ import annotations

from dataclasses import dataclass

from archgen.ir.graph import Graph, Node


@dataclass(frozen=True)
class NodeCost:
    params: int
    flops: int
    activation_bytes: int
    state_bytes: int

    def __add__(self, other: NodeCost) -> NodeCost:
        return NodeCost(
            self.params + other.params,
            self.flops + other.flops,
            self.activation_bytes + other.activation_bytes,
            self.state_bytes + other.state_bytes,
        )


ZERO = NodeCost(0, 0, 0, 0)


def node_cost(node: Node, seq_len: int, dtype_bytes: int = 4) -> NodeCost:
    op = node.op
    return NodeCost(
        params=op.params(),
        flops=op.flops(seq_len),
        activation_bytes=op.activation_bytes(seq_len, dtype_bytes),
        state_bytes=op.state_bytes(seq_len, dtype_bytes),
    )


def graph_cost(graph: Graph, seq_len: int, dtype_bytes: int = 4) -> NodeCost:
    total = ZERO
    for node in graph.nodes:
        total = total + node_cost(node, seq_len, dtype_bytes)
    return total


def parameter_count(graph: Graph) -> int:
    """Exact number of distinct parameters (a tied LM head adds none)."""
    return sum(n.op.params() for n in graph.nodes)


def block_costs(graph: Graph, seq_len: int, dtype_bytes: int = 4) -> dict[str, NodeCost]:
    """Cost per block; nodes outside blocks are grouped under their own names."""
    out: dict[str, NodeCost] = {}
    for node in graph.nodes:
        key = node.block or node.name
        out[key] = out.get(key, ZERO) + node_cost(node, seq_len, dtype_bytes)
    return out
