"""Channel mixers and norms: production vs written-out per-token reference, fwd + bwd."""

from __future__ import annotations

import pytest
import torch

from archgen.mixers.channel import MLP, LayerNorm, RMSNorm, SwiGLU
from tests.tolerances import assert_close

MODULES = {
    "mlp-gelu": lambda: MLP(13, hidden=29, activation="gelu"),
    "mlp-relu-nobias": lambda: MLP(13, hidden=29, activation="relu", bias=False),
    "mlp-silu": lambda: MLP(13, hidden=29, activation="silu"),
    "swiglu": lambda: SwiGLU(13, hidden=23),
    "swiglu-bias": lambda: SwiGLU(13, hidden=23, bias=True),
    "rmsnorm": lambda: RMSNorm(13, eps=1e-5),
    "layernorm": lambda: LayerNorm(13, eps=1e-5),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_matches_reference_forward_and_backward(name: str) -> None:
    module = MODULES[name]().double()
    with torch.no_grad():  # non-trivial norm scales/biases
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 7, 13, dtype=torch.float64)
    w = torch.randn(3, 7, 13, dtype=torch.float64)
    grads = []
    for fn in (module, module.reference):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        (out * w).sum().backward()
        grads.append([out.detach(), xi.grad] + [p.grad.clone() for p in module.parameters()])
        module.zero_grad()
    for a, b in zip(*grads, strict=True):
        assert_close(a, b)
