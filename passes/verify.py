"""``verify``: the graph is a well-formed DAG and every node's attributes obey its rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from archgen.ir.graph import Graph
from archgen.ir.ops import Role
from archgen.passes.base import GraphInvalid, Pass, PassResult


@dataclass(frozen=True)
class Verify(Pass):
    name: ClassVar[str] = "verify"

    def run(self, graph: Graph) -> PassResult:
        defined = set(graph.inputs)
        for node in graph.nodes:
            if node.name in defined:
                raise GraphInvalid(f"value %{node.name} is defined twice")
            for value in node.inputs:
                if value not in defined:
                    raise GraphInvalid(f"%{node.name} uses %{value} before it is defined")
            for problem in node.op.problems():
                raise GraphInvalid(f"%{node.name}.{problem.field}: {problem.message}")
            if (
                graph.model.task == "causal-lm"
                and node.op.role is Role.TOKEN_MIXER
                and not node.op.is_causal()
            ):
                raise GraphInvalid(f"%{node.name} ({node.op.kind}) is not causal in a causal-lm")
            defined.add(node.name)
        for out in graph.outputs:
            if out not in defined:
                raise GraphInvalid(f"graph output %{out} is not defined")
        return PassResult(graph, changed=False)
