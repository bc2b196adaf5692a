"""Text form of a graph, for golden tests and ``--dump-after``.

Serialisation lives here, outside the node classes (as in onnx-ir): ops have no ``to_text``.
"""

from __future__ import annotations

from typing import Any

from archgen.ir.graph import Graph, Node


def _format_attr(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_node(node: Node, graph: Graph) -> str:
    attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in node.op.attributes().items())
    args = ", ".join(f"%{i}" for i in node.inputs)
    results = ", ".join(f"%{o}" for o in node.outputs)  # the first is named like the node
    line = f"  {results} = {node.op.kind}({args})"
    if attrs:
        line += f" {{{attrs}}}"
    if node.weights is not None and node.weights != node.name:
        line += f" [weights {node.weights}]"
    vtypes = [graph.value_types.get(o) for o in node.outputs]
    if all(t is not None for t in vtypes):
        line += " : " + ", ".join(map(str, vtypes))
    cost = node.annotations.get("cost")
    if cost is not None:
        line += f"  # params={cost.params:,} flops={cost.flops:,}"
    return line


def print_graph(graph: Graph) -> str:
    m = graph.model
    head = (
        f"graph {m.name} ({m.task}, d_model={m.d_model}, vocab_size={m.vocab_size}, "
        f"max_seq_len={m.max_seq_len}) {{"
    )
    lines = [head]
    lines += [f"  %{name}: {vtype}" for name, vtype in graph.inputs.items()]
    block = None
    for node in graph.nodes:
        if node.block != block and node.block is not None:
            lines.append(f"  // {node.block}")
        block = node.block
        lines.append(format_node(node, graph))
    lines.append("  return " + ", ".join(f"%{o}" for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
