"""The edit API: the only way to change a graph outside the spec expansion.

Every function takes a graph and returns a new one (graphs are immutable); none mutates. Edits
go through :meth:`Graph.with_nodes`, so the derived facts of whatever they touch (costs, value
types downstream) are dropped and recomputed by the next ``infer_shapes`` / ``annotate_cost``.
An edit that would leave the graph ill-formed (a value used before it is defined, a removed
node still in use) raises :class:`EditError` naming the node, before anything is built.

>>> g = replace_op(g, "layers.0.token_mixer", Mamba(d_model=256))  # doctest: +SKIP
>>> g = insert_before(g, "layers.0.token_norm", [new_norm])  # doctest: +SKIP
>>> g = replace_nodes(g, ["layers.0.residual", "layers.1.norm"], [fused])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from archgen.ir.graph import Graph, Node
from archgen.ir.ops import Op


class EditError(ValueError):
    """An edit that would make the graph ill-formed."""


def users(graph: Graph, value: str) -> list[Node]:
    """The nodes that read ``value``, in order."""
    return [n for n in graph.nodes if value in n.inputs]


def replace_op(graph: Graph, name: str, op: Op) -> Graph:
    """Node ``name`` applies ``op`` instead (same inputs, block and weight names)."""
    node = graph.node(name)
    return _set(graph, replace(node, op=op))


def set_inputs(graph: Graph, name: str, inputs: Sequence[str]) -> Graph:
    """Node ``name`` reads ``inputs`` instead; each must be defined before it."""
    node = replace(graph.node(name), inputs=tuple(inputs))
    _check_defined_before(graph, node, graph.index(name))
    return _set(graph, node)


def replace_all_uses(graph: Graph, old: str, new: str, *, except_in: Iterable[str] = ()) -> Graph:
    """Every reader of value ``old`` (graph outputs included) reads ``new`` instead, except the
    nodes named in ``except_in`` (e.g. the node that now consumes ``old`` to produce ``new``)."""
    skip = set(except_in)
    new_pos = graph.index(new) if new in graph else -1
    nodes = []
    for i, node in enumerate(graph.nodes):
        if node.name not in skip and old in node.inputs:
            if i <= new_pos:
                raise EditError(f"%{node.name} would read %{new} before it is defined")
            node = replace(node, inputs=tuple(new if v == old else v for v in node.inputs))
        nodes.append(node)
    outputs = tuple(new if o == old else o for o in graph.outputs)
    return graph.with_nodes(tuple(nodes), outputs=outputs)


def rename(graph: Graph, old: str, new: str) -> Graph:
    """Node ``old`` is called ``new`` (and so is its value, for every reader and the graph
    outputs). Its parameters keep their checkpoint names (:attr:`Node.weights`)."""
    node = graph.node(old)
    if new in graph or new in graph.inputs:
        raise EditError(f"cannot rename %{old} to %{new}: the name is already defined")
    outputs = tuple(new if v == old else v for v in node.outputs)
    renamed = replace(node, name=new, weights=node.weight_path, outputs=outputs)
    nodes = []
    for n in graph.nodes:
        if n.name == old:
            n = renamed
        elif old in n.inputs:
            n = replace(n, inputs=tuple(new if v == old else v for v in n.inputs))
        nodes.append(n)
    outputs = tuple(new if o == old else o for o in graph.outputs)
    return graph.with_nodes(tuple(nodes), outputs=outputs)


def insert_before(graph: Graph, anchor: str, nodes: Sequence[Node]) -> Graph:
    """Insert ``nodes`` (in order) just before node ``anchor``."""
    return _insert(graph, graph.index(anchor), nodes)


def insert_after(graph: Graph, anchor: str, nodes: Sequence[Node]) -> Graph:
    """Insert ``nodes`` (in order) just after node ``anchor``."""
    return _insert(graph, graph.index(anchor) + 1, nodes)


def remove(graph: Graph, names: Iterable[str]) -> Graph:
    """Remove the named nodes; none of their values may still be read by a remaining node or be
    a graph output (redirect readers first with :func:`replace_all_uses`)."""
    gone = set(names)
    values = {v for name in gone for v in graph.node(name).outputs}  # KeyError: unknown node
    for node in graph.nodes:
        if node.name in gone:
            continue
        used = [v for v in node.inputs if v in values]
        if used:
            raise EditError(f"cannot remove %{used[0]}: %{node.name} still reads it")
    for out in graph.outputs:
        if out in values:
            raise EditError(f"cannot remove %{out}: it is a graph output")
    return graph.with_nodes(tuple(n for n in graph.nodes if n.name not in gone))


def replace_nodes(graph: Graph, names: Sequence[str], new: Sequence[Node]) -> Graph:
    """Replace the nodes ``names`` by ``new`` (in order), placed where the first of them was:
    the edit of a fusion (several nodes -> one node with several outputs) and of its undoing.
    Every value of the old nodes that is still read (or is a graph output) must be produced by
    a new node under the same name, and the new nodes may only read values defined before that
    place (or by new nodes before them)."""
    if not names:
        raise EditError("replace_nodes needs at least one node to replace")
    old = [graph.node(n) for n in names]  # KeyError names an unknown node
    gone = {n.name for n in old}
    at = min(graph.index(n) for n in gone)
    made = {v for n in new for v in n.outputs}
    lost = {v for n in old for v in n.outputs} - made
    for node in graph.nodes:
        read = [v for v in node.inputs if v in lost]
        if node.name not in gone and read:
            raise EditError(f"%{node.name} reads %{read[0]}, which no replacing node produces")
    for out in graph.outputs:
        if out in lost:
            raise EditError(f"graph output %{out} is produced by no replacing node")
    kept = [n for n in graph.nodes if n.name not in gone]
    before = [n for n in kept if graph.index(n.name) < at]
    after = [n for n in kept if graph.index(n.name) > at]
    defined = set(graph.inputs) | {v for n in before for v in n.outputs}
    taken = {n.name for n in kept} | {v for n in kept for v in n.outputs}
    for node in new:
        clash = [v for v in (node.name, *node.outputs) if v in taken]
        if clash:
            raise EditError(f"cannot insert %{node.name}: %{clash[0]} is already defined")
        missing = [v for v in node.inputs if v not in defined]
        if missing:
            raise EditError(f"%{node.name} would read %{missing[0]} before it is defined")
        defined.update(node.outputs)
        taken.update((node.name, *node.outputs))
    for node in after:  # readers between the old nodes must still see their inputs first
        missing = [v for v in node.inputs if v not in defined]
        if missing:
            raise EditError(f"%{node.name} would read %{missing[0]} before it is defined")
        defined.update(node.outputs)
    return graph.with_nodes((*before, *new, *after))


def _set(graph: Graph, node: Node) -> Graph:
    nodes = list(graph.nodes)
    nodes[graph.index(node.name)] = node
    return graph.with_nodes(tuple(nodes))


def _insert(graph: Graph, at: int, new: Sequence[Node]) -> Graph:
    taken = [v for n in new for v in (n.name, *n.outputs) if v in graph or v in graph.inputs]
    if taken:
        raise EditError(f"cannot insert %{taken[0]}: the name is already defined")
    nodes = [*graph.nodes[:at], *new, *graph.nodes[at:]]
    defined = set(graph.inputs)
    for i, node in enumerate(nodes[: at + len(new)]):
        if i >= at:
            missing = [v for v in node.inputs if v not in defined]
            if missing:
                raise EditError(f"inserted %{node.name} reads %{missing[0]}, not defined before it")
        defined.update(node.outputs)
    return graph.with_nodes(tuple(nodes))


def _check_defined_before(graph: Graph, node: Node, position: int) -> None:
    defined = set(graph.inputs) | {v for n in graph.nodes[:position] for v in n.outputs}
    missing = [v for v in node.inputs if v not in defined]
    if missing:
        raise EditError(f"%{node.name} would read %{missing[0]} before it is defined")


__all__ = [
    "EditError",
    "insert_after",
    "insert_before",
    "remove",
    "rename",
    "replace_all_uses",
    "replace_nodes",
    "replace_op",
    "set_inputs",
    "users",
]
