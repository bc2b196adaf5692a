"""``fuse_kernels`` beyond the every-example equality of test_every_pass.py: checkpoints load
across fusion both ways, layer norms fuse too, :func:`unfuse` restores the graph, and block
boundaries (what validation compares) are unchanged."""

from __future__ import annotations

import torch

from archgen.api import compile_spec
from archgen.backends.torch_model import build_model
from archgen.backends.weights import load_weights, save_weights
from archgen.ir.ops import AddNorm
from archgen.passes import unfuse
from archgen.spec.loader import parse_spec
from tests.conftest import EXAMPLES, TINY_LM
from tests.passes.passcheck import assert_same_function

LAYERNORM_LM = TINY_LM.replace("  layers:\n", "  norm: layernorm\n  layers:\n").replace(
    "    - token_mixer: {kind: attention, heads: 2}\n      channel_mixer: {kind: swiglu}\n",
    "    - repeat: 2\n      layers:\n        - token_mixer: {kind: mamba, d_state: 4}\n"
    "          channel_mixer: {kind: mlp, hidden: 24}\n",
)


def test_checkpoints_load_across_fusion_both_ways(tmp_path, rng_seed: int) -> None:
    spec = parse_spec(LAYERNORM_LM)  # norm weights and biases, mamba and mlp parameters
    plain, fused = compile_spec(spec), compile_spec(spec, passes="fuse_kernels")
    assert any(isinstance(n.op, AddNorm) for n in fused.nodes)
    before, after = build_model(plain, seed=rng_seed), build_model(fused, seed=rng_seed + 1)
    assert set(before.state_dict()) == set(after.state_dict())  # the same checkpoint names
    tokens = torch.randint(0, plain.model.vocab_size, (1, 9))
    for source, target, name in [(before, after, "unfused.st"), (after, before, "fused.st")]:
        save_weights(source, tmp_path / name)
        load_weights(target, tmp_path / name)  # strict: every name found, none left over
        with torch.no_grad():
            torch.testing.assert_close(target(tokens), source(tokens), atol=1e-5, rtol=1e-5)


def test_layer_norms_fuse_and_stay_exact(rng_seed: int) -> None:
    spec = parse_spec(LAYERNORM_LM)
    plain, fused = compile_spec(spec), compile_spec(spec, passes="fuse_kernels")
    kinds = {n.op.norm for n in fused.nodes if isinstance(n.op, AddNorm)}
    assert kinds == {"layernorm"}
    assert not [n for n in fused.nodes if n.op.kind == "residual_add"]  # every add had a norm
    assert_same_function(plain, fused, seed=rng_seed)


def test_unfuse_restores_the_graph_and_block_outputs_are_kept() -> None:
    for path in EXAMPLES:
        plain = compile_spec(path)
        fused = compile_spec(path, passes="fuse_kernels")
        assert fused.block_outputs() == plain.block_outputs(), path.stem
        assert unfuse(fused).nodes == plain.nodes, path.stem
