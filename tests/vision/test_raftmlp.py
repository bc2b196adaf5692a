"""RaftMLP's cross-scale embedding and the official RaftMLP-S spec: the module against its
unfold-concatenate-linear reference in float64, forward and backward, at odd sizes; the IR's
parameter and FLOP counts against torch's; the spec rules of ``kernels``; RaftMLP-S's official
parameter count and one forward at 224x224."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.ir import ops
from archgen.mixers.raftmlp import CrossScaleEmbed
from archgen.mixers.registry import build_module
from tests.conftest import ROOT, archgen
from tests.vision.reference_check import assert_matches_reference

# (d_model, in_channels, stride, kernels, input [B, H, W, C]): odd widths and grids; padded
# kernels at every scale, one kernel, three kernels, stride 1 and an odd stride
CASES = {
    "raftmlp-stem": (7, 3, 4, (4, 8), (2, 12, 8, 3)),
    "three-scales": (5, 4, 2, (2, 4, 6), (2, 6, 10, 4)),
    "one-kernel": (9, 5, 2, (2,), (1, 6, 4, 5)),
    "stride-1": (6, 3, 1, (1, 3), (2, 5, 7, 3)),
    "odd-stride": (5, 3, 3, (3, 9), (1, 9, 6, 3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_forward_and_backward(name: str) -> None:
    d, cin, stride, kernels, shape = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    module = CrossScaleEmbed(d, in_channels=cin, stride=stride, kernels=kernels).double()
    x = torch.randn(*shape, dtype=torch.float64)
    assert module(x).shape == (shape[0], shape[1] // stride, shape[2] // stride, d)
    assert_matches_reference(module, x)


def test_each_kernel_sees_its_centred_neighbourhood() -> None:
    """Output (0, 1) of a stride-2 embedding with kernels 2 and 6 reads rows 0-3 (the 6x6
    patch, padded by 2, starts at row -2) and columns 0-5 (starting at 2 - 2): nothing else."""
    m = CrossScaleEmbed(3, in_channels=1, stride=2, kernels=(2, 6)).double()
    x = torch.randn(1, 8, 8, 1, dtype=torch.float64, requires_grad=True)
    m(x)[0, 0, 1, 0].backward()
    rows, cols = (x.grad[0, :, :, 0] != 0).nonzero().unbind(1)
    assert set(rows.tolist()) == {0, 1, 2, 3} and set(cols.tolist()) == set(range(6))


@pytest.mark.parametrize("name", sorted(CASES))
def test_ir_counts_equal_torch(name: str) -> None:
    d, cin, stride, kernels, shape = CASES[name]
    op = ops.CrossScaleEmbed(d_model=d, in_channels=cin, stride=stride, kernels=kernels)
    module = build_module(op)
    assert op.params() == sum(p.numel() for p in module.parameters())
    x = torch.randn(1, shape[1], shape[2], cin)
    with FlopCounterMode(display=False) as counter:
        module(x)
    # torch counts the convolutions (2 per multiply-add); the IR adds nothing else
    assert op.flops(shape[1] * shape[2]) == counter.get_total_flops()


def test_default_kernels_are_stride_and_twice_stride() -> None:
    op = ops.CrossScaleEmbed(d_model=64, in_channels=3, stride=4)
    assert op.resolved().kernels == (4, 8) and op.resolved().paddings() == (0, 2)
    assert op.params() == (16 + 64) * 3 * 64 + 64  # RaftMLP-S's first embedding


SPEC = """\
model:
  task: image-classification
  image_size: 16
  num_classes: 4
  stages:
    - width: 8
      depth: 1
      downsample: {kind: cross_scale_embed, stride: 4, kernels: KERNELS}
      block:
        - token_mixer: {kind: raft, axis: vertical}
"""


@pytest.mark.parametrize(
    ("kernels", "expected"),
    [
        ("[4, 6]", "kernels: 6 is not a multiple of stride 4 with 6 - 4 even"),
        ("[4, 4]", "kernels: must be distinct, got [4, 4]"),
        ("[]", "kernels: must list 1 to 8 sizes, got 0"),
        ("[4, 0]", "kernels[1]: must be >= 1, got 0"),
        ("[4, 8.0]", "kernels[1]: expected an integer"),
    ],
)
def test_bad_kernels_exit_2_with_the_field(kernels: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "cse.yaml").write_text(SPEC.replace("KERNELS", kernels))
    done = archgen("check", "cse.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cse.yaml:8:" in done.stderr and f"model.stages[0].downsample.{expected}" in done.stderr
    assert "Traceback" not in done.stderr


RAFTMLP_S = ROOT / "examples" / "vision" / "raftmlp-s.yaml"


def test_raftmlp_s_has_the_official_parameter_count() -> None:
    """9.87M (research/mixers.md §5e; the paper's 9.9M): `archgen check`'s count, the IR's."""
    report = api.check(RAFTMLP_S)
    assert 9_865_000 <= report.total.params <= 9_875_000
    graph = api.compile_spec(RAFTMLP_S)
    assert report.total.params == sum(n.op.params() for n in graph.nodes)
    # every stage's grid as the official model's: 56, 28, 14, 7
    grids = [graph.value_types[graph.node(f"stages.{i}.downsample").outputs[0]] for i in range(4)]
    assert [t.shape[1:] for t in grids] == [(56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512)]


def test_raftmlp_s_builds_and_runs_at_224() -> None:
    graph = api.compile_spec(RAFTMLP_S)
    model = build_model(graph).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(n.op.params() for n in graph.nodes)
    with torch.no_grad():
        logits = model(torch.randn(1, 224, 224, 3))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_raftmlp_s_resolves_and_matches_the_schema(tmp_path: Path) -> None:
    resolved = tmp_path / "raftmlp-s.yaml"
    resolved.write_text(api.resolved_yaml(RAFTMLP_S))
    assert api.check(resolved).total == api.check(RAFTMLP_S).total
    validator = jsonschema.Draft202012Validator(api.json_schema())
    assert not list(validator.iter_errors(yaml.safe_load(RAFTMLP_S.read_text())))


@pytest.mark.slow
def test_cross_scale_embed_exports_to_onnx_and_validates(tmp_path: Path) -> None:
    """`archgen export` checks every block against the float64 eager reference on
    onnxruntime; the embedding is Conv nodes (no Resize: the grid is fixed, no DFT)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnx

    (tmp_path / "cse.yaml").write_text(SPEC.replace("KERNELS", "[4, 8]"))
    done = archgen("export", "cse.yaml", "-o", "onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    kinds = {n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert "Conv" in kinds and not kinds & {"Resize", "DFT"}
    assert archgen("validate", "cse.yaml", cwd=tmp_path).returncode == 0
