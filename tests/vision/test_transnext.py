"""TransNeXt's aggregated attention and cosine attention: production forward vs the loop-level
float64 reference (forward and backward, inputs and every parameter) at odd grids with borders;
what the weights mean (learnable tokens after the softmax, masked padding, length scale); IR
parameter counts equal torch's; the official TransNeXt-Micro's size."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.ir import ops
from archgen.ir.ops.transnext import cpb_axis_table, window_counts
from archgen.mixers.registry import build_module
from archgen.mixers.transnext import AggregatedAttention, CosineAttention
from tests.conftest import ROOT, archgen
from tests.tolerances import assert_close
from tests.vision.reference_check import assert_matches_reference, perturbed

# name -> (module factory, input shape [B, H, W, C]); odd grids: most positions are borders
MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "aa-5x7-sr1": (
        lambda: AggregatedAttention(6, height=5, width=7, heads=2, sr=1, cpb_hidden=8),
        (2, 5, 7, 6),
    ),
    "aa-9x3-sr3": (
        lambda: AggregatedAttention(9, height=9, width=3, heads=3, sr=3, cpb_hidden=7),
        (2, 9, 3, 9),
    ),
    "aa-5x5-window5": (
        lambda: AggregatedAttention(4, height=5, width=5, heads=1, window=5, sr=5, cpb_hidden=5),
        (1, 5, 5, 4),
    ),
    "aa-3x9-no-qkv-bias": (
        lambda: AggregatedAttention(4, height=3, width=9, heads=2, sr=3, qkv_bias=False),
        (2, 3, 9, 4),
    ),
    "aa-window1": (
        lambda: AggregatedAttention(4, height=3, width=5, heads=2, window=1, sr=1, cpb_hidden=6),
        (1, 3, 5, 4),
    ),
    "cosine-3x5": (
        lambda: CosineAttention(6, height=3, width=5, heads=3, cpb_hidden=10),
        (2, 3, 5, 6),
    ),
    "cosine-1x2": (lambda: CosineAttention(4, height=1, width=2, heads=2), (2, 1, 2, 4)),
    "cosine-no-bias": (
        lambda: CosineAttention(4, height=5, width=3, heads=1, qkv_bias=False, cpb_hidden=9),
        (1, 5, 3, 4),
    ),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_matches_reference_forward_and_backward(name: str) -> None:
    make, shape = MODULES[name]
    torch.manual_seed(sum(map(ord, name)))
    # every parameter away from its initial value (zeros, the tokens)
    module = perturbed(make().double(), 0.3)
    x = torch.randn(*shape, dtype=torch.float64)
    grads = assert_matches_reference(module, x)
    # every parameter reaches the output, but for the full attention's last CPB bias: one
    # constant per head added to all of a query's logits, which the softmax cancels
    reaching = [
        (n, g.abs().sum() > 1e-12)
        for (n, _), g in zip(module.named_parameters(), grads, strict=True)
        if not (isinstance(module, CosineAttention) and n == "cpb_fc2.bias")
    ]
    assert all(ok for _, ok in reaching), reaching


def _constant_values(module: AggregatedAttention, beta: torch.Tensor) -> None:
    """Values 1 in every channel, proj the identity, no learnable tokens, bias ``beta``: the
    output is then the sum of the aggregation weights each query gives its keys."""
    d = module.d_model
    with torch.no_grad():
        module.kv.weight[d:].zero_()
        module.kv.bias[d:].fill_(1.0)
        module.proj.weight.copy_(torch.eye(d))
        module.proj.bias.zero_()
        module.learnable_tokens.zero_()
        module.learnable_bias.copy_(beta.view(module.heads, 1, -1))


def test_learnable_bias_adds_after_the_softmax_on_positions_inside_the_grid() -> None:
    """softmax weights sum to 1; the bias beta_j is added after it, at each window position j
    inside the grid only (padding is masked, and its zero values carry nothing)."""
    m = AggregatedAttention(4, height=5, width=3, heads=1, sr=1).double()
    beta = torch.arange(1.0, 10.0, dtype=torch.float64) / 100  # offsets (dy, dx) row-major
    _constant_values(m, beta)
    out = m(torch.randn(2, 5, 3, 4, dtype=torch.float64))
    assert_close(out[:, 2, 1], (1 + beta.sum()).expand(2, 4))  # interior: the whole window
    # top-left corner: offsets (0, 0) (0, 1) (1, 0) (1, 1) of the centred window -> j 4 5 7 8
    assert_close(out[:, 0, 0], (1 + beta[[4, 5, 7, 8]].sum()).expand(2, 4))
    # bottom edge, middle column: rows -1 and 0 only -> j 0..5
    assert_close(out[:, 4, 1], (1 + beta[:6].sum()).expand(2, 4))


def test_length_scale_counts_the_keys_each_query_sees() -> None:
    m = AggregatedAttention(4, height=8, width=6, heads=2, sr=2)  # 4 x 3 = 12 pooled tokens
    seen = m.keys_seen.view(8, 6)
    assert seen[0, 0] == 4 + 12 and seen[0, 3] == 6 + 12 and seen[4, 2] == 9 + 12
    assert seen[7, 5] == 4 + 12 and seen[7, 0] == 4 + 12 and seen[3, 5] == 6 + 12
    assert window_counts(5, 5) == [3, 4, 5, 4, 3]
    softplus = nn.functional.softplus(m.temperature[0, 0, 0]).item()
    assert math.isclose(softplus, 1 / 0.24, rel_tol=1e-6)


def test_cpb_coordinates_are_log_spaced_offsets_to_cell_centres() -> None:
    # 56 rows pooled by 8 (TransNeXt-Micro stage 1): row 0 to the first cell's centre 3.5
    axis = cpb_axis_table(56, 8)
    offset = -3.5 * 8 / 55
    want = -math.log2(1 + abs(offset)) / 3
    assert math.isclose(axis.values[axis.index[0][0]], want)
    assert len(axis.index) == 56 and len(axis.index[0]) == 7
    # offsets are antisymmetric about the middle of the axis
    assert math.isclose(axis.values[axis.index[55][6]], -want)
    # full attention: offsets q - k, 0 on the diagonal, 2 * size - 1 distinct ones
    full = cpb_axis_table(7, 1)
    assert len(full.values) == 13 and full.values[full.index[3][3]] == 0.0


OPS = [
    ops.AggregatedAttention(d_model=24, height=8, width=6, heads=3, sr=2),
    ops.AggregatedAttention(d_model=8, height=9, width=9, heads=2, window=5, sr=3, qkv_bias=False),
    ops.CosineAttention(d_model=24, height=3, width=5, heads=4),
    ops.CosineAttention(d_model=8, height=2, width=2, heads=1, qkv_bias=False, cpb_hidden=16),
]


@pytest.mark.parametrize("op", OPS, ids=lambda o: f"{o.kind}-{o.d_model}")
def test_ir_parameter_count_is_torch_count(op: ops.Op) -> None:
    module = build_module(op)
    assert op.params() == sum(p.numel() for p in module.parameters())
    # the CPB MLP runs at the distinct coordinates the module holds
    assert op.cpb_coordinates() == module.cpb_offsets.shape[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize("op", OPS[::2], ids=lambda o: o.kind)
def test_constants_are_made_on_the_requested_device(op: ops.Op) -> None:
    module = build_module(op, device="meta", dtype=torch.float64)
    tensors = [*module.parameters(), *module.buffers()]
    assert all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in module.parameters())


def test_cost_grows_with_window_and_pooled_tokens() -> None:
    base = ops.AggregatedAttention(d_model=16, height=8, width=8, heads=2, sr=4)
    assert base.flops(64) < replace(base, sr=2).flops(64)
    assert base.flops(64) < replace(base, window=5).flops(64)
    # full attention is quadratic in the tokens: 4x the grid, more than 8x the flops (a 1-wide
    # CPB MLP, which the default 512 would dominate at these sizes)
    full = ops.CosineAttention(d_model=16, height=8, width=8, heads=2, cpb_hidden=1)
    bigger = replace(full, height=16, width=16)
    assert bigger.flops(256) > 8 * full.flops(64)


# both attentions, at grids with borders (8x8 pooled by 2) and a 2x2 last stage; the first CPB
# MLP at its full width (512), which the exporter does not fold into a constant, so the CPB
# computation itself is in the graph
EXPORTED = """\
model:
  name: transnext-export
  task: image-classification
  image_size: 16
  num_classes: 8
  stages:
    - width: 8
      depth: 1
      downsample: {kind: patch_embed, stride: 2, kernel: 3}
      block:
        - token_mixer: {kind: aggregated_attention, heads: 2, sr: 2}
          channel_mixer: {kind: convglu, hidden: 8}
    - width: 12
      depth: 1
      downsample: {kind: patch_embed, stride: 4, kernel: 5}
      block:
        - token_mixer: {kind: cosine_attention, heads: 3, cpb_hidden: 16}
          channel_mixer: {kind: convglu, hidden: 8}
"""

# what an exported graph may hold: no Unfold/Col2Im, DFT or resize (TensorRT lacks some)
ALLOWED_ONNX_OPS = {
    "Add", "Clip", "Concat", "Constant", "Conv", "Div", "Expand", "Gather", "Gelu", "Gemm",
    "LayerNormalization", "Log", "MatMul", "Mul", "Pad", "ReduceL2", "ReduceMean", "Relu",
    "Reshape", "Shape", "Sign", "Slice", "Softmax", "Softplus", "Split", "Squeeze", "Transpose",
    "Unsqueeze", "Where", "Abs", "Cast",
}  # fmt: skip


@pytest.mark.slow
def test_export_to_onnx_validates_every_block(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnx

    spec = tmp_path / "transnext.yaml"
    spec.write_text(EXPORTED)
    done = archgen("export", str(spec), "-o", str(tmp_path / "onnx"))
    assert done.returncode == 0, done.stderr
    numerics = json.loads((tmp_path / "onnx" / "numerics.json").read_text())
    assert numerics["passed"] and "stages.1.layers.0" in json.dumps(numerics)
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    used = {n.op_type for n in graph.graph.node}
    used |= {n.op_type for f in graph.functions for n in f.node}
    assert used <= ALLOWED_ONNX_OPS, used - ALLOWED_ONNX_OPS
    assert archgen("validate", str(spec)).returncode == 0


MICRO = ROOT / "examples" / "vision" / "transnext-micro.yaml"


def test_transnext_micro_has_the_official_size_and_runs_at_224() -> None:
    """The official TransNeXt-Micro: 12.8M parameters, as the README reports it (12.75M-12.85M),
    counting every learned tensor (the CPB MLPs and learnable tokens are parameters; the
    coordinate tables and masks are constants); it builds and runs one image at 224x224."""
    params = api.check(MICRO).total.params
    assert 12_750_000 <= params < 12_850_000
    graph = api.compile_spec(MICRO)
    model = build_model(graph)
    assert params == sum(p.numel() for p in model.parameters())
    micro_aa = graph.node("stages.0.layers.0.token_mixer").op
    assert isinstance(micro_aa, ops.AggregatedAttention) and micro_aa.pooled_tokens == 7 * 7
    with torch.no_grad():
        logits = model(torch.randn(1, 224, 224, 3))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
