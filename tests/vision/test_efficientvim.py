"""EfficientViM: HSM-SSD (two outputs), depthwise conv + BN, the BN FFN and the convex residual.
Production forward vs the plainly written float64 reference, forward and backward (inputs and
every parameter) on odd, non-square grids; BatchNorm folding in eval mode; IR parameter counts
equal torch's; the IR's shapes and costs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from archgen.ir import ops
from archgen.ir.types import BATCH, TensorType
from archgen.mixers.efficientvim import HSMSSD, BatchNormFFN, ConvexResidual, DepthwiseConv
from archgen.mixers.registry import build_module
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
