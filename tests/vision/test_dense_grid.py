"""The dense mixer (JustDense) in a vision stage: non-causal over the stage's grid flattened
row-major, a fixed grid (``max_seq_len = H * W`` from the stage). Forward and backward against
the loop-level reference in float64 at odd grid sizes; the spec accepts it with
``causal: false`` only; the IR's counts equal torch's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.ir import ops
from archgen.ir.ops import IMAGE_TASK, Trait, layout_problem
from archgen.ir.types import TensorType, TypeRuleError
from archgen.mixers.dense import DenseMixer
from archgen.spec.loader import parse_spec
from tests.conftest import archgen
from tests.tolerances import assert_close
from tests.vision.reference_check import assert_matches_reference


@pytest.mark.parametrize(("shape", "heads"), [((2, 5, 3, 6), 2), ((1, 3, 7, 5), 1)])
def test_grid_matches_reference_forward_and_backward(shape: tuple[int, ...], heads: int) -> None:
    torch.manual_seed(3)
    _, h, w, d = shape
    module = DenseMixer(d, max_seq_len=h * w, heads=heads, causal=False).double()
    x = torch.randn(*shape, dtype=torch.float64)
    assert module(x).shape == x.shape
    assert_matches_reference(module, x)


def test_every_grid_position_reads_the_whole_grid() -> None:
    """Token (y, x) of head n is x + M_n[y W + x] . (that head's channels at every position) /
    sqrt(H W): written out over grid coordinates, and non-causal (the last row reaches the
    first position's gradient)."""
    h, w, d, heads = 3, 5, 4, 2
    m = DenseMixer(d, max_seq_len=h * w, heads=heads, causal=False).double()
    x = torch.randn(2, h, w, d, dtype=torch.float64, requires_grad=True)
    out = m(x)
    p = d // heads
    for y, xx in [(0, 0), (2, 4), (1, 3)]:
        for n in range(heads):
            ch = slice(n * p, (n + 1) * p)
            acc = sum(
                m.mixing[n, y * w + xx, yy * w + x2] * x[:, yy, x2, ch]
                for yy in range(h)
                for x2 in range(w)
            )
            assert_close(out[:, y, xx, ch], x[:, y, xx, ch] + acc / (h * w) ** 0.5)
    out[0, 0, 0].sum().backward()
    assert (x.grad[0, h - 1, w - 1] != 0).all()  # a later position reaches the first


def test_op_runs_on_a_grid_only_without_its_causal_mask() -> None:
    full = ops.DenseMixer(d_model=8, max_seq_len=15, heads=2, causal=False)
    masked = ops.DenseMixer(d_model=8, max_seq_len=15, heads=2, causal=True)
    assert full.has(Trait.GRID) and not masked.has(Trait.GRID)
    assert layout_problem(full, IMAGE_TASK) is None
    assert layout_problem(masked, IMAGE_TASK) is not None
    assert full.infer([TensorType((1, 5, 3, 8))]).shape == (1, 5, 3, 8)
    with pytest.raises(TypeRuleError, match="mixes 15 tokens, got a 4x4 grid"):
        full.infer([TensorType((1, 4, 4, 8))])


SPEC = """\
model:
  task: image-classification
  image_size: 15
  num_classes: 3
  stages:
    - width: 6
      depth: 1
      downsample: {kind: patch_embed, stride: 3}
      block:
        - token_mixer: {kind: dense, causal: false, heads: 2}
          channel_mixer: {kind: mlp, hidden: 10}
    - width: 10
      depth: 1
      downsample: {kind: patch_merge, factor: 5}
      block:
        - token_mixer: {kind: dense, causal: false, heads: 5}
"""


def test_a_stage_takes_dense_over_its_grid() -> None:
    """Grids 5x5 then 1x1: each dense matrix is (H W)^2 per head; IR count == torch count."""
    graph = api.compile_spec(parse_spec(SPEC, "dense.yaml"))
    first = graph.node("stages.0.layers.0.token_mixer").op
    assert isinstance(first, ops.DenseMixer) and first.max_seq_len == 25
    assert first.params() == 2 * 25 * 25
    assert graph.node("stages.1.layers.0.token_mixer").op.params() == 5 * 1 * 1
    model = build_model(graph)
    assert sum(p.numel() for p in model.parameters()) == sum(n.op.params() for n in graph.nodes)
    assert model(torch.randn(2, 15, 15, 3)).shape == (2, 3)


def test_causal_dense_in_a_stage_exits_2_at_causal(tmp_path: Path) -> None:
    (tmp_path / "dense.yaml").write_text(SPEC.replace("dense, causal: false, heads: 2", "dense"))
    done = archgen("check", "dense.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "dense.yaml:10:24: model.stages[0].block[0].token_mixer.causal: 'dense' with causal: "
        "true (its default) is a 1-D sequence mixer; over a stage's 2-D token grid it runs "
        "with causal: false"
    ) in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_dense_grid_exports_to_onnx_and_validates(tmp_path: Path) -> None:
    """`archgen export` (onnxruntime, block by block against the float64 eager reference): the
    flattened-grid matrix product is a plain MatMul (no Einsum)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnx

    (tmp_path / "dense.yaml").write_text(SPEC)
    done = archgen("export", "dense.yaml", "-o", "onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    kinds = {n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert "MatMul" in kinds and not kinds & {"Einsum", "DFT", "Resize"}
