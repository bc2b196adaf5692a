"""The IR's closed-form parameter counts equal the instantiated torch modules'."""

from __future__ import annotations

import pytest
import torch

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.ir import ops
from archgen.ir.cost import parameter_count
from archgen.mixers.registry import build_module
from tests.conftest import EXAMPLES

# One small configuration per node kind, with non-default attributes where they change counts.
CASES: list[ops.Op] = [
    ops.Attention(d_model=48, heads=6, kv_heads=2, bias=True),
    ops.Attention(d_model=40, heads=4, head_dim=12, rope_theta=None),
    ops.SlidingWindowAttention(d_model=48, heads=4, kv_heads=1, window=5),
    ops.CheckpointAttention(d_model=48, heads=4, segment_size=3),
    ops.DenseMixer(d_model=24, max_seq_len=13, heads=3),
    ops.Mamba(d_model=40, d_state=5, expand=2, dt_rank=7, bias=True),
    ops.Mamba(d_model=33, conv_bias=False),
    ops.Mamba2(d_model=48, d_state=8, head_dim=16, ngroups=2),
    ops.MLP(d_model=24, hidden=37, bias=True),
    ops.MLP(d_model=24, bias=False),
    ops.SwiGLU(d_model=24, hidden=37, bias=True),
    ops.SwiGLU(d_model=24),
    ops.RMSNorm(d_model=24),
    ops.LayerNorm(d_model=24),
]


@pytest.mark.parametrize("op", CASES, ids=lambda op: op.kind)
def test_node_params_equal_module_params(op: ops.Op) -> None:
    module = build_module(op)
    assert op.params() == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_example_params_equal_built_model(spec) -> None:
    graph = api.compile_spec(spec)
    model = build_model(graph)
    assert parameter_count(graph) == sum(p.numel() for p in model.parameters())
    assert api.check(spec).total.params == parameter_count(graph)


def test_untied_head_counts_its_weights() -> None:
    spec = api.load_spec(EXAMPLES[0])
    untied = spec.model_copy(
        update={"model": spec.model.model_copy(update={"tie_embeddings": False})}
    )
    tied_count = parameter_count(api.compile_spec(spec))
    untied_graph = api.compile_spec(untied)
    m = untied_graph.model
    assert parameter_count(untied_graph) == tied_count + m.vocab_size * m.d_model
    model = build_model(untied_graph, dtype=torch.float32)
    assert parameter_count(untied_graph) == sum(p.numel() for p in model.parameters())
