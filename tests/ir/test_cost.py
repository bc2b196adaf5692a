"""Closed-form costs: scaling laws in L, and FLOPs checked against torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archgen.ir import ops
from archgen.mixers.registry import build_module

D = 64


def test_attention_flops_are_quadratic_and_swa_linear() -> None:
    att = ops.Attention(d_model=D, heads=4)
    swa = ops.SlidingWindowAttention(d_model=D, heads=4, window=16)
    # attention-core part: subtract the projections, which are linear in L
    core = lambda op, n: op.flops(n) - 4 * 2 * D * D * n  # noqa: E731
    assert core(att, 2000) / core(att, 1000) == pytest.approx(4, rel=0.01)
    assert core(swa, 2000) / core(swa, 1000) == pytest.approx(2, rel=0.01)
    assert swa.flops(10) == ops.Attention(d_model=D, heads=4).flops(10)  # L <= window: identical


def test_checkpoint_attention_with_segment_one_costs_like_attention() -> None:
    for n in (1, 7, 64):
        ckpt = ops.CheckpointAttention(d_model=D, heads=4, segment_size=1)
        assert ckpt.flops(n) == ops.Attention(d_model=D, heads=4).flops(n)
        assert ckpt.state_bytes(n) == ops.Attention(d_model=D, heads=4).state_bytes(n)


def test_checkpoint_key_pairs_match_a_direct_count() -> None:
    for s in (1, 3, 10):
        op = ops.CheckpointAttention(d_model=D, heads=4, segment_size=s)
        for n in (1, 9, 10, 11, 203):
            direct = sum(1 + sum(1 for j in range(i) if j % s == s - 1) for i in range(n))
            assert op.key_pairs(n) == direct


def test_decode_state_scaling() -> None:
    att = ops.Attention(d_model=D, heads=4, kv_heads=2)
    assert att.state_bytes(2048) == 2 * att.state_bytes(1024) == 2 * 2 * 1024 * 2 * 16 * 4
    mamba = ops.Mamba(d_model=D)
    assert mamba.state_bytes(10) == mamba.state_bytes(100_000) > 0
    ckpt = ops.CheckpointAttention(d_model=D, heads=4, segment_size=10)
    assert ckpt.state_bytes(1000) == 10 * ckpt.state_bytes(100)
    swa = ops.SlidingWindowAttention(d_model=D, heads=4, window=32)
    assert swa.state_bytes(32) == swa.state_bytes(4096)


@pytest.mark.parametrize(
    "op",
    [ops.MLP(d_model=D, hidden=96), ops.SwiGLU(d_model=D, hidden=96), ops.Mamba(d_model=D)],
    ids=lambda o: o.kind,
)
def test_matmul_flops_agree_with_torch_flop_counter(op: ops.Op) -> None:
    """Matmuls dominate these mixers; our count adds elementwise work on top (< 15%)."""
    module = build_module(op)
    n = 33
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.randn(1, n, D))
    counted = counter.get_total_flops()
    assert counted <= op.flops(n) <= 1.5 * counted
