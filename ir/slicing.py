"""Cutting graphs into pieces: a block alone, the model without some blocks, the bare stem.

Blocks of a residual stack each read one value (the stream entering) and leave one (the stream
leaving); that is what makes them removable (readers of the leaving value read the entering one
instead) and trainable alone (:func:`subgraph`: entering value -> block -> leaving value). All
of it is built on :mod:`archgen.ir.edit`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from archgen.ir.edit import EditError, remove, replace_all_uses
from archgen.ir.graph import Graph, Node
from archgen.ir.types import BATCH, SEQ, TensorType


@dataclass(frozen=True)
class BlockIO:
    """A block's nodes, the one value entering it and the value leaving it."""

    block: str
    nodes: tuple[Node, ...]
    entering: str
    leaving: str


def block_io(graph: Graph, block: str) -> BlockIO:
    nodes = tuple(n for n in graph.nodes if n.block == block)
    if not nodes:
        raise EditError(f"the graph has no block {block!r}")
    produced = {v for n in nodes for v in n.outputs}
    entering = sorted({v for n in nodes for v in n.inputs if v not in produced})
    if len(entering) != 1:
        raise EditError(
            f"block {block!r} reads {len(entering)} values from outside ({', '.join(entering)}); "
            "only a block with one entering value can be cut out"
        )
    return BlockIO(block, nodes, entering[0], nodes[-1].output)


def without_blocks(graph: Graph, blocks: Iterable[str]) -> Graph:
    """``graph`` with ``blocks`` removed: readers of each block's output read its input."""
    for block in blocks:
        io = block_io(graph, block)
        graph = replace_all_uses(graph, io.leaving, io.entering, except_in=[io.leaving])
        graph = remove(graph, [n.name for n in io.nodes])
    return graph


def stem(graph: Graph) -> Graph:
    """``graph`` without any block: embedding -> final norm -> head."""
    return without_blocks(graph, graph.blocks())


def only_block(graph: Graph, block: str) -> Graph:
    """``graph`` with only ``block`` between the embedding and the head."""
    block_io(graph, block)  # an unknown block is an error, not the stem
    return without_blocks(graph, [b for b in graph.blocks() if b != block])


def subgraph(graph: Graph, block: str) -> Graph:
    """``block`` as a graph of its own: input the value entering it (``f32[B, L, d_model]``),
    output the value leaving it. Node names -- hence parameter names -- are unchanged."""
    io = block_io(graph, block)
    entering = graph.value_types.get(io.entering) or TensorType(
        (BATCH, SEQ, graph.model.d_model), "float32"
    )
    return graph.with_nodes(io.nodes, inputs={io.entering: entering}, outputs=(io.leaving,))


__all__ = ["BlockIO", "block_io", "only_block", "stem", "subgraph", "without_blocks"]
