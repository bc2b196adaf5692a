"""DenseMixer (JustDense): batched matmul vs double loop (float64, fwd + bwd), causality, length
checks, decode, initialisation, ONNX export with a dynamic length."""

from __future__ import annotations

import math

import pytest
import torch

from archgen.mixers.dense import DenseMixer
from tests.tolerances import assert_close

D, L_MAX = 24, 40


def make(
    *,
    heads: int = 3,
    causal: bool = True,
    scale_by_length: bool = False,
    dtype: torch.dtype = torch.float64,
) -> DenseMixer:
    torch.manual_seed(0)
    return DenseMixer(
        D,
        max_seq_len=L_MAX,
        heads=heads,
        causal=causal,
        scale_by_length=scale_by_length,
        dtype=dtype,
    )


def grads(module: torch.nn.Module, fn, x: torch.Tensor, g: torch.Tensor):
    """Output and gradients w.r.t. the input and every parameter of ``<fn(x), g>``."""
    module.zero_grad()
    x = x.detach().requires_grad_(True)
    y = fn(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("length", [1, 17, L_MAX])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("heads", "scale_by_length"), [(1, False), (3, False), (3, True)])
def test_forward_backward_match_reference(
    length: int, causal: bool, heads: int, scale_by_length: bool
):
    m = make(heads=heads, causal=causal, scale_by_length=scale_by_length)
    x = torch.randn(2, length, D, dtype=torch.float64)
    g = torch.randn(2, length, D, dtype=torch.float64)
    y, dx, dp = grads(m, m.forward, x, g)
    y_ref, dx_ref, dp_ref = grads(m, m.reference, x, g)
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)
    assert_close(dp["mixing"], dp_ref["mixing"])


def test_formula_on_one_head_by_hand():
    """y = x + M[:L, :L] x / sqrt(L_max) for one head, written with plain matrix algebra."""
    m = make(heads=1, causal=False)
    x = torch.randn(1, 5, D, dtype=torch.float64)
    expected = x[0] + m.mixing[0, :5, :5] @ x[0] / math.sqrt(L_MAX)
    assert_close(m(x)[0], expected)


def test_scales_agree_at_full_length_and_differ_below():
    const, by_length = make(), make(scale_by_length=True)
    x = torch.randn(2, L_MAX, D, dtype=torch.float64)
    assert_close(const(x), by_length(x))
    short = x[:, :10]
    delta_const, delta_len = const(short) - short, by_length(short) - short
    assert_close(delta_len, delta_const * math.sqrt(L_MAX / 10))


def test_causal_outputs_ignore_the_future():
    m = make()
    x = torch.randn(2, 31, D, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 20:] = torch.randn_like(x2[:, 20:])
    assert_close(m(x2)[:, :20], m(x)[:, :20])
    assert (m(x2)[:, 20:] - m(x)[:, 20:]).abs().max() > 1e-3


def test_too_long_sequence_is_a_clear_error():
    m = make()
    with pytest.raises(ValueError, match="max_seq_len=40"):
        m(torch.randn(1, L_MAX + 1, D, dtype=torch.float64))


def test_decode_equals_forward():
    m = make()
    length = 37
    x = torch.randn(2, length, D, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64)
    outputs = []
    for t in range(length):
        y_t, state = m.step(x[:, t], state, torch.tensor(t))
        outputs.append(y_t)
    assert state[0].shape == (2, length, D)
    assert_close(torch.stack(outputs, dim=1), m(x))


@pytest.mark.parametrize(
    ("causal", "scale_by_length", "reason"),
    [(False, False, "non-causal"), (True, True, "final length")],
)
def test_decode_refused_where_it_cannot_equal_forward(
    causal: bool, scale_by_length: bool, reason: str
):
    m = make(causal=causal, scale_by_length=scale_by_length)
    with pytest.raises(NotImplementedError, match=reason):
        m.init_state(1)
    with pytest.raises(NotImplementedError, match=reason):
        m.step(torch.zeros(1, D, dtype=torch.float64), (torch.zeros(1, 0, D),), torch.tensor(0))


def test_xavier_normal_initialisation():
    """Hydra's Dense applies xavier_normal_ to the whole [heads, L, L] tensor:
    std = sqrt(2 / (fan_in + fan_out)) with fan_in = L * L, fan_out = heads * L."""
    heads, n = 2, 64
    torch.manual_seed(0)
    m = DenseMixer(D - D % heads, max_seq_len=n, heads=heads)
    expected = math.sqrt(2.0 / (n * n + heads * n))
    # The sample std of N normals has relative standard error ~1/sqrt(2N) (0.8 % here); 5 % is
    # > 6 standard errors, while a per-head xavier init (std 1/sqrt(n)) would be 5.6x off.
    assert abs(m.mixing.std().item() / expected - 1) < 0.05


def test_onnx_export_with_dynamic_length(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = make(dtype=torch.float32).eval()
    x = torch.randn(2, 23, D)
    length = torch.export.Dim("L", min=2, max=L_MAX)
    program = torch.onnx.export(m, (x,), dynamo=True, dynamic_shapes={"x": {1: length}})
    path = tmp_path / "dense.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (5, L_MAX):
        xn = torch.randn(2, n, D)
        (out,) = session.run(None, {session.get_inputs()[0].name: xn.numpy()})
        with torch.no_grad():
            assert_close(torch.from_numpy(out), m(xn), msg=f"onnxruntime at L={n}")
