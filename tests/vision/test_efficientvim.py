"""EfficientViM: HSM-SSD (two outputs), depthwise conv + BN, the BN FFN and the convex residual.
Production forward vs the plainly written float64 reference, forward and backward (inputs and
every parameter) on odd, non-square grids; BatchNorm folding in eval mode; IR parameter counts
equal torch's; the IR's shapes and costs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from archgen import api
from archgen.backends.torch_model import build_model
from archgen.ir import ops
from archgen.ir.cost import parameter_count
from archgen.ir.graph import Graph
from archgen.ir.types import BATCH, TensorType
from archgen.mixers.efficientvim import HSMSSD, BatchNormFFN, ConvexResidual, DepthwiseConv
from archgen.mixers.registry import build_module
from archgen.passes import InferShapes, Verify, run_pipeline
from archgen.spec.loader import parse_spec
from tests.conftest import archgen
from tests.tolerances import assert_close

# name -> (module factory, input shapes); odd, non-square grids
MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[tuple[int, ...], ...]]] = {
    "hsm_ssd": (lambda: HSMSSD(7, state_dim=5), ((2, 3, 5, 7),)),
    "hsm_ssd-expand2-k5": (lambda: HSMSSD(6, state_dim=3, expand=2, kernel=5), ((1, 5, 3, 6),)),
    "hsm_ssd-state-gt-tokens": (lambda: HSMSSD(5, state_dim=9), ((2, 1, 7, 5),)),
    "dwconv-bn": (lambda: DepthwiseConv(7), ((2, 5, 3, 7),)),
    "dwconv-bias-k5": (lambda: DepthwiseConv(5, kernel=5, batchnorm=False), ((2, 3, 7, 5),)),
    "bn_ffn": (lambda: BatchNormFFN(5, hidden=11), ((2, 3, 5, 5),)),
    "convex_residual": (lambda: ConvexResidual(7), ((2, 3, 5, 7), (2, 3, 5, 7))),
}


def _perturbed(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    module = make().double()
    with torch.no_grad():  # non-trivial weights (the zero-init BN scales too) and BN statistics
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand_like(buf))
    return module


def _outputs_and_grads(
    fn: Callable[..., object], module: nn.Module, xs: list[torch.Tensor]
) -> list[torch.Tensor]:
    inputs = [x.clone().requires_grad_(True) for x in xs]
    out = fn(*inputs)
    outs = list(out) if isinstance(out, tuple) else [out]
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, dtype=o.dtype, generator=gen)).sum() for o in outs)
    loss.backward()  # type: ignore[union-attr]
    found = [o.detach() for o in outs] + [x.grad for x in inputs]
    found += [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    return found


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_matches_reference_forward_and_backward(name: str, training: bool) -> None:
    make, shapes = MODULES[name]
    module = _perturbed(make, hash(name) % 1000).train(training)
    xs = [torch.randn(*s, dtype=torch.float64) for s in shapes]
    ref_module = getattr(module, "reference")  # noqa: B009
    prod = _outputs_and_grads(module, module, xs)
    ref = _outputs_and_grads(ref_module, module, xs)
    assert len(prod) == len(ref)
    for a, b in zip(prod, ref, strict=True):
        assert_close(a, b)


def test_hidden_state_is_the_second_output_and_reads_every_token() -> None:
    """h'' is global: every state column depends on every token (softmax over tokens)."""
    m = _perturbed(lambda: HSMSSD(4, state_dim=3), 3)
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    _, state = m(x)
    state[0, 2, 1].backward()
    assert (x.grad[0].abs().sum(-1) > 0).all()


def test_eval_mode_folds_batchnorm_into_the_conv() -> None:
    """Eval forward = conv then BN with running statistics (a differently written reference)."""
    m = _perturbed(lambda: DepthwiseConv(6), 4).eval()
    x = torch.randn(2, 5, 3, 6, dtype=torch.float64)
    conv = m.conv(x.permute(0, 3, 1, 2))
    assert m.bn is not None
    want = nn.functional.batch_norm(
        conv, m.bn.running_mean, m.bn.running_var, m.bn.weight, m.bn.bias, False, 0.0, m.bn.eps
    ).permute(0, 2, 3, 1)
    assert_close(m(x), want)


OPS = [
    ops.HSMSSD(d_model=12, state_dim=5),
    ops.HSMSSD(d_model=10, state_dim=9, expand=2, kernel=5),
    ops.DepthwiseConv(d_model=12),
    ops.DepthwiseConv(d_model=12, kernel=5, batchnorm=False),
    ops.BatchNormFFN(d_model=12),
    ops.BatchNormFFN(d_model=12, hidden=17),
    ops.ConvexResidual(d_model=12),
]


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.kind)
def test_ir_parameter_count_is_torch_count(op: ops.Op) -> None:
    module = build_module(op)
    assert op.params() == sum(p.numel() for p in module.parameters())


def test_hsm_ssd_types_and_cost() -> None:
    op = ops.HSMSSD(d_model=8, state_dim=5)
    grid = TensorType((BATCH, 3, 7, 8))
    y, state = op.infer_outputs([grid])
    assert y == grid and state == TensorType((BATCH, 5, 8))
    # the state-mixer projections cost O(N D^2), independent of the tokens L
    per_token = op.flops(42) - op.flops(21)
    assert op.flops(21) - per_token == op.flops(0) > 0
    assert op.flops(0) == 2 * 5 * 8 * 16 + 6 * 5 * 8 + 2 * 5 * 8 * 8
    assert [p.field for p in ops.HSMSSD(d_model=8, kernel=4).problems()] == ["kernel"]


# -- the spec: residual: convex, pre_norm: false ---------------------------------------------------

BLOCK = """\
model:
  name: evim
  task: image-classification
  image_size: 12
  num_classes: 4
  norm_eps: 1.0e-5
  stages:
    - width: 6
      depth: 1
      downsample: {kind: patch_embed, stride: 2, kernel: 3}
      block:
        - {token_mixer: {kind: dwconv}, pre_norm: false, residual: convex}
        - {token_mixer: {kind: hsm_ssd, state_dim: 5}, residual: convex}
        - token_mixer: {kind: dwconv}
          channel_mixer: {kind: bn_ffn, mlp_ratio: 2}
          pre_norm: false
          residual: convex
        - token_mixer: {kind: attention, heads: 2, rope_theta: null}
"""


def _block_graph(text: str = BLOCK) -> Graph:
    return api.compile_spec(parse_spec(text, "evim.yaml"))


def test_convex_layers_get_convex_residuals_and_no_pre_norm() -> None:
    graph = _block_graph()
    kinds = {n.name: n.op.kind for n in graph.nodes}
    layers = "stages.0.layers"
    for branch in ("0.token", "1.token", "2.token", "2.channel"):
        assert kinds[f"{layers}.{branch}_residual"] == "convex_residual"
    assert kinds[f"{layers}.3.token_residual"] == "residual_add"  # the default is unchanged
    # pre_norm: false -> the mixer reads the stream itself
    assert f"{layers}.0.token_norm" not in kinds and f"{layers}.2.channel_norm" not in kinds
    assert graph.node(f"{layers}.0.token_mixer").inputs == ("stages.0.downsample",)
    assert kinds[f"{layers}.1.token_norm"] == "layernorm"
    # the HSM-SSD node names its hidden state, typed [B, N, D]
    ssd = graph.node(f"{layers}.1.token_mixer")
    assert ssd.outputs == (ssd.name, f"{ssd.name}.out1")
    typed = run_pipeline(graph, [Verify(), InferShapes()])
    assert typed.value_types[f"{ssd.name}.out1"] == TensorType((BATCH, 5, 6))


def test_convex_block_params_and_forward() -> None:
    graph = _block_graph()
    model = build_model(graph)
    assert parameter_count(graph) == sum(p.numel() for p in model.parameters())
    theta = model.get_submodule("stages.0.layers.0.token_residual").theta
    assert torch.allclose(theta, torch.full_like(theta, 1e-4))  # official init: a ~ 0.5
    x = torch.randn(3, 12, 12, 3)
    model.train()
    model(x).sum().backward()  # BatchNorm on batch statistics
    assert theta.grad is not None and theta.grad.abs().sum() > 0
    model.eval()
    assert model(x).shape == (3, 4)


def test_vision_layer_defaults_are_not_dumped() -> None:
    """A spec that does not use residual / pre_norm dumps as before they existed."""
    plain = BLOCK.split("        - {token_mixer: {kind: dwconv}")[0]
    plain += "        - token_mixer: {kind: attention, heads: 2, rope_theta: null}\n"
    dumped = parse_spec(plain, "p.yaml").model_dump(mode="json")
    layer = dumped["model"]["stages"][0]["block"][0]
    assert "residual" not in layer and "pre_norm" not in layer
    dumped = parse_spec(BLOCK, "evim.yaml").model_dump(mode="json")
    assert dumped["model"]["stages"][0]["block"][0]["residual"] == "convex"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("residual: convex}", "residual: convx}", "model.stages[0].block[0].residual"),
        ("pre_norm: false, residual", "pre_norm: 0, residual", "model.stages[0].block[0].pre_norm"),
        ("pre_norm: false, residual", "prenorm: false, residual", "did you mean 'pre_norm'"),
        ("state_dim: 5}", "state_dim: 5, kernel: 4}", "block[1].token_mixer.kernel: must be odd"),
    ],
)
def test_bad_block_exits_2_with_the_field(
    old: str, new: str, expected: str, tmp_path: Path
) -> None:
    spec = tmp_path / "evim.yaml"
    spec.write_text(BLOCK.replace(old, new, 1))
    done = archgen("check", "evim.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "evim.yaml:" in done.stderr and expected in done.stderr
    assert "Traceback" not in done.stderr


# -- export: BatchNorm folded, eval-mode ONNX equals eager -----------------------------------------


@pytest.mark.slow
def test_onnx_export_folds_batchnorm_and_equals_eager(tmp_path: Path) -> None:
    """Weights with non-trivial BatchNorm statistics; the exported graph has no
    BatchNormalization and no product of two weights left (BN folded into the convs), and
    onnxruntime gives the eager eval-mode model's logits."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnx
    import onnxruntime as ort

    from archgen.backends.weights import save_weights
    from archgen.export import export

    spec = tmp_path / "evim.yaml"
    spec.write_text(BLOCK)
    model = _perturbed(lambda: build_model(_block_graph()), 5).float().eval()
    save_weights(model, tmp_path / "weights.safetensors")
    result = export(spec, tmp_path / "onnx", weights=tmp_path / "weights.safetensors")
    assert result.report.passed
    proto = onnx.load(tmp_path / "onnx" / "model.onnx")
    ops_used = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops_used and "Conv" in ops_used
    weights = {i.name for i in proto.graph.initializer}
    assert not [n for n in proto.graph.node if n.op_type == "Mul" and set(n.input) <= weights]
    x = torch.randn(3, 12, 12, 3)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    (logits,) = session.run(None, {"pixels": x.numpy()})
    with torch.no_grad():
        want = model(x)
    assert_close(torch.from_numpy(logits), want, dtype=torch.float32)


def test_fold_weight_products_folds_what_the_exporter_leaves() -> None:
    """onnxscript stops folding at 8192-element inputs: a 96x96 weight times a per-row scale
    stays a Mul of two initializers in the export; the fold makes it one initializer."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from archgen.backends.onnx_fold import fold_weight_products

    rng = torch.Generator().manual_seed(0)
    w = torch.randn(96, 96, generator=rng).numpy()
    s = torch.randn(96, 1, generator=rng).numpy()
    nodes = [
        helper.make_node("Mul", ["w", "s"], ["ws"]),
        helper.make_node("MatMul", ["x", "ws"], ["y"]),
        helper.make_node("Mul", ["y", "s2"], ["z"]),  # reads an input: stays
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 96])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 96])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(s, "s"),
         numpy_helper.from_array(s[:, 0], "s2")],
    )  # fmt: skip
    proto = helper.make_model(graph)
    x = torch.randn(2, 96, generator=rng).numpy()
    (before,) = ReferenceEvaluator(proto).run(None, {"x": x})
    assert fold_weight_products(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Mul"]
    assert {i.name for i in proto.graph.initializer} == {"ws", "s2"}
    onnx.checker.check_model(proto)
    (after,) = ReferenceEvaluator(proto).run(None, {"x": x})
    assert (before == after).all()
