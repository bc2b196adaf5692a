"""``compress_segments``: SCOUT's segment compression (arXiv 2509.00935) as a rewrite.

Full causal attention becomes checkpoint attention with segment size ``s``: token ``i`` attends
to itself and to the last token of every completed segment, so prefill attention work falls by
about ``s`` and the KV cache grows as ``L / s``. The Q/K/V/O projections (and RoPE) are kept, so
a trained attention's weights carry over unchanged; ``s = 1`` is exactly the original function.

SCOUT relies on a *local* mixer (Mamba, Mamba-2 or sliding-window attention) earlier in the same
layer group to carry what the checkpoints skip. A layer group here runs back from the attention,
over the token mixers before it, to the previous global mixer. Without a local mixer there the
rewrite is refused with that reason -- or, with ``local=swa|mamba|mamba2``, one is inserted in
the attention's block, before it: ``local_norm -> local_mixer -> local_residual`` (names
``layers.N.local_*``). A weight converter starts such a mixer at zero output, so the converted
model first computes what the original did (``archgen convert``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from archgen.ir.edit import insert_before, replace_op, set_inputs, users
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import (
    Attention,
    CheckpointAttention,
    Mamba,
    Mamba2,
    Op,
    ResidualAdd,
    RMSNorm,
    Role,
    SlidingWindowAttention,
)
from archgen.ir.slicing import block_io
from archgen.passes.base import option, register_pass
from archgen.passes.rewrite import Reject, Rewrite, RewritePass, Rule

LOCAL_MIXERS: tuple[type[Op], ...] = (SlidingWindowAttention, Mamba, Mamba2)


@register_pass
@dataclass(frozen=True)
class CompressSegments(RewritePass):
    """SCOUT: causal attention -> checkpoint attention over segments of s tokens."""

    name: ClassVar[str] = "compress_segments"
    exact: ClassVar[bool] = False  # s > 1 changes the function; s = 1 is exact (tested)

    s: int = option("segment size: tokens per checkpoint (1 = full attention)", 16)
    local: Literal["swa", "mamba", "mamba2"] | None = option(
        "insert this local mixer where a layer group has none (default: refuse there)",
        default=None,
    )
    window: int = option("window of an inserted swa mixer", 256)
    d_state: int = option("state size of an inserted mamba / mamba2 mixer", 16)

    def __post_init__(self) -> None:
        if self.s < 1:
            raise ValueError(f"s must be >= 1, got {self.s}")
        if self.window < 1 or self.d_state < 1:
            raise ValueError("window and d_state must be >= 1")

    def rules(self, graph: Graph) -> Sequence[Rule]:
        return [_CompressAttention(self)]


@dataclass(frozen=True)
class _CompressAttention:
    options: CompressSegments
    name: str = "compress_attention"

    def match(self, graph: Graph, node: Node) -> Rewrite | Reject | None:
        op = node.op
        if type(op) is not Attention:
            return None
        op = op.resolved()
        checkpoint = CheckpointAttention(
            d_model=op.d_model,
            heads=op.heads,
            kv_heads=op.kv_heads,
            head_dim=op.head_dim,
            rope_theta=op.rope_theta,  # the trained weights assume this RoPE base
            bias=op.bias,
            segment_size=self.options.s,
        )
        s = self.options.s
        if _has_local_mixer(graph, node):
            return Rewrite(f"attention -> checkpoint_attention (s={s})", _swap(node, checkpoint))
        local = self.options.local
        if local is None:
            return Reject(
                "no local mixer (swa, mamba, mamba2) earlier in its layer group to carry what "
                "the checkpoints skip; add local=swa (or mamba, mamba2) to insert one"
            )
        if node.block is None:
            return Reject("it is outside any block, so there is no place to insert a local mixer")
        mixer = self._local_op(op, local)
        return Rewrite(
            f"attention -> checkpoint_attention (s={s}) after a new {local} mixer",
            lambda g: _insert_local(_swap(node, checkpoint)(g), g.node(node.name), mixer),
        )

    def _local_op(self, attention: Attention, kind: str) -> Op:
        d = attention.d_model
        if kind == "swa":
            return SlidingWindowAttention(
                d_model=d,
                heads=attention.heads,
                kv_heads=attention.kv_heads,
                head_dim=attention.head_dim,
                rope_theta=attention.rope_theta,
                bias=attention.bias,
                window=self.options.window,
            )
        if kind == "mamba":
            return Mamba(d_model=d, d_state=self.options.d_state).resolved()
        return Mamba2(d_model=d, d_state=self.options.d_state)


def _swap(node: Node, op: Op) -> Callable[[Graph], Graph]:
    return lambda g: replace_op(g, node.name, op)


def _has_local_mixer(graph: Graph, attention: Node) -> bool:
    """A local mixer among the token mixers before ``attention``, back to the previous global
    one (the layer group)."""
    for node in reversed(graph.nodes[: graph.index(attention.name)]):
        if node.op.role is not Role.TOKEN_MIXER:
            continue
        return isinstance(node.op, LOCAL_MIXERS)  # a global mixer closes the group
    return False


def _insert_local(graph: Graph, attention: Node, mixer: Op) -> Graph:
    """``x -> local_norm -> local_mixer -> x + . -> (the block as before)`` in the attention's
    block; the norm copies the attention's own pre-norm where it has one."""
    assert attention.block is not None
    block = attention.block
    entering = block_io(graph, block).entering
    pre_norm = graph.node(attention.inputs[0]).op if attention.inputs[0] in graph else None
    norm = pre_norm if pre_norm is not None and pre_norm.role is Role.NORM else None
    d = graph.model.d_model
    names = (f"{block}.local_norm", f"{block}.local_mixer", f"{block}.local_residual")
    new = [
        Node(names[0], norm or RMSNorm(d_model=d), (entering,), block),
        Node(names[1], mixer, (names[0],), block),
        Node(names[2], ResidualAdd(d_model=d), (entering, names[1]), block),
    ]
    first = next(n for n in graph.nodes if n.block == block)
    readers = [u.name for u in users(graph, entering) if u.block == block]
    graph = insert_before(graph, first.name, new)
    for reader in readers:
        inputs = [names[2] if v == entering else v for v in graph.node(reader).inputs]
        graph = set_inputs(graph, reader, inputs)
    return graph
