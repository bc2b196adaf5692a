"""CheckpointAttention (SCOUT): folded causal-SDPA production path vs per-query loop (float64,
fwd + bwd), the attention pattern by perturbation, s = 1 == causal attention, checkpoint-only
decode cache, ONNX export with a dynamic length."""

from __future__ import annotations

import pytest
import torch

from archgen.mixers.attention import Attention
from archgen.mixers.checkpoint_attention import CheckpointAttention, checkpoint_attention
from tests.tolerances import assert_close

D, HEADS, KV_HEADS = 24, 4, 2


def make(segment_size: int, dtype: torch.dtype = torch.float64) -> CheckpointAttention:
    torch.manual_seed(0)
    return CheckpointAttention(
        D, heads=HEADS, kv_heads=KV_HEADS, segment_size=segment_size, dtype=dtype
    )


def grads(module: torch.nn.Module, fn, x: torch.Tensor, g: torch.Tensor):
    """Output and gradients w.r.t. the input and every parameter of ``<fn(x), g>``."""
    module.zero_grad()
    x = x.detach().requires_grad_(True)
    y = fn(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


def allowed(length: int, s: int) -> torch.Tensor:
    """The SCOUT mask written down independently of both implementations."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    return (j == i) | ((j % s == s - 1) & (j < i))


@pytest.mark.parametrize(
    ("length", "segment_size"),
    [(203, 10), (37, 4), (40, 10), (3, 4), (4, 4), (23, 1)],
)
def test_forward_backward_match_reference(length: int, segment_size: int):
    m = make(segment_size)
    x = torch.randn(2, length, D, dtype=torch.float64)
    g = torch.randn(2, length, D, dtype=torch.float64)
    y, dx, dp = grads(m, m.forward, x, g)
    y_ref, dx_ref, dp_ref = grads(m, m.reference, x, g)
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)
    for name in dp_ref:
        assert_close(dp[name], dp_ref[name], msg=f"grad of {name}")


@pytest.mark.parametrize(("length", "segment_size"), [(61, 7), (9, 10), (30, 3)])
def test_core_matches_dense_masked_softmax(length: int, segment_size: int):
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 3, length, 8, dtype=torch.float64).unbind(0)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    mask = allowed(length, segment_size)
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    assert_close(checkpoint_attention(q, k, v, segment_size=segment_size), expected)


def test_segment_size_one_is_causal_attention_forward_and_backward():
    m = make(1)
    full = Attention(
        D, heads=HEADS, kv_heads=KV_HEADS, rope_theta=m.rope_theta, dtype=m.q_proj.weight.dtype
    )
    full.load_state_dict(m.state_dict())
    x = torch.randn(2, 37, D, dtype=torch.float64)
    g = torch.randn(2, 37, D, dtype=torch.float64)
    y, dx, dp = grads(m, m.forward, x, g)
    y_full, dx_full, dp_full = grads(full, full.forward, x, g)
    assert_close(y, y_full)
    assert_close(dx, dx_full)
    for name in dp_full:
        assert_close(dp[name], dp_full[name], msg=f"grad of {name}")


def test_output_depends_exactly_on_self_and_earlier_checkpoints():
    """Perturbing token j changes output j, and outputs i > j iff j is a checkpoint."""
    s, length = 4, 23
    m = make(s)
    x = torch.randn(1, length, D, dtype=torch.float64)
    mask = allowed(length, s)
    for j in (5, 7, 19):  # not a checkpoint, a checkpoint, the last complete checkpoint
        x2 = x.clone()
        x2[:, j] += 1.0
        changed = (m(x2) - m(x)).abs().amax(dim=(0, 2)) > 1e-12
        assert torch.equal(changed, mask[:, j]), f"perturbing token {j}"


def test_decode_equals_forward_and_caches_only_checkpoints():
    s, length = 4, 23
    m = make(s)
    x = torch.randn(2, length, D, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64, max_len=length)
    assert state[0].shape[2] == 6  # ceil(23 / 4) slots: s times fewer than a KV cache
    outputs = []
    for t in range(length):
        y_t, state = m.step(x[:, t], state, torch.tensor(t))
        outputs.append(y_t)
        filled = state[0].abs().amax(dim=(0, 1, 3)) > 0
        assert filled.sum() == (t + 1) // s  # one slot per completed segment, in order
        assert not filled[(t + 1) // s :].any()
    assert_close(torch.stack(outputs, dim=1), m(x))


def test_traced_decode_path_masks_the_fixed_cache_and_equals_forward(monkeypatch) -> None:
    # The path ONNX export and torch.compile take (tensor ops only), run eagerly in float64.
    import archgen.mixers.checkpoint_attention as module

    monkeypatch.setattr(module, "exporting", lambda: True)
    s, length = 3, 17
    m = make(s)
    x = torch.randn(2, length, D, dtype=torch.float64)
    state = m.init_state(2, dtype=torch.float64, max_len=length + 4)
    outputs = []
    for t in range(length):
        y_t, state = m.step(x[:, t], state, torch.tensor(t))
        outputs.append(y_t)
    assert_close(torch.stack(outputs, dim=1), m(x))


def test_decode_state_needs_the_longest_length() -> None:
    m = make(4)
    with pytest.raises(ValueError, match="max_len"):
        m.init_state(1)
    state = m.init_state(1, max_len=8, dtype=torch.float64)  # two slots: positions 0..7
    with pytest.raises(ValueError, match="beyond the checkpoint cache"):
        m.step(torch.randn(1, D, dtype=torch.float64), state, torch.tensor(8))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="segment_size"):
        CheckpointAttention(D, heads=HEADS, segment_size=0)


def test_onnx_export_with_dynamic_length(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = make(10, dtype=torch.float32).eval()
    x = torch.randn(2, 37, D)
    length = torch.export.Dim("L", min=2, max=4096)
    program = torch.onnx.export(m, (x,), dynamo=True, dynamic_shapes={"x": {1: length}})
    path = tmp_path / "checkpoint_attention.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (7, 203):  # shorter than one segment; many segments with a partial tail
        xn = torch.randn(2, n, D)
        (out,) = session.run(None, {session.get_inputs()[0].name: xn.numpy()})
        with torch.no_grad():
            assert_close(torch.from_numpy(out), m(xn), msg=f"onnxruntime at L={n}")


def test_float32_forward_backward_against_float64_reference():
    m32 = make(10, dtype=torch.float32)
    m64 = make(10)
    m64.load_state_dict({n: p.double() for n, p in m32.state_dict().items()})
    x = torch.randn(2, 203, D, dtype=torch.float64)
    g = torch.randn(2, 203, D, dtype=torch.float64)
    y, dx, dp = grads(m32, m32.forward, x.float(), g.float())
    y_ref, dx_ref, dp_ref = grads(m64, m64.reference, x, g)
    assert_close(y, y_ref, dtype=torch.float32)
    assert_close(dx, dx_ref, dtype=torch.float32)
    for name in dp_ref:
        assert_close(dp[name], dp_ref[name], dtype=torch.float32, msg=f"grad of {name}")
