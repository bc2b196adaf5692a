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


def node_tokens(graph: Graph, seq_len: int) -> dict[str, int]:
    """The ``seq_len`` each node is costed at: ``seq_len`` for every node of a language model;
    in an image-classification model (fixed image size) the tokens ``H * W`` of the grid each
    node receives (1 after the pool), read from the graph's types (inferred here if absent)."""
    if graph.model.image is None:
        return {n.name: seq_len for n in graph.nodes}
    types = dict(graph.inputs) | dict(graph.value_types)
    out: dict[str, int] = {}
    for node in graph.nodes:
        args = [types[v] for v in node.inputs]
        if node.output not in types:
            types[node.output] = node.op.infer(args)
        shape = args[0].shape
        spatial = [d for d in shape[1:-1] if isinstance(d, int)]
        tokens = 1
        for d in spatial:
            tokens *= d
        out[node.name] = tokens
    return out


def graph_cost(graph: Graph, seq_len: int, dtype_bytes: int = 4) -> NodeCost:
    total = ZERO
    tokens = node_tokens(graph, seq_len)
    for node in graph.nodes:
        total = total + node_cost(node, tokens[node.name], dtype_bytes)
    return total


def parameter_count(graph: Graph) -> int:
    """Exact number of distinct parameters (a tied LM head adds none)."""
    return sum(n.op.params() for n in graph.nodes)


def block_costs(graph: Graph, seq_len: int, dtype_bytes: int = 4) -> dict[str, NodeCost]:
    """Cost per block; nodes outside blocks are grouped under their own names."""
    out: dict[str, NodeCost] = {}
    tokens = node_tokens(graph, seq_len)
    for node in graph.nodes:
        key = node.block or node.name
        out[key] = out.get(key, ZERO) + node_cost(node, tokens[node.name], dtype_bytes)
    return out
