"""``verify``: the graph is a well-formed DAG, every node has its op's number of operands and
of outputs (the first named like the node), its attributes obey its rules, (in a causal LM)
every node is causal, and every mixer runs on the model's tokens (2-D grids in an image
classifier, 1-D sequences in an LM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.graph import Graph
from archgen.ir.ops import causality_problem, layout_problem
from archgen.passes.base import GraphInvalid, Pass, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class Verify(Pass):
    name: ClassVar[str] = "verify"

    def run(self, graph: Graph) -> PassResult:
        defined = set(graph.inputs)
        for node in graph.nodes:
            twice = [v for v in node.outputs if v in defined]
            if twice:
                raise GraphInvalid(f"value %{twice[0]} is defined twice")
            if len(node.outputs) != node.op.num_outputs:
                raise GraphInvalid(
                    f"%{node.name} ({node.op.kind}) produces {node.op.num_outputs} value(s), "
                    f"names {len(node.outputs)}"
                )
            if node.outputs[0] != node.name or len(set(node.outputs)) < len(node.outputs):
                raise GraphInvalid(
                    f"%{node.name}: outputs {node.outputs} must be distinct, the first named "
                    "like the node"
                )
            if len(node.inputs) != node.op.operand_count():
                raise GraphInvalid(
                    f"%{node.name} ({node.op.kind}) takes {node.op.operand_count()} operand(s), "
                    f"got {len(node.inputs)}"
                )
            for value in node.inputs:
                if value not in defined:
                    raise GraphInvalid(f"%{node.name} uses %{value} before it is defined")
            for problem in node.op.problems():
                raise GraphInvalid(f"%{node.name}.{problem.field}: {problem.message}")
            causality = causality_problem(node.op, graph.model.task)
            if causality is not None:
                raise GraphInvalid(f"%{node.name} ({node.op.kind}) is {causality}")
            layout = layout_problem(node.op, graph.model.task)
            if layout is not None:
                raise GraphInvalid(f"%{node.name} ({node.op.kind}) is {layout}")
            defined.update(node.outputs)
        for out in graph.outputs:
            if out not in defined:
                raise GraphInvalid(f"graph output %{out} is not defined")
        return PassResult(graph, changed=False)
