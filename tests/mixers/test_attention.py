"""Causal GQA attention: production (SDPA) vs per-query reference, forward, backward, decode."""

from __future__ import annotations

import pytest
import torch

from archgen.mixers.attention import Attention
from tests.tolerances import assert_close


def _grads(module: torch.nn.Module, x: torch.Tensor, fn) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    grads = [x.grad] + [p.grad for p in module.parameters()]
    result = [g.clone() for g in grads]
    module.zero_grad()
    return result


@pytest.mark.parametrize(
    ("heads", "kv_heads", "rope"), [(3, 3, 10000.0), (6, 2, 500.0), (4, 1, None)]
)
def test_forward_and_backward_match_reference(heads: int, kv_heads: int, rope) -> None:
    torch.manual_seed(torch.seed() % 2**31)
    m = Attention(d_model=heads * 6, heads=heads, kv_heads=kv_heads, rope_theta=rope, bias=True)
    m = m.double()
    x = torch.randn(2, 37, heads * 6, dtype=torch.float64)
    assert_close(m(x), m.reference(x))
    torch.manual_seed(1)
    fast = _grads(m, x, m)
    torch.manual_seed(1)
    ref = _grads(m, x, m.reference)
    for a, b in zip(fast, ref, strict=True):
        assert_close(a, b)


def test_decode_steps_reproduce_forward() -> None:
    m = Attention(d_model=30, heads=5, kv_heads=1).double()
    x = torch.randn(3, 19, 30, dtype=torch.float64)
    state = m.init_state(3, dtype=torch.float64)
    ys = []
    for t in range(x.shape[1]):
        y, state = m.step(x[:, t], state, torch.tensor(t))
        ys.append(y)
    assert_close(torch.stack(ys, dim=1), m(x))
    assert state[0].shape == (3, 1, 19, 6)  # the cache holds every key


def test_causality_future_tokens_do_not_change_the_past() -> None:
    m = Attention(d_model=16, heads=2).double()
    x = torch.randn(1, 11, 16, dtype=torch.float64)
    y = m(x)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(1, 4, 16, dtype=torch.float64)
    assert_close(m(x2)[:, :7], y[:, :7])
    assert not torch.allclose(m(x2)[:, 7:], y[:, 7:])


def test_gqa_rejects_heads_not_multiple_of_kv_heads() -> None:
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        Attention(d_model=12, heads=3, kv_heads=2)


def test_bidirectional_attention_matches_reference_and_a_plain_softmax() -> None:
    torch.manual_seed(0)
    m = Attention(d_model=12, heads=3, kv_heads=1, rope_theta=None, causal=False).double()
    x = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert_close(y, m.reference(x))
    (g,) = torch.autograd.grad(y.square().sum(), x)
    (g_ref,) = torch.autograd.grad(m.reference(x).square().sum(), x)
    assert_close(g, g_ref)
    # written out: every query sees every key (kv head shared by the 3 query heads)
    q = m.q_proj(x).view(2, 9, 3, 4).transpose(1, 2)
    k = m.k_proj(x).view(2, 9, 1, 4).transpose(1, 2)
    v = m.v_proj(x).view(2, 9, 1, 4).transpose(1, 2)
    p = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)
    assert_close(y, m.o_proj((p @ v).transpose(1, 2).reshape(2, 9, 12)))
    # the first output depends on the last token, unlike causal attention's
    x2 = x.detach().clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(m(x2)[:, 0], y[:, 0].detach())
    with pytest.raises(NotImplementedError, match="cannot decode"):
        m.init_state(2)
