"""SlidingWindowAttention: blocked production path vs per-query loop (float64, fwd + bwd), window
semantics by perturbation, ring-buffer decode, ONNX export with a dynamic length."""

from __future__ import annotations

import pytest
import torch

from archgen.mixers.attention import Attention
from archgen.mixers.swa import SlidingWindowAttention, sliding_window_attention
from tests.tolerances import assert_close

D, HEADS, KV_HEADS = 24, 4, 2


def make(window: int, block_size: int | None = None, dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    return SlidingWindowAttention(
        D, heads=HEADS, kv_heads=KV_HEADS, window=window, block_size=block_size, dtype=dtype
    )


def grads(module: torch.nn.Module, fn, x: torch.Tensor, g: torch.Tensor):
    """Output and gradients w.r.t. the input and every parameter of ``<fn(x), g>``."""
    module.zero_grad()
    x = x.detach().requires_grad_(True)
    y = fn(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize(
    ("length", "window", "block_size"),
    [
        (5, 8, None),  # L < w
        (8, 8, None),  # L == w
        (37, 8, None),  # L not a multiple of the default block (8)
        (37, 8, 3),  # w - 1 not a multiple of the block: 3 previous blocks
        (37, 8, 16),  # block larger than the window
        (37, 1, None),  # w = 1: each token sees only itself
        (37, 13, 5),
    ],
)
def test_forward_backward_match_reference(length: int, window: int, block_size: int | None):
    m = make(window, block_size)
    x = torch.randn(2, length, D, dtype=torch.float64)
    g = torch.randn(2, length, D, dtype=torch.float64)
    y, dx, dp = grads(m, m.forward, x, g)
    y_ref, dx_ref, dp_ref = grads(m, m.reference, x, g)
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)
    for name in dp_ref:
        assert_close(dp[name], dp_ref[name], msg=f"grad of {name}")


def test_window_covering_the_sequence_is_causal_attention():
    m = make(window=64)
    full = Attention(D, heads=HEADS, kv_heads=KV_HEADS, dtype=torch.float64)
    full.load_state_dict(m.state_dict())
    x = torch.randn(2, 37, D, dtype=torch.float64)
    assert_close(m(x), full(x))


@pytest.mark.parametrize("block_size", [None, 3])
def test_output_depends_exactly_on_the_window(block_size: int | None):
    """Perturbing token j must change outputs i with i - w < j <= i and nothing else."""
    window, length, j = 6, 29, 11
    m = make(window, block_size)
    x = torch.randn(1, length, D, dtype=torch.float64)
    x2 = x.clone()
    x2[:, j] += 1.0
    changed = (m(x2) - m(x)).abs().amax(dim=(0, 2)) > 1e-12
    expected = torch.zeros(length, dtype=torch.bool)
    expected[j : j + window] = True
    assert torch.equal(changed, expected)


def test_core_with_empty_band_edges_at_long_odd_length():
    """The core alone on [B, H, L, Dh] against a dense masked softmax, at a length that needs
    padding and several previous blocks."""
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 3, 53, 8, dtype=torch.float64).unbind(0)
    window = 10
    i = torch.arange(53)
    allowed = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    assert_close(sliding_window_attention(q, k, v, window=window, block_size=4), expected)


def test_decode_equals_forward_past_the_window():
    m = make(window=8)
    length = 37  # several wraps of the ring buffer
    x = torch.randn(2, length, D, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    shapes = [tuple(t.shape) for t in state]
    outputs = []
    for t in range(length):
        y_t, state = m.step(x[:, t], state, torch.tensor(t))
        outputs.append(y_t)
        assert [tuple(s.shape) for s in state] == shapes  # constant-size state
    assert_close(torch.stack(outputs, dim=1), m(x))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="window"):
        SlidingWindowAttention(D, heads=HEADS, window=0)


def test_onnx_export_with_dynamic_length(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = make(window=6, dtype=torch.float32).eval()
    x = torch.randn(2, 37, D)
    length = torch.export.Dim("L", min=2, max=4096)
    program = torch.onnx.export(m, (x,), dynamo=True, dynamic_shapes={"x": {1: length}})
    path = tmp_path / "swa.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (13, 70):
        xn = torch.randn(2, n, D)
        (out,) = session.run(None, {session.get_inputs()[0].name: xn.numpy()})
        with torch.no_grad():
            assert_close(torch.from_numpy(out), m(xn), msg=f"onnxruntime at L={n}")


def test_float32_forward_backward_against_float64_reference():
    m32 = make(window=8, block_size=3, dtype=torch.float32)
    m64 = make(window=8, block_size=3)
    m64.load_state_dict({n: p.double() for n, p in m32.state_dict().items()})
    x = torch.randn(2, 37, D, dtype=torch.float64)
    g = torch.randn(2, 37, D, dtype=torch.float64)
    y, dx, dp = grads(m32, m32.forward, x.float(), g.float())
    y_ref, dx_ref, dp_ref = grads(m64, m64.reference, x, g)
    assert_close(y, y_ref, dtype=torch.float32)
    assert_close(dx, dx_ref, dtype=torch.float32)
    for name in dp_ref:
        assert_close(dp[name], dp_ref[name], dtype=torch.float32, msg=f"grad of {name}")
