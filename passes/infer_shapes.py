"""``infer_shapes``: apply every node's type rule; record the type of each value."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar

from archgen.ir.graph import Graph
from archgen.ir.types import TensorType, TypeRuleError
from archgen.passes.base import GraphInvalid, Pass, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class InferShapes(Pass):
    name: ClassVar[str] = "infer_shapes"
    ensures: ClassVar[tuple[str, ...]] = ("shapes",)

    def run(self, graph: Graph) -> PassResult:
        types: dict[str, TensorType] = dict(graph.inputs)
        for node in graph.nodes:
            try:
                found = node.op.infer_outputs([types[v] for v in node.inputs])
            except TypeRuleError as exc:
                raise GraphInvalid(f"%{node.name}: {exc}") from None
            if len(found) != len(node.outputs):
                raise GraphInvalid(
                    f"%{node.name} ({node.op.kind}) names {len(node.outputs)} output(s), "
                    f"its type rule gives {len(found)}"
                )
            types.update(zip(node.outputs, found, strict=True))
        changed = types != dict(graph.value_types)
        return PassResult(replace(graph, value_types=MappingProxyType(types)), changed)
