"""The IR graph: a DAG of named values produced by nodes, in topological order.

A :class:`Node` applies one :class:`~archgen.ir.ops.Op` to named input values and produces the
values named in its ``outputs``: one, named like the node, for every op but the fused ones
(``%a, %b = add_norm(...)`` makes two; the first is always named like the node). Nodes are
grouped into *blocks* (``layers.3``): the unit that numerics validation reports and that search
swaps. A block's output is its last node's first value. Graphs are immutable; passes return new
ones, changing them through :mod:`archgen.ir.edit`.

Derived facts -- a node's ``annotations`` (its cost) and the graph's ``value_types`` -- are not
part of a graph's identity. :meth:`Graph.with_nodes` drops the facts of every node that changed
(and the types of every value downstream of one), so an edit can never leave stale costs or
shapes behind, however the new nodes were made: ``infer_shapes`` / ``annotate_cost`` recompute
them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from archgen.ir.ops import Op, Role
from archgen.ir.types import BATCH, SEQ, TensorType

# causal-lm: next-token prediction, every node causal. masked-diffusion-lm: a bidirectional
# denoiser that predicts masked tokens (LLaDA); its last vocabulary id is the mask token.
# image-classification: images [B, H, W, C] in, class logits [B, num_classes] out (ImageInfo).
Task = Literal["causal-lm", "masked-diffusion-lm", "image-classification"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ImageInfo:
    """The input of an image-classification model: ``f32[B, image_size, image_size,
    in_channels]`` (channels last, like every 2-D token grid of the IR)."""

    image_size: int
    in_channels: int
    num_classes: int


@dataclass(frozen=True)
class ModelInfo:
    """Model-level facts every pass and backend may need. An image-classification model has
    ``image`` set; its ``vocab_size`` is the number of classes (the width of its logits),
    ``d_model`` its widest stage and ``max_seq_len`` the tokens of its largest grid."""

    name: str
    task: Task
    vocab_size: int
    d_model: int
    max_seq_len: int
    image: ImageInfo | None = None

    @property
    def causal(self) -> bool:
        """Whether token mixers read only earlier positions: the context field ``causal`` of the
        node kinds whose form the task decides (attention, swa, mamba, mamba2)."""
        return self.task == "causal-lm"

    @property
    def mask_token(self) -> int | None:
        """The id a masked-diffusion LM reads as "masked" (its last one), else None. Data never
        uses it: the loaders check that their ids stay below it."""
        return self.vocab_size - 1 if self.task == "masked-diffusion-lm" else None


@dataclass(frozen=True)
class Node:
    """One op applied to named values. ``weights`` is where its parameters live in a checkpoint
    (the module path of ``layers.0.token_mixer.q_proj.weight``): the node's own name unless a
    rewrite renamed it, so checkpoints written before a rewrite still load after it."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    block: str | None = None
    annotations: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)
    weights: str | None = None
    # the values it produces, in the op's order; () means the one value ``(name,)``
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.outputs:
            object.__setattr__(self, "outputs", (self.name,))

    @property
    def output(self) -> str:
        """The node's first (for most ops: only) value, named like the node."""
        return self.outputs[0]

    @property
    def weight_path(self) -> str:
        """The module path of this node's parameters."""
        return self.weights or self.name

    def annotated(self, **facts: Any) -> Node:
        return replace(self, annotations=MappingProxyType({**self.annotations, **facts}))

    def without_facts(self) -> Node:
        return self if not self.annotations else replace(self, annotations=_EMPTY)


TOKENS = "tokens"
PIXELS = "pixels"  # the input of an image-classification graph


class OutputRole(enum.Enum):
    """What a graph output is, for the backends that run the graph and what consumes it."""

    LOGITS = "logits"  # an LM head's output: what `run` returns, what a deployed model emits
    HIDDEN = "hidden"  # a residual stream (the output of a block cut out alone)


@dataclass(frozen=True)
class Graph:
    model: ModelInfo
    nodes: tuple[Node, ...]
    inputs: Mapping[str, TensorType]
    outputs: tuple[str, ...]
    value_types: Mapping[str, TensorType] = field(default_factory=lambda: _EMPTY, compare=False)
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    _producers: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_index", MappingProxyType({n.name: i for i, n in enumerate(self.nodes)})
        )
        object.__setattr__(
            self,
            "_producers",
            MappingProxyType({v: i for i, n in enumerate(self.nodes) for v in n.outputs}),
        )

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a node or a value some node produces."""
        return name in self._index or name in self._producers

    def node(self, name: str) -> Node:
        """Node ``name``, or the node producing the value ``name``."""
        return self.nodes[self.index(name)]

    def producer(self, value: str) -> Node:
        """The node whose outputs include ``value``."""
        try:
            return self.nodes[self._producers[value]]
        except KeyError:
            raise KeyError(f"no node produces %{value}") from None

    def index(self, name: str) -> int:
        """Position of node ``name`` (or of the node producing value ``name``) in topological
        order. For single-output nodes the two are the same name."""
        found = self._index.get(name, self._producers.get(name))
        if found is None:
            raise KeyError(f"no node named {name!r}")
        return found

    def output_role(self, value: str) -> OutputRole:
        """The role of graph output ``value``: logits where a head produces it."""
        if value not in self.outputs:
            raise KeyError(f"%{value} is not a graph output")
        producer = self.nodes[self._producers[value]] if value in self._producers else None
        return (
            OutputRole.LOGITS
            if producer is not None and producer.op.role is Role.HEAD
            else OutputRole.HIDDEN
        )

    def primary_output(self) -> str:
        """The output a model's ``run`` returns: the logits if there are any, else the one
        output; a graph with several candidates is ambiguous and refused here."""
        logits = [o for o in self.outputs if self.output_role(o) is OutputRole.LOGITS]
        found = logits or list(self.outputs)
        if len(found) != 1:
            raise ValueError(
                f"graph {self.model.name} has {len(found)} candidate primary outputs "
                f"({', '.join(found)}); name the output to read"
            )
        return found[0]

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

    def with_nodes(
        self,
        nodes: tuple[Node, ...],
        *,
        inputs: Mapping[str, TensorType] | None = None,
        outputs: tuple[str, ...] | None = None,
    ) -> Graph:
        """This graph with new nodes (and optionally inputs / outputs); see the module docstring
        for which derived facts survive. Passes call it; everything else edits through
        :mod:`archgen.ir.edit`."""
        fresh: list[Node] = []
        stale: set[str] = set()
        for node in nodes:
            i = self._index.get(node.name)
            before = self.nodes[i] if i is not None else None
            if before is not None and before == node:
                fresh.append(node)
                continue
            stale.update(node.outputs)
            # facts carried over from the node it replaces describe that node, not this one
            carried = before is not None and node.annotations == before.annotations
            fresh.append(node.without_facts() if carried else node)
        new_inputs = self.inputs if inputs is None else MappingProxyType(dict(inputs))
        known = {**self.value_types, **self.inputs}
        stale |= {v for v in new_inputs if known.get(v) != new_inputs[v]}
        for node in fresh:  # topological order: downstream of a stale value is stale
            if node.output not in stale and any(v in stale for v in node.inputs):
                stale.update(node.outputs)
        defined = set(new_inputs) | {v for n in fresh for v in n.outputs}
        types = {v: t for v, t in self.value_types.items() if v in defined and v not in stale}
        return replace(
            self,
            nodes=tuple(fresh),
            inputs=new_inputs,
            outputs=self.outputs if outputs is None else outputs,
            value_types=MappingProxyType(types),
        )


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
