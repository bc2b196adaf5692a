"""The IR graph: a DAG of named values produced by nodes, in topological order.

A :class:`Node` applies one :class:`~archgen.ir.ops.Op` to named input values and produces one
value named like the node. Nodes are grouped into *blocks* (``layers.3``): the unit that
numerics validation reports and that search swaps. Graphs are immutable; passes return new ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from archgen.ir.ops import Op, Role
from archgen.ir.types import BATCH, SEQ, TensorType

Task = Literal["causal-lm"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ModelInfo:
    """Model-level facts every pass and backend may need."""

    name: str
    task: Task
    vocab_size: int
    d_model: int
    max_seq_len: int


@dataclass(frozen=True)
class Node:
    name: str
    op: Op
    inputs: tuple[str, ...]
    block: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)

    @property
    def output(self) -> str:
        return self.name

    def annotated(self, **facts: Any) -> Node:
        return replace(self, annotations=MappingProxyType({**self.annotations, **facts}))


TOKENS = "tokens"


@dataclass(frozen=True)
class Graph:
    model: ModelInfo
    nodes: tuple[Node, ...]
    inputs: Mapping[str, TensorType]
    outputs: tuple[str, ...]
    value_types: Mapping[str, TensorType] = field(default_factory=lambda: _EMPTY, compare=False)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}")

    def blocks(self) -> list[str]:
        """Block names in order of first appearance."""
        seen: dict[str, None] = {}
        for n in self.nodes:
            if n.block is not None:
                seen.setdefault(n.block, None)
        return list(seen)

    def block_outputs(self) -> dict[str, str]:
        """Block name -> the value leaving it (its last node's output)."""
        last: dict[str, str] = {}
        for n in self.nodes:
            if n.block is not None:
                last[n.block] = n.output
        return last

    def nodes_with_role(self, role: Role) -> list[Node]:
        return [n for n in self.nodes if n.op.role is role]

    def with_nodes(self, nodes: tuple[Node, ...]) -> Graph:
        return replace(self, nodes=nodes)


class GraphBuilder:
    """Appends nodes in order; used by the spec expansion and by tests building graphs by hand."""

    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self.nodes: list[Node] = []
        self.inputs = {TOKENS: TensorType((BATCH, SEQ), "int64")}

    def add(self, name: str, op: Op, *inputs: str, block: str | None = None) -> str:
        self.nodes.append(Node(name, op, tuple(inputs), block))
        return name

    def build(self, *outputs: str) -> Graph:
        return Graph(self.model, tuple(self.nodes), MappingProxyType(dict(self.inputs)), outputs)
