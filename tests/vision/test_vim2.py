"""ViM2 (MambaMixer for images): production forward vs the per-token float64 loop, forward and
backward (inputs and every parameter), on odd non-square grids; IR counts equal torch's."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from archgen.ir import ops
from archgen.mixers.registry import build_module
from archgen.mixers.vim2 import SelectiveTokenMixer
from tests.tolerances import assert_close

# name -> (module factory, input shape [B, H, W, C]); odd, non-square grids
MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "token-chunked": (
        lambda: SelectiveTokenMixer(6, d_state=3, dt_rank=2, scan="chunked", chunk_size=4),
        (2, 3, 5, 6),
    ),
    "token-auto-expand2-k5": (
        lambda: SelectiveTokenMixer(5, d_state=4, expand=2, kernel=5),
        (1, 5, 3, 5),
    ),
}


def _perturbed(module: nn.Module) -> nn.Module:
    with torch.no_grad():  # non-trivial values everywhere (D = 1, zero biases are special)
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("name", sorted(MODULES))
def test_matches_reference_forward_and_backward(name: str) -> None:
    make, shape = MODULES[name]
    torch.manual_seed(sum(map(ord, name)))
    module = _perturbed(make().double())
    x = torch.randn(*shape, dtype=torch.float64)
    results = []
    for fn in (module, module.reference):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (out * w).sum().backward()
        grads = [p.grad.clone() for p in module.parameters()]
        assert all(g.abs().sum() > 0 for g in grads)  # every parameter takes part
        results.append([out.detach(), xi.grad, *grads])
        module.zero_grad()
    for a, b in zip(*results, strict=True):
        assert_close(a, b)


def test_token_mixer_scans_all_four_orders() -> None:
    """Each output reads the whole grid (the four scans together), and zeroing one scan's
    output (its D skip and C readout) changes the result: no scan is dropped."""
    torch.manual_seed(0)
    m = _perturbed(SelectiveTokenMixer(4, d_state=2, scan="chunked").double())
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    m(x)[0, 1, 2].sum().backward()
    assert (x.grad[0].abs().sum(-1) > 0).all()  # every position reaches (1, 2)
    base = m(x).detach()
    for params in m.scans:
        with torch.no_grad():
            saved = params.x_proj.weight.clone(), params.D.clone()
            params.x_proj.weight[-params.d_state :] = 0  # C = 0: no readout of the state
            params.D.zero_()
            assert not torch.allclose(m(x), base)
            params.x_proj.weight.copy_(saved[0])
            params.D.copy_(saved[1])


OPS = [
    ops.SelectiveTokenMixer(d_model=24),
    ops.SelectiveTokenMixer(d_model=10, d_state=4, expand=2, dt_rank=3, kernel=5),
]


@pytest.mark.parametrize("op", OPS, ids=lambda o: f"{o.kind}-{o.d_model}")
def test_ir_parameter_count_is_torch_count(op: ops.Op) -> None:
    module = build_module(op)
    assert op.params() == sum(p.numel() for p in module.parameters())


def test_token_mixer_flops_grow_with_the_grid_and_the_state() -> None:
    op = ops.SelectiveTokenMixer(d_model=16)
    assert op.flops(30) == 2 * op.flops(15)  # linear in the tokens
    assert ops.SelectiveTokenMixer(d_model=16, d_state=32).flops(15) > op.flops(15)
    assert "kernel" in {p.field for p in ops.SelectiveTokenMixer(d_model=8, kernel=4).problems()}
