"""iFormer: the inception mixer, the LayerScale MLP and the conv + BatchNorm downsampling equal
their plainly written float64 references forward and backward (inputs and every parameter) at
odd sizes; the IR's parameter counts equal torch's; the channel split follows the paper."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.ir import ops
from archgen.mixers.iformer import ConvBNEmbed, InceptionMixer, LayerScaleMLP
from archgen.mixers.registry import build_module
from tests.conftest import ROOT, archgen
from tests.tolerances import assert_close
from tests.vision.reference_check import assert_matches_reference, perturbed

TINY_EXAMPLE = ROOT / "examples" / "vision" / "iformer-tiny.yaml"

# name -> (module factory, input shape [B, H, W, C]); odd sizes wherever the pool allows them
MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "inception-pool2": (
        lambda: InceptionMixer(15, height=6, width=10, heads=5, attention_heads=1),
        (2, 6, 10, 15),
    ),
    "inception-pool3-bilinear": (
        lambda: InceptionMixer(
            14,
            height=9,
            width=3,
            heads=7,
            attention_heads=2,
            pool=3,
            upsample="bilinear",
            qkv_bias=False,
        ),
        (2, 9, 3, 14),
    ),
    "inception-bilinear-2": (
        lambda: InceptionMixer(
            15, height=6, width=10, heads=5, attention_heads=3, upsample="bilinear"
        ),
        (1, 6, 10, 15),
    ),
    "inception-pool1-layerscale": (
        lambda: InceptionMixer(
            18, height=5, width=7, heads=6, attention_heads=4, pool=1, layer_scale=0.5
        ),
        (2, 5, 7, 18),
    ),
    "layerscale-mlp": (lambda: LayerScaleMLP(7, hidden=11, layer_scale=0.3), (2, 3, 5, 7)),
    "conv-bn-embed": (
        lambda: ConvBNEmbed(9, in_channels=5, height=5, width=3, stride=2),
        (3, 10, 6, 5),
    ),
    "conv-bn-stem": (
        lambda: ConvBNEmbed(
            10, in_channels=3, height=3, width=5, stride=4, position_embedding=False
        ),
        (2, 12, 20, 3),
    ),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_matches_reference_forward_and_backward(name: str) -> None:
    make, shape = MODULES[name]
    torch.manual_seed(sum(map(ord, name)))
    module = perturbed(make().double(), 0.3)  # non-trivial weights, biases and scales
    x = torch.randn(*shape, dtype=torch.float64)
    assert_matches_reference(module, x)


def test_conv_bn_embed_reference_uses_running_statistics_in_eval() -> None:
    module = ConvBNEmbed(6, in_channels=3, height=3, width=5, stride=2).double()
    x = torch.randn(4, 6, 10, 3, dtype=torch.float64)
    module(x)  # one training step moves the running statistics off their start
    module.eval()
    assert_close(module(x), module.reference(x))


def test_low_frequency_path_sees_only_the_last_channels_and_pools() -> None:
    """With pool 2 and nearest upsampling, the attention's output is constant on each 2x2
    block, and it reads none of the high-frequency channels."""
    m = InceptionMixer(8, height=4, width=6, heads=4, attention_heads=1).double()
    x = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    low = m._low(x[..., m.high :])
    assert low.shape == (1, 4, 6, 2)
    assert torch.equal(low[:, 0::2, 0::2], low[:, 1::2, 1::2])
    # the high paths never read the low channels: their gradient comes from the low path only
    x.requires_grad_(True)
    m._low(x[..., m.high :]).sum().backward()
    assert x.grad is not None and torch.all(x.grad[..., : m.high] == 0)


OPS = [
    ops.InceptionMixer(d_model=96, height=56, width=56, heads=3, attention_heads=1),
    ops.InceptionMixer(
        d_model=14, height=9, width=3, heads=7, attention_heads=2, pool=3, qkv_bias=False
    ),
    ops.InceptionMixer(
        d_model=320, height=14, width=14, heads=10, attention_heads=9, pool=1, layer_scale=1e-6
    ),
    ops.LayerScaleMLP(d_model=12),
    ops.ConvBNEmbed(d_model=96, in_channels=3, height=56, width=56, stride=4),
    ops.ConvBNEmbed(d_model=20, in_channels=9, height=5, width=3, position_embedding=False),
]


@pytest.mark.parametrize("op", OPS, ids=lambda o: f"{o.kind}-{o.d_model}")
def test_ir_parameter_count_is_torch_count(op: ops.Op) -> None:
    module = build_module(op)
    assert op.params() == sum(p.numel() for p in module.parameters())


def test_channel_split_follows_the_paper() -> None:
    # iFormer-S stage 3, a block with attention_heads 7 of 10 (head width 32)
    op = ops.InceptionMixer(d_model=320, height=14, width=14, heads=10, attention_heads=7, pool=1)
    assert (op.low_dim, op.high_dim, op.fused_dim) == (224, 96, 416)
    assert op.flops(196) > op.flops(196 - 1) > 0


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"heads": 5, "attention_heads": 1}, "heads", "not divisible by heads 5"),
        ({"heads": 4, "attention_heads": 4}, "attention_heads", "must be < heads 4"),
        ({"heads": 8, "attention_heads": 1}, "attention_heads", "an odd number"),
        ({"heads": 4, "attention_heads": 1, "pool": 4}, "pool", "must divide the stage's 6x8"),
    ],
)
def test_bad_splits_are_problems(kwargs: dict, field: str, words: str) -> None:
    op = ops.InceptionMixer(d_model=8 if kwargs["heads"] == 8 else 12, height=6, width=8, **kwargs)
    found = [p for p in op.problems() if p.field == field]
    assert found and words in found[0].message, op.problems()


@pytest.mark.slow
def test_tiny_example_exports_to_onnx_and_validates(tmp_path: Path) -> None:
    """`archgen export` + `archgen validate` of examples/vision/iformer-tiny.yaml: every block
    matches the eager reference in onnxruntime, and the graph upsamples with a Resize that
    TensorRT runs (nearest or linear, never cubic) and has no DFT."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnx

    done = archgen("export", str(TINY_EXAMPLE), "-o", str(tmp_path / "onnx"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "onnx" / "numerics.json").read_text())["passed"]
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    modes = {onnx.helper.get_attribute_value(a) for n in resizes for a in n.attribute
             if a.name == "mode"}  # fmt: skip
    assert resizes and modes <= {b"nearest", b"linear"}
    assert not {"DFT", "STFT"} & {n.op_type for n in graph.node}
    assert archgen("validate", str(TINY_EXAMPLE)).returncode == 0


def test_official_iformer_s_counts_and_runs_at_224() -> None:
    """examples/vision/iformer-s.yaml is sail-sg/iFormer's iformer_small: `archgen check`'s
    count (the IR's) is the repository's 19.866M (its docstring's precision, 0.1 %), the torch
    model has exactly the IR's parameters, and one 224x224 image runs through it."""
    path = ROOT / "examples" / "vision" / "iformer-s.yaml"
    params = api.check(path).total.params
    assert abs(params - 19_866_000) <= 0.001 * 19_866_000, params
    graph = api.compile_spec(path)
    heads = [n.op.attention_heads for n in graph.nodes if isinstance(n.op, ops.InceptionMixer)]
    assert heads == [1] * 3 + [3] * 3 + [7] * 4 + [9] * 5 + [11] * 3  # the frequency ramp
    model = build_model(graph).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    with torch.no_grad():
        logits = model(torch.randn(1, 224, 224, 3))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
