"""Op traits and arity are data on each op class; one causality rule; verify checks arity."""

from __future__ import annotations

from dataclasses import replace

import pytest

from archgen import api
from archgen.ir import ops
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import OP_REGISTRY, Op, Role, Trait, causality_problem
from archgen.ir.types import TensorType, TypeRuleError
from archgen.passes import PassError, Verify, run_pipeline
from tests.conftest import EXAMPLES

TRANSFORMER = next(p for p in EXAMPLES if p.stem == "transformer")
D_MODEL, MAX_LEN = 256, 1024

# The token mixers whose decode step exports as one ONNX graph (the former table in
# backends/onnx_export.py); a change here is a change of what the onnx backend can export.
DECODE_EXPORTABLE_KINDS = {"attention", "swa", "checkpoint_attention", "mamba", "mamba2"}


def _graph() -> Graph:
    from archgen.spec.expand import graph_from_spec

    return graph_from_spec(api.load_spec(TRANSFORMER))


def _instance(cls: type[Op], **attrs: object) -> Op:
    context = {"d_model": D_MODEL, "max_seq_len": MAX_LEN, "vocab_size": 1000, "causal": True,
               "height": 4, "width": 4}  # fmt: skip
    return cls(**{k: context[k] for k in cls.context_fields}, **attrs)  # type: ignore[arg-type]


def _token_mixers() -> list[Op]:
    found = [_instance(c) for c in OP_REGISTRY.values() if c.role is Role.TOKEN_MIXER]
    return [
        *found,
        ops.DenseMixer(d_model=D_MODEL, max_seq_len=MAX_LEN, causal=False),
        ops.Attention(d_model=D_MODEL, causal=False),
    ]


def _with_token_mixer(graph: Graph, op: Op) -> Graph:
    nodes = list(graph.nodes)
    i = next(k for k, n in enumerate(nodes) if n.op.role is Role.TOKEN_MIXER)
    nodes[i] = replace(nodes[i], op=op)
    return graph.with_nodes(tuple(nodes))


@pytest.mark.parametrize("kind", sorted(OP_REGISTRY))
def test_every_op_declares_traits_and_arity(kind: str) -> None:
    cls = OP_REGISTRY[kind]
    below_op = [k for k in cls.__mro__ if issubclass(k, Op) and k is not Op]
    assert any("traits" in vars(k) for k in below_op), f"{kind} inherits no declared traits"
    assert any("arity" in vars(k) for k in below_op), f"{kind} inherits no declared arity"
    assert isinstance(cls.traits, frozenset) and all(isinstance(t, Trait) for t in cls.traits)
    if isinstance(cls.arity, int):
        assert cls.arity == (2 if cls.role is Role.RESIDUAL else 1)
    else:  # set per node (msf_head: the grid and one hidden state per stage): heads only
        assert cls.role is Role.HEAD
    if cls.role is not Role.TOKEN_MIXER and Trait.SPATIAL not in cls.traits:
        # position-wise ops can never break causality or decoding
        assert cls.traits == ops.base.POSITIONWISE
    if Trait.SPATIAL in cls.traits:
        # a 2-D grid op (vision) mixes neighbours on both sides: never causal nor decodable
        assert cls.traits == frozenset({Trait.GRID, Trait.SPATIAL})


def test_dense_mixer_causality_follows_its_attribute() -> None:
    causal = ops.DenseMixer(d_model=D_MODEL, max_seq_len=MAX_LEN, causal=True)
    full = replace(causal, causal=False)
    assert causal.has(Trait.CAUSAL) and causal.has(Trait.DECODABLE)
    assert not full.has(Trait.CAUSAL) and not full.has(Trait.DECODABLE)
    assert not causal.has(Trait.DECODE_EXPORTABLE)
    assert causality_problem(causal, "causal-lm") is None
    assert causality_problem(full, "causal-lm") == "not causal in a causal-lm"


def test_masked_diffusion_needs_bidirectional_token_mixers() -> None:
    task = "masked-diffusion-lm"
    full = ops.Attention(d_model=D_MODEL, causal=False)
    assert not any(full.has(t) for t in ops.base.POSITIONWISE - {Trait.GRID})
    assert full.has(Trait.GRID)  # it attends over a vision stage's flattened grid
    assert causality_problem(full, task) is None
    assert causality_problem(full, "causal-lm") == "not causal in a causal-lm"
    dense = ops.DenseMixer(d_model=D_MODEL, max_seq_len=MAX_LEN, causal=True)
    assert "needs bidirectional" in (causality_problem(dense, task) or "")
    assert causality_problem(replace(dense, causal=False), task) is None
    # mamba, mamba2 and swa take their form from the task (context field causal), as attention
    for op in (
        ops.Mamba(d_model=D_MODEL),
        ops.Mamba2(d_model=D_MODEL, head_dim=8),
        ops.SlidingWindowAttention(d_model=D_MODEL, window=4),
    ):
        assert "needs bidirectional" in (causality_problem(op, task) or "")
        bidirectional = replace(op, causal=False)
        assert causality_problem(bidirectional, task) is None
        assert not any(bidirectional.has(t) for t in Trait)
        assert bidirectional.flops(8) > op.flops(8) and bidirectional.state_bytes(8) == 0
        assert "causal" not in op.attributes()  # printed graphs and hashes of causal-lm unchanged
    for op in (ops.Mamba(d_model=D_MODEL), ops.Mamba2(d_model=D_MODEL, head_dim=8)):
        assert replace(op, causal=False).params() > op.params()  # the flipped scan's parameters
    scout = ops.CheckpointAttention(d_model=D_MODEL)
    why = causality_problem(scout, task) or ""
    assert why.startswith("causal-only") and "no bidirectional form" in why
    assert "mamba" in why and "swa" in why  # what to use instead
    # position-wise ops are causal and fine in either task
    assert causality_problem(ops.SwiGLU(d_model=D_MODEL), task) is None
    # bidirectional attention scores every (query, key) pair and keeps no decode state
    assert full.flops(8) > ops.Attention(d_model=D_MODEL).flops(8)
    assert full.state_bytes(8) == 0


def test_verify_rejects_a_node_with_the_wrong_number_of_operands() -> None:
    graph = _graph()
    nodes = list(graph.nodes)
    i = next(k for k, n in enumerate(nodes) if n.op.kind == "residual_add")
    nodes[i] = Node(nodes[i].name, nodes[i].op, nodes[i].inputs[:1], nodes[i].block)
    with pytest.raises(PassError, match=r"\(residual_add\) takes 2 operand\(s\), got 1"):
        run_pipeline(graph.with_nodes(tuple(nodes)), [Verify()])


def test_type_rule_uses_arity() -> None:
    op = ops.ResidualAdd(d_model=D_MODEL)
    x = TensorType((1, 8, D_MODEL), "float32")
    assert op.infer([x, x]) == x
    with pytest.raises(TypeRuleError, match="expected 2 input"):
        op.infer([x])


def test_decode_exportable_trait_is_what_decode_support_reports() -> None:
    from archgen.backends.onnx_decode import decode_support

    graph = _graph()
    exportable = set()
    for op in _token_mixers():
        ok, why = decode_support(_with_token_mixer(graph, op))
        assert ok == op.has(Trait.DECODE_EXPORTABLE), (op.kind, why)
        if ok:
            exportable.add(op.kind)
    assert exportable == DECODE_EXPORTABLE_KINDS
