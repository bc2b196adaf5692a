"""Bidirectional forms of Mamba, Mamba-2 and SWA (``causal=False``, a masked-diffusion denoiser):
production ``forward`` against the float64 ``reference`` loops (whose backward scans run from the
last token down, written without a flip), forward and backward, at odd sizes; properties checked
without either implementation (flip equivariance with tied directions, the symmetric window
against full bidirectional attention); parameter names; decoding refused; dynamic-length export.
"""

from __future__ import annotations

import pytest
import torch

from archgen.backends.onnx_export import traces_with_dynamic_length
from archgen.mixers.attention import Attention
from archgen.mixers.mamba import Mamba
from archgen.mixers.mamba2 import Mamba2
from archgen.mixers.swa import SlidingWindowAttention
from tests.mixers.test_mamba import needs_fused
from tests.tolerances import assert_close

F64 = torch.float64
B, L, D = 2, 37, 21  # odd: L is no multiple of any chunk or block size


def _perturb_ssm(m: torch.nn.Module) -> torch.nn.Module:
    """Move every direction's decays off their init (identical rows would hide mix-ups between
    channels or between the two directions)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith(("A_log", "A_b_log", "dt_bias")) or "dt_proj.bias" in name:
                p.add_(torch.randn_like(p))
            elif name in ("D", "D_b"):
                p.normal_()
    return m


def mamba(scan: str = "chunked", causal: bool = False, seed: int = 0) -> Mamba:
    torch.manual_seed(seed)
    return _perturb_ssm(Mamba(D, d_state=5, d_conv=3, scan=scan, causal=causal, dtype=F64))


def mamba2(chunk_size: int = 8, causal: bool = False, seed: int = 0, **kw) -> Mamba2:
    torch.manual_seed(seed)
    m = Mamba2(
        24, d_state=6, d_conv=3, head_dim=8, chunk_size=chunk_size, causal=causal, dtype=F64, **kw
    )
    return _perturb_ssm(m)


def swa(window: int, block_size: int | None = None, causal: bool = False) -> SlidingWindowAttention:
    torch.manual_seed(0)
    return SlidingWindowAttention(
        24, heads=4, kv_heads=2, window=window, block_size=block_size, causal=causal, dtype=F64
    )


def outputs_and_grads(m: torch.nn.Module, fn, x: torch.Tensor, gy: torch.Tensor) -> list:
    """``fn(x)`` and the gradients of ``<fn(x), gy>`` w.r.t. ``x`` and every parameter."""
    x = x.detach().requires_grad_(True)
    y = fn(x)
    return [y, *torch.autograd.grad(y, [x, *m.parameters()], gy)]


def assert_matches_reference(m: torch.nn.Module, length: int = L, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    width = m.d_model
    x = torch.randn(B, length, width, dtype=F64, generator=gen)
    gy = torch.randn(B, length, width, dtype=F64, generator=gen)
    got = outputs_and_grads(m, m.forward, x, gy)
    want = outputs_and_grads(m, m.reference, x, gy)
    names = ["output", "input grad", *(f"grad of {n}" for n, _ in m.named_parameters())]
    for name, g, w in zip(names, got, want, strict=True):
        assert_close(g, w, msg=name)


# -- forward and backward against the reference ------------------------------------------------
@pytest.mark.parametrize("scan", ["chunked", pytest.param("fused", marks=needs_fused)])
@pytest.mark.parametrize("length", [1, 2, L])
def test_mamba_matches_reference(scan: str, length: int) -> None:
    assert_matches_reference(mamba(scan), length)


@pytest.mark.parametrize(("chunk_size", "ngroups"), [(8, 1), (5, 1), (64, 1), (8, 3)])
def test_mamba2_matches_reference(chunk_size: int, ngroups: int) -> None:
    assert_matches_reference(mamba2(chunk_size, ngroups=ngroups))


@pytest.mark.parametrize(
    ("length", "window", "block_size"),
    [
        (5, 8, None),  # L < w: every key in reach
        (L, 8, None),
        (L, 8, 3),  # w - 1 no multiple of the block: 3 blocks on each side
        (L, 8, 16),  # block larger than the window: padded queries with no real key in reach
        (L, 1, None),  # w = 1: each token sees only itself
        (L, 13, 5),
    ],
)
def test_swa_matches_reference(length: int, window: int, block_size: int | None) -> None:
    assert_matches_reference(swa(window, block_size), length)


# -- properties that need neither implementation -----------------------------------------------
def _tie_directions(m: torch.nn.Module) -> None:
    """Copy each forward-direction parameter onto its flipped-scan twin (``*_b``)."""
    params = dict(m.named_parameters())
    twins = {
        "conv1d_b.weight": "conv1d.weight", "conv1d_b.bias": "conv1d.bias",
        "x_proj_b.weight": "x_proj.weight", "dt_proj_b.weight": "dt_proj.weight",
        "dt_proj_b.bias": "dt_proj.bias", "A_b_log": "A_log", "D_b": "D", "dt_bias_b": "dt_bias",
    }  # fmt: skip
    with torch.no_grad():
        for twin, source in twins.items():
            if twin in params:
                params[twin].copy_(params[source])


@pytest.mark.parametrize("make", [mamba, mamba2], ids=["mamba", "mamba2"])
def test_tied_directions_commute_with_flipping_the_sequence(make) -> None:
    """With both directions' parameters equal, reversing the input reverses the output (the
    flipped scan of the flipped input is the forward scan); a wrong flip or an off-by-one in the
    backward conv breaks it."""
    m = make()
    _tie_directions(m)
    x = torch.randn(B, L, m.d_model, dtype=F64)
    assert_close(m(x.flip(1)), m(x).flip(1))


@pytest.mark.parametrize("make", [mamba, mamba2], ids=["mamba", "mamba2"])
def test_first_output_reads_the_last_token_and_causal_does_not(make) -> None:
    x = torch.randn(B, L, make().d_model, dtype=F64)
    later = x.clone()
    later[:, -1] += 1.0
    bidirectional, causal = make(causal=False), make(causal=True)
    assert (bidirectional(x)[:, 0] - bidirectional(later)[:, 0]).abs().max() > 1e-6
    assert_close(causal(x)[:, 0], causal(later)[:, 0])


def test_swa_window_covering_the_sequence_is_bidirectional_attention() -> None:
    m = swa(window=L)
    full = Attention(24, heads=4, kv_heads=2, causal=False, dtype=F64)
    full.load_state_dict(m.state_dict())
    x = torch.randn(B, L, 24, dtype=F64)
    assert_close(m(x), full(x))


def test_swa_window_is_symmetric() -> None:
    """Token i reads j iff |i - j| < w: perturbing token 20 moves outputs 20-w+1 .. 20+w-1 only."""
    m, w, j = swa(window=4), 4, 20
    x = torch.randn(1, L, 24, dtype=F64)
    moved = x.clone()
    moved[:, j] += 1.0
    changed = (m(x) - m(moved)).abs().amax(-1)[0] > 1e-12
    assert changed.nonzero().flatten().tolist() == list(range(j - w + 1, j + w))


# -- parameters, costs, decoding ---------------------------------------------------------------
def test_causal_parameter_names_unchanged_and_bidirectional_adds_the_flipped_scan() -> None:
    causal, bidir = mamba(causal=True), mamba(causal=False)
    extra = set(dict(bidir.named_parameters())) - set(dict(causal.named_parameters()))
    assert extra == {
        "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
        "dt_proj_b.bias", "A_b_log", "D_b",
    }  # fmt: skip
    causal2, bidir2 = mamba2(causal=True), mamba2(causal=False)
    extra2 = set(dict(bidir2.named_parameters())) - set(dict(causal2.named_parameters()))
    assert extra2 == {"conv1d_b.weight", "conv1d_b.bias", "dt_bias_b", "A_b_log", "D_b"}
    assert set(dict(swa(8).named_parameters())) == set(dict(swa(8, causal=True).named_parameters()))


@pytest.mark.parametrize("causal", [True, False])
def test_ir_parameter_counts_match_the_modules(causal: bool) -> None:
    from archgen.ir.ops import Mamba as MambaOp
    from archgen.ir.ops import Mamba2 as Mamba2Op
    from archgen.mixers.registry import build_module

    for op in (
        MambaOp(d_model=D, d_state=5, d_conv=3, causal=causal),
        Mamba2Op(d_model=24, d_state=6, d_conv=3, head_dim=8, chunk_size=8, causal=causal),
    ):
        module = build_module(op)
        assert op.params() == sum(p.numel() for p in module.parameters()), op


@pytest.mark.parametrize(
    "make",
    [mamba, mamba2, lambda causal=False: swa(8, causal=causal)],
    ids=["mamba", "mamba2", "swa"],
)
def test_bidirectional_mixers_refuse_to_decode(make) -> None:
    m = make()
    with pytest.raises(
        NotImplementedError, match=r"bidirectional .* \(causal=False\) cannot decode"
    ):
        m.init_state(1)
    state = make(causal=True).init_state(1)
    with pytest.raises(NotImplementedError, match="cannot decode"):
        m.step(torch.randn(1, m.d_model, dtype=F64), state, torch.tensor(0))


# -- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    [
        Mamba(16, d_state=4, scan="chunked", causal=False),
        Mamba2(16, d_state=8, head_dim=8, chunk_size=4, causal=False),
        SlidingWindowAttention(16, heads=2, window=3, block_size=2, causal=False),
    ],
    ids=["mamba", "mamba2", "swa"],
)
def test_exports_with_a_dynamic_length(module: torch.nn.Module) -> None:
    assert traces_with_dynamic_length(module.eval(), 16, max_len=64) == "ok"
